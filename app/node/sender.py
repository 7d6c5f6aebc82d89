"""Delivery of results: C-STORE to a destination AE (pynetdicom) and/or STOW-RS to a DICOMweb server.

A connection that cannot be made or breaks is *transient* (:class:`DestinationDown`): the item
stays queued and delivery is tried again later. A destination that answers but refuses the
object (a C-STORE failure status, a STOW-RS 4xx) is *final* for that object (:class:`Refused`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
import pydicom
from pynetdicom import AE

from app.node.transfer import STORAGE_TRANSFER_SYNTAXES
from app.pacs.dicomweb import DicomWebClient

#: C-STORE statuses that mean stored (0x0000) or stored with a warning (0xB000, 0xB006, 0xB007).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DestinationDown(Exception):
    """The destination could not be reached; try again later."""


class Refused(Exception):
    """The destination received the object and refused it."""


@dataclass(frozen=True)
class DicomDestination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "DicomDestination":
        """``AE@host:port``."""
        try:
            ae_title, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            return cls(ae_title.strip(), host.strip(), int(port))
        except ValueError as exc:
            raise ValueError(f"a DICOM destination is AE@host:port, got {text!r}") from exc


class CStoreSender:
    def __init__(self, destination: DicomDestination, calling_ae: str, timeout: float = 30.0):
        self.destination = destination
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.connection_timeout = timeout

    def describe(self) -> str:
        d = self.destination
        return f"C-STORE to {d.ae_title}@{d.host}:{d.port}"

    def send(self, items: list[bytes]) -> list[Exception | None]:
        """One association for all items; per item None (stored) or :class:`Refused`."""
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in items]
        self.ae.requested_contexts = []
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            self.ae.add_requested_context(sop_class, STORAGE_TRANSFER_SYNTAXES[:2])
        d = self.destination
        assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            raise DestinationDown(f"no association with {d.ae_title}@{d.host}:{d.port}")
        outcomes: list[Exception | None] = []
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if not status or "Status" not in status:  # aborted or timed out
                    raise DestinationDown("the association was lost during C-STORE")
                code = int(status.Status)
                outcomes.append(None if code in STORED else Refused(f"C-STORE status 0x{code:04X}"))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes


class StowSender:
    """STOW-RS through the bridge's DICOMweb client, one request per result so one refusal does
    not hold back the others."""

    def __init__(self, client: DicomWebClient):
        self.client = client

    def describe(self) -> str:
        return f"STOW-RS to {self.client.url}"

    def send(self, items: list[bytes]) -> list[Exception | None]:
        return [self._store(data) for data in items]

    def _store(self, data: bytes) -> Exception | None:
        try:
            self.client.upload(data)
        except httpx.TransportError as exc:
            raise DestinationDown(type(exc).__name__) from exc
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            if code >= 500 or code in (408, 429):
                raise DestinationDown(f"STOW-RS answered {code}") from exc
            return Refused(f"STOW-RS answered {code}")
        return None
