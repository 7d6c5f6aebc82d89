"""The Storage SCP: C-ECHO, and C-STORE into the spool.

A received instance is answered with success only once it is in the spool (or was skipped by
the selection rules); a spool that cannot be written answers 0xA700 (out of resources) so the
sender keeps the image and tries again. Callers not on the allow-list (an AE title, or an AE title
bound to host addresses) are rejected at association time. Every association, accepted or rejected,
and every received instance is recorded in the audit log (app.node.audit).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from app.node.audit import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    NoAudit,
    Participant,
    instance,
)
from app.node.metrics import NodeMetrics
from app.node.spool import Spool
from app.node.transfer import RECEIVED_SOP_CLASSES, STORAGE_TRANSFER_SYNTAXES
from app.pipeline.select import SelectionRules

log = logging.getLogger("app.node")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: Longer than any AE title (16 characters), so no caller matches it: "nobody from this address".
NO_TITLE = "<no AE title is allowed from this address>"


def normal_address(address: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (``::ffff:10.0.0.1``) as IPv4, IPv6 compressed."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


def resolve(host: str) -> set[str]:
    """Every address of ``host`` (an IP address, or a name looked up now)."""
    try:
        return {normal_address(str(info[4][0])) for info in socket.getaddrinfo(host.strip("[]"), None)}
    except OSError as exc:
        raise ValueError(f"cannot resolve host {host!r} ({exc})") from exc


@dataclass
class AllowList:
    """Calling AE titles allowed, each from any address or only from its hosts' addresses
    (``COVIDSEG_NODE_ALLOWED_CALLERS``: ``AE`` or ``AE@host``, an AE repeated for several hosts)."""

    anywhere: set[str] = field(default_factory=set)
    hosts: dict[str, set[str]] = field(default_factory=dict)  # AE title -> addresses

    @classmethod
    def parse(cls, entries: list[str], resolver: Callable[[str], set[str]] = resolve) -> AllowList:
        allow = cls()
        for entry in entries:
            title, _, host = (part.strip() for part in entry.partition("@"))
            if host:
                allow.hosts.setdefault(title, set()).update(resolver(host))
            else:
                allow.anywhere.add(title)
        return allow

    @property
    def any_caller(self) -> bool:
        return not self.anywhere and not self.hosts

    @property
    def titles(self) -> list[str]:
        return sorted(self.anywhere | set(self.hosts))

    def titles_from(self, address: str) -> list[str]:
        address = normal_address(address)
        return sorted(self.anywhere | {t for t, hosts in self.hosts.items() if address in hosts}) or [NO_TITLE]

    def admits(self, title: str, address: str) -> bool:
        return self.any_caller or title.strip() in self.titles_from(address)


class AllowListAE(AE):
    """pynetdicom's AE, whose calling-AE check (``require_calling_aet``, read by its ACSE while it
    negotiates in the association's own thread) also looks at the caller's address: pynetdicom has
    no hook of its own for that, and this keeps its A-ASSOCIATE-RJ (calling AE title not recognised)."""

    def __init__(self, ae_title: str, allow: AllowList):
        super().__init__(ae_title=ae_title)
        self.allow = allow

    @property
    def require_calling_aet(self) -> list[str]:
        assoc = threading.current_thread()
        if self.allow.any_caller:
            return []
        if isinstance(assoc, Association) and assoc.is_acceptor and assoc.requestor.address_info is not None:
            return self.allow.titles_from(assoc.requestor.address)
        return self.allow.titles

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self.allow = AllowList.parse(ae_titles)


def build_ae(ae_title: str, allow: AllowList) -> AE:
    ae = AllowListAE(ae_title, allow)  # others: A-ASSOCIATE-RJ, calling AE title not recognised
    ae.add_supported_context(Verification)
    for sop_class in RECEIVED_SOP_CLASSES:
        ae.add_supported_context(sop_class, STORAGE_TRANSFER_SYNTAXES)
    ae.maximum_pdu_size = 0  # no limit: 2048x2048 16-bit images arrive in fewer PDUs
    return ae


def caller_of(assoc: Association) -> Participant:
    r = assoc.requestor
    return Participant(r.ae_title, r.address, r.port)


def callee_of(assoc: Association) -> Participant:
    """The node as the caller reached it: the socket's own address (not 0.0.0.0 when bound to all)."""
    address, port = assoc.acceptor.address, assoc.acceptor.port
    try:
        address, port = assoc.dul.socket.socket.getsockname()[:2]
    except (AttributeError, OSError):
        pass
    return Participant(assoc.acceptor.ae_title, address, port)


#: PS3.8 Table 9-18, result/reason of a presentation context refused by the acceptor -> the metric's label.
REFUSAL_REASONS = {0x01: "user_rejection", 0x02: "no_reason", 0x03: "abstract_syntax_not_supported",
                   0x04: "transfer_syntaxes_not_supported"}
#: SOP classes a log line names at most (a dcmtk storescu proposes some 120 by default); the audit record has all.
NAMED_IN_LOG = 3


def sop_class_name(abstract_syntax: str) -> str:
    """A SOP class by its name (a UID pydicom does not know: "an unknown SOP class"), for the ordinary log."""
    name = UID(abstract_syntax).name
    return "an unknown SOP class" if name == abstract_syntax else name


