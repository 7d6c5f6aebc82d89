"""The node's audit trail: one JSON line per association, received instance, result made and delivery.

The ordinary log never names a UID at info level; this file does, because an administrator must be
able to say which calling AE at which address sent which instance and what was delivered where. It
is owner-only (0600, in a 0700 folder) and rotated by size (``logging.handlers.RotatingFileHandler``:
``COVIDSEG_NODE_AUDIT_MAX_BYTES``, ``COVIDSEG_NODE_AUDIT_BACKUPS`` files kept).

Each record is a flat form of DICOM's audit message (PS3.15 Annex A.5): ``EventID`` and
``EventTypeCode`` are DCM codes (with their meaning in ``EventIDName``/``EventTypeName``),
``EventOutcomeIndicator`` 0 success, 4 minor failure, 8 serious failure, 12 major failure; the two
ActiveParticipants are flattened to ``Source*`` (the requestor / sender) and ``Destination*`` (the
receiver), each with ``UserID`` (an AE title, or a DICOMweb URL), ``NetworkAccessPointID`` (an
address) and a port; ParticipantObjectIdentification to ``ParticipantObjectID`` (a SOP Instance
UID), ``ParticipantObjectTypeCode`` 2 (system object) and ``ParticipantObjectTypeCodeRole`` 3 (report),
as DICOM's own messages use for instances. ``Event`` is this project's name for the record (the
table in docs/dicom-conformance.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

_APPLICATION = ("110100", "Application Activity")
_SECURITY_ALERT = ("110113", "Security Alert")
_ACCESSED = ("110103", "DICOM Instances Accessed")
_TRANSFERRED = ("110104", "DICOM Instances Transferred")
_BEGIN = ("110102", "Begin Transferring DICOM Instances")
_NODE_AUTHENTICATION = ("110126", "Node Authentication")

#: Event -> (EventID, EventActionCode, EventTypeCode or None). Action codes: C create, R read, E execute.
EVENTS: dict[str, tuple[tuple[str, str], str, tuple[str, str] | None]] = {
    "node-started": (_APPLICATION, "E", ("110120", "Application Start")),
    "node-stopped": (_APPLICATION, "E", ("110121", "Application Stop")),
    "association-accepted": (_SECURITY_ALERT, "E", _NODE_AUTHENTICATION),
    "association-rejected": (_SECURITY_ALERT, "E", _NODE_AUTHENTICATION),
    "presentation-contexts-refused": (_SECURITY_ALERT, "E", _NODE_AUTHENTICATION),
    "instance-queued": (_TRANSFERRED, "C", None),
    "instance-not-selected": (_TRANSFERRED, "C", None),
    "instance-refused": (_TRANSFERRED, "C", None),
    "instance-already-done": (_ACCESSED, "R", None),
    "instance-not-segmented": (_ACCESSED, "C", None),
    "instance-not-judged": (_ACCESSED, "C", None),
    "result-made": (_ACCESSED, "C", None),
    "delivery-started": (_BEGIN, "E", None),
    "result-delivered": (_TRANSFERRED, "R", None),
    "result-not-delivered": (_TRANSFERRED, "R", None),
    "destination-unreachable": (_TRANSFERRED, "R", None),
}


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: who (AE title or URL) and where (address, port)."""

    user_id: str
    address: str | None = None
    port: int | None = None

    def fields(self, role: str) -> dict[str, Any]:
        return {f"{role}UserID": self.user_id, f"{role}NetworkAccessPointID": self.address, f"{role}Port": self.port}


def destination_of(sender: Any) -> Participant:
    """The destination a sender delivers to: a C-STORE AE (``.destination``) or a DICOMweb server
    (``.client.url``); else what it calls itself."""
    dest = getattr(sender, "destination", None)
    if dest is not None:
        return Participant(dest.ae_title, dest.host, dest.port)
    url = getattr(getattr(sender, "client", None), "url", None)
    if url:
        parts = urlsplit(url)
        return Participant(url, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    return Participant(sender.describe())


def instance(uid: str | None, sop_class: str | None = None, **extra: Any) -> dict[str, Any]:
    """ParticipantObjectIdentification of one SOP instance, flattened, with any further fields."""
    ident = {"ParticipantObjectID": uid, "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
             "SOPClassUID": sop_class} if uid else {}
    return {**ident, **extra}


def owner_only_folder(folder: Path) -> None:
    """The audit log's own folder, owner-only, also when it existed with wider rights: so it must be a
    folder for the log alone (the default, ``audit/`` in the spool; README), never /var/log or a home."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


class OwnerOnlyRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files are created 0600 (rotation renames them, keeping the mode)."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also a file that existed with wider rights
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


class AuditLog:
    """Writes audit records to ``path``; thread-safe (the SCP's and both workers' threads record)."""

    def __init__(self, path: Path | str, audit_source: str, max_bytes: int, backups: int):
        self.path, self.audit_source = Path(path), audit_source
        owner_only_folder(self.path.parent)
        self.handler = OwnerOnlyRotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backups,
                                                    encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        # a Logger of its own, outside logging's tree: nothing reaches the ordinary log, nor it this file
        self.logger = logging.Logger("covidseg.audit", logging.INFO)  # noqa: LOG001 - not in the tree
        self.logger.addHandler(self.handler)

    def record(self, event: str, outcome: int = SUCCESS, description: str | None = None,
               source: Participant | None = None, destination: Participant | None = None, **fields: Any) -> None:
        """One record: ``fields`` are further flat fields (:func:`instance`, counts); None values are left out."""
        (event_id, event_name), action, event_type = EVENTS[event]
        record: dict[str, Any] = {
            "EventDateTime": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "Event": event, "EventID": event_id, "EventIDName": event_name, "EventActionCode": action,
            "EventTypeCode": event_type[0] if event_type else None,
            "EventTypeName": event_type[1] if event_type else None,
            "EventOutcomeIndicator": outcome, "EventOutcomeDescription": description,
            "AuditSourceID": self.audit_source,
            **(source.fields("Source") if source else {}), **(destination.fields("Destination") if destination else {}),
            **fields,
        }
        self.logger.info(json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":")))

    def close(self) -> None:
        self.handler.close()


class NoAudit:
    """Records nothing: for workers run on their own (tests, tools)."""

    def record(self, event: str, *args: Any, **fields: Any) -> None:
        if event not in EVENTS:  # the same mistakes fail as with a real log
            raise KeyError(event)

    def close(self) -> None:
        pass
