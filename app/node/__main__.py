"""``python -m app.node``: the DICOM node. Receives chest X-rays (C-STORE), segments them and sends
SEG, SC and SR on to a destination AE (C-STORE) and/or a DICOMweb server (STOW-RS).

    COVIDSEG_NODE_DESTINATION=ORTHANC@pacs:4242 python -m app.node --port 11112
    echoscu -aet MODALITY -aec COVIDSEG localhost 11112        # C-ECHO
    storescu -aet MODALITY -aec COVIDSEG localhost 11112 cxr.dcm

Every setting is a COVIDSEG_NODE_* / COVIDSEG_SELECT_* environment variable (README, Configuration).
Stop with Ctrl-C or SIGTERM: what is queued stays in the spool and is sent at the next start.
What it did is in the audit log (COVIDSEG_NODE_AUDIT_LOG), its counts on a Prometheus endpoint
(COVIDSEG_NODE_METRICS_PORT).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from pynetdicom import evt

from app.core.config import Settings, settings_from_environment
from app.core.logs import configure_logging
from app.engine import Engine
from app.node.audit import AuditLog, Participant
from app.node.done import DoneRecord
from app.node.metrics import NodeMetrics
from app.node.scp import (
    AllowList,
    association_handlers,
    build_ae,
    handle_echo,
    store_handler,
)
from app.node.sender import CStoreSender, DicomDestination, StowSender
from app.node.spool import Spool
from app.node.worker import Deliverer, Heartbeat, Segmenter
from app.pacs.dicomweb import DicomWebClient
from app.pipeline.dicom.common import ScForm

log = logging.getLogger("app.node")


def parse_settings(argv: list[str] | None) -> Settings:
    settings = settings_from_environment()
    p = argparse.ArgumentParser(prog="python -m app.node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae-title", default=settings.node_ae_title)
    p.add_argument("--port", type=int, default=settings.node_port)
    p.add_argument("--destination", default=settings.node_destination, help="AE@host:port for C-STORE of results")
    p.add_argument("--stow-url", default=settings.node_stow_url, help="DICOMweb base URL for STOW-RS of results")
    p.add_argument("--spool-dir", default=settings.node_spool_dir)
    args = p.parse_args(argv)
    return settings.model_copy(update={"node_ae_title": args.ae_title, "node_port": args.port,
                                       "node_destination": args.destination, "node_stow_url": args.stow_url,
                                       "node_spool_dir": args.spool_dir})


def build_senders(settings: Settings) -> list:
    senders: list = []
    if settings.node_destination:
        senders.append(CStoreSender(DicomDestination.parse(settings.node_destination), settings.node_ae_title,
                                    sc_transfer_syntax=settings.node_sc_transfer_syntax))
    if settings.node_stow_url:
        senders.append(StowSender(DicomWebClient(settings.node_stow_url, settings.pacs_user, settings.pacs_password)))
    if not senders:
        raise SystemExit("no destination: set COVIDSEG_NODE_DESTINATION (AE@host:port) and/or COVIDSEG_NODE_STOW_URL")
    return senders


def allow_list(settings: Settings) -> AllowList:
    try:
        return AllowList.parse(settings.node_allowed_callers)
    except ValueError as exc:  # a host name that does not resolve
        raise SystemExit(f"configuration error: COVIDSEG_NODE_ALLOWED_CALLERS: {exc}") from None


def audit_log(settings: Settings) -> AuditLog:
    try:
        return AuditLog(settings.node_audit_path(), settings.node_ae_title, settings.node_audit_max_bytes,
                        settings.node_audit_backups)
    except OSError as exc:  # no audit trail, no node
        raise SystemExit(f"cannot open the audit log {settings.node_audit_path()} (COVIDSEG_NODE_AUDIT_LOG): "
                         f"{type(exc).__name__}: {exc.strerror}") from None


def serve_metrics(metrics: NodeMetrics, settings: Settings) -> None:
    if not settings.node_metrics_port:
        return
    try:
        metrics.serve(settings.node_host, settings.node_metrics_port)
    except OSError as exc:  # the port is taken: say so, as for any other setting
        raise SystemExit(f"cannot serve metrics on {settings.node_host}:{settings.node_metrics_port} "
                         f"(COVIDSEG_NODE_METRICS_PORT): {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
    senders = build_senders(settings)
    allow = allow_list(settings)
    spool = Spool(settings.node_spool_dir)
    audit, metrics = audit_log(settings), NodeMetrics(spool)
    serve_metrics(metrics, settings)
    done = DoneRecord(spool.root / "done.sqlite", settings.node_done_max) if settings.node_done_max else None
    engine = Engine.from_settings(settings)
    engine.warm_up()
    me = Participant(settings.node_ae_title, settings.node_host, settings.node_port)
    deliverer = Deliverer(spool, senders, settings.node_retry_max_wait, node=Participant(settings.node_ae_title),
                          done=done, audit=audit, metrics=metrics)
    sc_form = ScForm(settings.node_sc_max_size, settings.node_sc_transfer_syntax == "jpeg-baseline")
    segmenter = Segmenter(spool, engine, settings.node_outputs, settings.node_threshold, deliverer,
                          done=done, audit=audit, metrics=metrics, sc_form=sc_form)
    ae = build_ae(settings.node_ae_title, allow)
    handlers = [(evt.EVT_C_ECHO, handle_echo), *association_handlers(allow, audit, metrics),
                (evt.EVT_C_STORE, store_handler(spool, engine.selection, segmenter.wake,
                                                audit, metrics))]
    if allow.any_caller:
        log.warning("no COVIDSEG_NODE_ALLOWED_CALLERS: any calling AE title may store to this node")
    deliverer.start()
    segmenter.start()
    heartbeat = Heartbeat(spool, [segmenter, deliverer], settings.node_heartbeat_interval)
    heartbeat.start()  # after the workers: it marks only threads that run
    server = ae.start_server((settings.node_host, settings.node_port), block=False, evt_handlers=handlers)
    audit.record("node-started", description=f"listening; results {','.join(settings.node_outputs)} by "
                 f"{'; '.join(s.describe() for s in senders)}", source=me)
    info = engine.model.info
    log.info("node %s listening on %s:%d; model %s %s on %s; results %s by %s; %d received and %d results queued",
             settings.node_ae_title, settings.node_host, settings.node_port, info.name, info.version,
             ",".join(info.providers), ",".join(settings.node_outputs), "; ".join(s.describe() for s in senders),
             len(spool.items(spool.incoming)), len(spool.items(spool.outgoing)))
    log.info("audit log %s; metrics %s", settings.node_audit_path(),
             f"on {settings.node_host}:{settings.node_metrics_port}" if settings.node_metrics_port else "off")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: new associations refused, queued work stays in the spool")
    server.shutdown()
    heartbeat.stop()  # first: workers that end on purpose are no failure to report
    for worker in (segmenter, deliverer):
        worker.stop()
    segmenter.join(timeout=120)  # finishes the image in hand; its results are on disk before it ends
    deliverer.join(timeout=60)
    audit.record("node-stopped", description="stopped; queued work stays in the spool", source=me)
    audit.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
