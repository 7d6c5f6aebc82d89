"""The node's Prometheus metrics, served on ``COVIDSEG_NODE_METRICS_PORT`` (0: off).

Counters are counted by the SCP and the workers; the queue depths and the ``failed/`` count are read
from the spool at each scrape, so they are right across restarts.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from app.node.spool import Spool

#: Seconds from receipt of an instance to delivery of a result: from seconds to hours while a destination is down.
DELIVERY_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


class NodeMetrics:
    def __init__(self, spool: Spool | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.received = Counter("covidseg_node_instances_received_total",
                                "instances received by C-STORE, by outcome: queued, not_selected (skipped by "
                                "the selection rules), refused (cannot be parsed), spool_error (0xA700)",
                                ["outcome"], registry=r)
        self.refused_contexts = Counter("covidseg_node_presentation_contexts_refused_total",
                                        "presentation contexts refused in accepted associations, by reason: "
                                        "abstract_syntax_not_supported (a SOP class the node does not store), "
                                        "transfer_syntaxes_not_supported, user_rejection, no_reason",
                                        ["reason"], registry=r)
        self.segmented = Counter("covidseg_node_instances_segmented_total", "instances segmented", registry=r)
        self.already_done = Counter("covidseg_node_instances_already_done_total",
                                    "re-sent instances skipped: already segmented with this model and settings",
                                    registry=r)
        self.not_judged = Counter("covidseg_node_instances_not_judged_total",
                                  "instances not segmented because the model cannot judge them (the input "
                                  "judgement), by code: no_contrast, not_a_chest_radiograph, appears_inverted",
                                  ["code"], registry=r)
        self.delivered = Counter("covidseg_node_results_delivered_total", "results delivered, by destination",
                                 ["destination"], registry=r)
        self.failed = Counter("covidseg_node_failed_total", "items moved to failed/: stage segment (an instance "
                              "that cannot be segmented) or deliver (a result refused or unreadable)",
                              ["stage"], registry=r)
        self.unreachable = Counter("covidseg_node_delivery_attempts_failed_total",
                                   "delivery attempts that found the destination unreachable (retried)",
                                   ["destination"], registry=r)
        self.latency = Histogram("covidseg_node_delivery_latency_seconds",
                                 "seconds from receipt of an instance to delivery of one of its results",
                                 buckets=DELIVERY_BUCKETS, registry=r)
        if spool is not None:
            self._spool_gauges(spool)

    def _spool_gauges(self, spool: Spool) -> None:
        depth = Gauge("covidseg_node_queue_depth", "items waiting in the spool: incoming (to segment), "
                      "outgoing (results to deliver)", ["queue"], registry=self.registry)
        depth.labels("incoming").set_function(lambda: len(spool.items(spool.incoming)))
        depth.labels("outgoing").set_function(lambda: len(spool.items(spool.outgoing)))
        failed = Gauge("covidseg_node_failed_items", "items in the spool's failed/ folder, waiting for an "
                       "administrator", registry=self.registry)
        failed.set_function(lambda: len(spool.items(spool.failed)))

    def observe_delivery(self, result: Path) -> None:
        """A result delivered: its latency from the receive time in its spool name."""
        received = received_at(result)
        if received is not None:
            self.latency.observe(max(0.0, time.time() - received))

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` (any path) on ``host:port`` in a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)


def received_at(item: Path) -> float | None:
    """When the instance behind a spool item arrived: its name starts with the receive time in ns."""
    head = item.name.split("-", 1)[0]
    return int(head) / 1e9 if head.isdigit() else None
