"""The Storage SCP: C-ECHO, and C-STORE into the spool.

A received instance is answered with success only once it is in the spool (or was skipped by
the selection rules); a spool that cannot be written answers 0xA700 (out of resources) so the
sender keeps the image and tries again. Callers not on the allow-list are rejected at
association time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from app.node.spool import Spool
from app.node.transfer import RECEIVED_SOP_CLASSES, STORAGE_TRANSFER_SYNTAXES
from app.pipeline.select import SelectionRules

log = logging.getLogger("app.node")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def build_ae(ae_title: str, allowed_callers: list[str]) -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)
    for sop_class in RECEIVED_SOP_CLASSES:
        ae.add_supported_context(sop_class, STORAGE_TRANSFER_SYNTAXES)
    if allowed_callers:
        ae.require_calling_aet = allowed_callers  # others: A-ASSOCIATE-RJ, calling AE title not recognised
    ae.maximum_pdu_size = 0  # no limit: 2048x2048 16-bit images arrive in fewer PDUs
    return ae


def store_handler(spool: Spool, rules: SelectionRules, on_queued: Callable[[], None]) -> Callable:
    def handle_store(event: evt.Event) -> int:
        try:
            ds = event.dataset
            reason = rules.reason_to_skip(ds)
        except Exception:  # noqa: BLE001 - a dataset pydicom cannot read: refuse it, keep serving
            log.warning("refused an instance that cannot be parsed")
            return CANNOT_UNDERSTAND
        if reason:
            log.info("skipped an instance: %s", reason)
            log.debug("skipped SOP Instance UID %s: %s", ds.get("SOPInstanceUID", "?"), reason)
            return SUCCESS
        try:
            spool.receive(event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("cannot write to the spool (%s): the sender keeps the instance", type(exc).__name__)
            return OUT_OF_RESOURCES
        log.info("queued an instance")
        on_queued()
        return SUCCESS

    return handle_store


def handle_echo(event: evt.Event) -> int:
    return SUCCESS
