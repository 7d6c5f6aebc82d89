"""Delivery of results: C-STORE to a destination AE (pynetdicom) and/or STOW-RS to a DICOMweb server.

A connection that cannot be made or breaks is *transient* (:class:`DestinationDown`): the item
stays queued and delivery is tried again later. A destination that answers but refuses the
object (a C-STORE failure status, a STOW-RS 4xx but 408 and 429) is *final* for that object (:class:`Refused`).

By C-STORE the Secondary Capture (an RGB image: 12.6 MB uncompressed at 2048 px) is offered compressed
as well (``COVIDSEG_NODE_SC_TRANSFER_SYNTAX``), in a presentation context of its own beside the
uncompressed one: compressed when the destination accepts that context, uncompressed otherwise, and under
its own SOP Instance UID either way. ``jpeg-baseline`` is lossy: the segmenter makes the SC so (its own UID),
and it is sent as made, or decoded for a destination that does not take JPEG baseline.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import httpx
import pydicom
from pydicom.uid import UID, SecondaryCaptureImageStorage
from pynetdicom import AE
from pynetdicom.association import Association

from app.core.config import get_settings
from app.node.transfer import LOSSLESS_SC_SYNTAXES, SC_TRANSFER_SYNTAXES, SENT_TRANSFER_SYNTAXES
from app.pacs.dicomweb import DicomWebClient
from app.pacs.service_client import is_retryable_status

#: C-STORE statuses that mean stored (0x0000) or stored with a warning (0xB000, 0xB006, 0xB007).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}

log = logging.getLogger("app.node")


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
    def __init__(self, destination: DicomDestination, calling_ae: str, timeout: float = 30.0,
                 sc_transfer_syntax: str | None = None):
        """``sc_transfer_syntax``: a ``COVIDSEG_NODE_SC_TRANSFER_SYNTAX`` value (None: the setting's)."""
        self.destination = destination
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.connection_timeout = timeout
        name = get_settings().node_sc_transfer_syntax if sc_transfer_syntax is None else sc_transfer_syntax
        if name not in SC_TRANSFER_SYNTAXES:
            raise ValueError(f"an SC transfer syntax is one of {', '.join(SC_TRANSFER_SYNTAXES)}, got {name!r}")
        syntax = SC_TRANSFER_SYNTAXES[name]
        self.sc_syntax = UID(syntax) if syntax else None

    def describe(self) -> str:
        d = self.destination
        return f"C-STORE to {d.ae_title}@{d.host}:{d.port}"

    def propose(self, datasets: list[pydicom.Dataset]) -> None:
        """Uncompressed for every SOP class sent; for the Secondary Capture also the compressed syntax,
        alone in its own context, so that a destination can refuse it and still accept the SC."""
        self.ae.requested_contexts = []
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            self.ae.add_requested_context(sop_class, SENT_TRANSFER_SYNTAXES)
            if sop_class == SecondaryCaptureImageStorage and self.sc_syntax:
                self.ae.add_requested_context(sop_class, [self.sc_syntax])

    def accepts(self, assoc: Association, sop_class: str, syntax: str) -> bool:
        return any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
                   for cx in assoc.accepted_contexts)

    def as_accepted(self, data: bytes, ds: pydicom.Dataset, assoc: Association) -> pydicom.Dataset:
        """``ds`` (read from ``data``) in a syntax the destination accepted, always under its own SOP Instance
        UID (pydicom gives a dataset a new one by default when it compresses or decompresses it): the PACS
        holds the instance the audit log names, and a re-delivery replaces it instead of adding a second SC.
        An uncompressed SC is compressed losslessly when the destination accepted that context; a compressed
        one (made lossy by the node) is decoded when the destination did not accept its own syntax (its Lossy
        Image Compression stays 01: decoding makes no other image); anything else goes as it is."""
        if ds.SOPClassUID != SecondaryCaptureImageStorage:
            return ds
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_compressed:
            if self.accepts(assoc, SecondaryCaptureImageStorage, syntax):
                return ds
            decoded = pydicom.dcmread(io.BytesIO(data))
            try:
                decoded.decompress(generate_instance_uid=False)
            except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types: send it as made
                log.warning("could not decode the Secondary Capture for a destination that did not accept its "
                            "transfer syntax (%s): sent as made", type(exc).__name__)
                return ds
            return decoded
        # lossless only: a lossy SC is made so by the segmenter, never converted here (it would be another image)
        if self.sc_syntax not in LOSSLESS_SC_SYNTAXES or \
                not self.accepts(assoc, SecondaryCaptureImageStorage, self.sc_syntax):
            return ds
        compressed = pydicom.dcmread(io.BytesIO(data))  # a copy: a failed encoding leaves ``ds`` whole
        try:
            compressed.compress(self.sc_syntax, generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - an encoder missing or refusing the image: send it uncompressed
            log.warning("a Secondary Capture is sent uncompressed: it could not be compressed (%s)",
                        type(exc).__name__)
            return ds
        return compressed

    def send(self, items: list[bytes]) -> list[Exception | None]:
        """One association for all items; per item None (stored) or :class:`Refused`."""
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in items]
        self.propose(datasets)
        d = self.destination
        assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            raise DestinationDown(f"no association with {d.ae_title}@{d.host}:{d.port}")
        outcomes: list[Exception | None] = []
        try:
            for data, ds in zip(items, datasets):
                status = assoc.send_c_store(self.as_accepted(data, ds, assoc))
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
            if is_retryable_status(code):
                raise DestinationDown(f"STOW-RS answered {code}") from exc
            return Refused(f"STOW-RS answered {code}")
        return None