def refused_contexts(assoc: Association, audit, metrics: NodeMetrics) -> None:
    """Presentation contexts the node refused in an association it accepted (a SOP class it does not
    store, a transfer syntax it cannot read): a caller would otherwise learn why nothing arrives only from
    its own side. Logged by SOP class name (no UID), audited with the SOP Class UIDs, counted by reason."""
    refused = assoc.rejected_contexts
    if not refused:
        return
    caller = caller_of(assoc)
    sop_classes = sorted({str(cx.abstract_syntax) for cx in refused})
    reasons = {REFUSAL_REASONS.get(cx.result, "no_reason") for cx in refused}
    for cx in refused:
        metrics.refused_contexts.labels(REFUSAL_REASONS.get(cx.result, "no_reason")).inc()
    names = sorted({sop_class_name(uid) for uid in sop_classes})
    named = ", ".join(names[:NAMED_IN_LOG]) + (f" and {len(names) - NAMED_IN_LOG} more" if len(names) > NAMED_IN_LOG
                                                 else "")
    # none accepted: whatever the caller meant to send cannot come; else a caller proposing broadly (storescu)
    useful = any(cx.abstract_syntax != Verification for cx in assoc.accepted_contexts)
    (log.info if useful else log.warning)(
        "association from %s at %s: %d presentation context(s) refused (%s): %s", caller.user_id, caller.address,
        len(refused), ", ".join(sorted(r.replace("_", " ") for r in reasons)), named)
    audit.record("presentation-contexts-refused", MINOR_FAILURE,
                 f"{len(refused)} presentation context(s) refused ({', '.join(sorted(reasons))}) for "
                 f"{len(sop_classes)} SOP class(es); {len(assoc.accepted_contexts)} accepted",
                 source=caller, destination=callee_of(assoc), RefusedSOPClassUIDs=sop_classes)


def association_handlers(allow: AllowList, audit=None, metrics: NodeMetrics | None = None) -> list[tuple]:
    """EVT_ACCEPTED and EVT_REJECTED: one audit record per association (and one for the presentation
    contexts refused in it), a log line per rejection and per association with refused contexts."""
    audit, metrics = audit or NoAudit(), metrics or NodeMetrics()

    def accepted(event: evt.Event) -> None:
        audit.record("association-accepted", source=caller_of(event.assoc), destination=callee_of(event.assoc))
        refused_contexts(event.assoc, audit, metrics)

    def rejected(event: evt.Event) -> None:
        caller = caller_of(event.assoc)
        if allow.admits(caller.user_id, caller.address):
            why = "association rejected"  # for another reason: too many associations at once
        elif caller.user_id.strip() in allow.titles:
            why = "calling AE title not allowed from this address"
        else:
            why = "calling AE title not recognised"
        log.warning("rejected an association from %s at %s: %s", caller.user_id, caller.address, why)
        audit.record("association-rejected", MINOR_FAILURE, why, source=caller, destination=callee_of(event.assoc))

    return [(evt.EVT_ACCEPTED, accepted), (evt.EVT_REJECTED, rejected)]


def affected(event: evt.Event) -> tuple[str | None, str | None]:
    """The SOP Instance and Class UIDs the C-STORE request names (also when its dataset cannot be read)."""
    req = event.request
    return (str(req.AffectedSOPInstanceUID) if req.AffectedSOPInstanceUID else None,
            str(req.AffectedSOPClassUID) if req.AffectedSOPClassUID else None)


def store_handler(spool: Spool, rules: SelectionRules, on_queued: Callable[[], None], audit=None,
                  metrics: NodeMetrics | None = None) -> Callable:
    audit, metrics = audit or NoAudit(), metrics or NodeMetrics()

    def handle_store(event: evt.Event) -> int:
        parties = {"source": caller_of(event.assoc), "destination": callee_of(event.assoc)}
        try:
            ds = event.dataset
            reason = rules.reason_to_skip(ds)
            about = instance(str(ds.get("SOPInstanceUID", "")) or None, str(ds.get("SOPClassUID", "")) or None)
        except Exception:  # noqa: BLE001 - a dataset pydicom cannot read: refuse it, keep serving
            log.warning("refused an instance that cannot be parsed")
            audit.record("instance-refused", SERIOUS_FAILURE, "cannot be parsed (C000)", **parties,
                         **instance(*affected(event)))
            metrics.received.labels("refused").inc()
            return CANNOT_UNDERSTAND
        if reason:
            log.info("skipped an instance: %s", reason)
            log.debug("skipped SOP Instance UID %s: %s", ds.get("SOPInstanceUID", "?"), reason)
            audit.record("instance-not-selected", description=f"not selected: {reason}", **parties, **about)
            metrics.received.labels("not_selected").inc()
            return SUCCESS
        try:
            spool.receive(event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("cannot write to the spool (%s): the sender keeps the instance", type(exc).__name__)
            audit.record("instance-refused", MINOR_FAILURE, f"spool not writable (A700, {type(exc).__name__})",
                         **parties, **about)
            metrics.received.labels("spool_error").inc()
            return OUT_OF_RESOURCES
        log.info("queued an instance")
        audit.record("instance-queued", description="queued for segmentation", **parties, **about)
        metrics.received.labels("queued").inc()
        on_queued()
        return SUCCESS

    return handle_store


def handle_echo(event: evt.Event) -> int:
    return SUCCESS
