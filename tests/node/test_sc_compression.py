"""The Secondary Capture sent compressed by C-STORE when the destination accepts it, uncompressed when it
does not: dcmtk's storescp as the destination (by default it accepts uncompressed syntaxes only; +xt, +xr
and +xv add JPEG-LS, RLE and JPEG 2000 lossless), the SC made by the service's own output step, checked
with dciodvfy and pixel for pixel against the uncompressed SC."""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from app.core.config import Settings
from app.engine.results import dicom_of
from app.node.sender import CStoreSender, DicomDestination
from app.node.transfer import SC_TRANSFER_SYNTAXES
from app.pipeline.dicom.common import ResultOptions
from app.pipeline.dicom.read import load_dicom_bytes
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom
from tests.dicom_validate import iod_errors
from tests.servers import echo, free_port, node, running, store

COVID = fixture_images("Val", "COVID-19")


@pytest.fixture(scope="module")
def results(service_client) -> dict[str, bytes]:
    """The SC and SEG of a 2048 px CR, as the node queues them (uncompressed)."""
    _, service = service_client
    loaded = load_dicom_bytes(make_cxr_dicom(COVID[0], "CR", size=2048), 10 ** 8)
    seg = service.engine.segment([loaded], service.default_threshold)[0]
    return {kind: dicom_of(kind, seg, loaded, service.model_ref(), ResultOptions()) for kind in ("sc", "seg")}


@contextlib.contextmanager
def storescp(folder: Path, *accept: str) -> Iterator[int]:
    """dcmtk's Storage SCP (AE PACS) writing what it receives, in the syntax received, into ``folder``."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    with running(["storescp", *accept, "-aet", "PACS", "-od", str(folder), str(port)],
                 lambda: echo(port, "COVIDSEG", "PACS").returncode == 0, "storescp",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield port


def received(folder: Path) -> dict[str, Path]:
    """SOP Class UID -> the one file storescp wrote of it."""
    files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID): p for p in folder.iterdir()}
    assert len(files) == len(list(folder.iterdir()))
    return files


def send(port: int, items: list[bytes], sc_transfer_syntax: str) -> None:
    sender = CStoreSender(DicomDestination("PACS", "127.0.0.1", port), "COVIDSEG",
                          sc_transfer_syntax=sc_transfer_syntax)
    assert sender.send(items) == [None] * len(items)


def syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def same_pixels(path: Path, uncompressed: bytes) -> bool:
    return np.array_equal(pydicom.dcmread(path).pixel_array, pydicom.dcmread(io.BytesIO(uncompressed)).pixel_array)


@pytest.mark.parametrize("setting, accepts, expected", [
    ("jpeg-ls-lossless", ["+xt"], JPEGLSLossless),
    ("rle", ["+xr"], RLELossless),
    ("jpeg2000-lossless", ["+xv"], JPEG2000Lossless),
])
def test_the_sc_goes_compressed_to_a_destination_that_accepts_it(tmp_path, results, setting, accepts, expected):
    with storescp(tmp_path / "in", *accepts) as port:
        send(port, [results["sc"], results["seg"]], setting)
    files = received(tmp_path / "in")
    sc = files[SecondaryCaptureImageStorage]
    assert syntax_of(sc) == expected
    assert same_pixels(sc, results["sc"])  # lossless
    assert sc.stat().st_size < len(results["sc"]) / 2
    assert iod_errors(sc) == []
    assert syntax_of(files[SegmentationStorage]) == ExplicitVRLittleEndian  # only the SC is compressed


@pytest.mark.parametrize("setting, accepts", [("jpeg-ls-lossless", ["+xt"]), ("rle", ["+xr"]),
                                              ("jpeg2000-lossless", ["+xv"])])
def test_a_compressed_sc_keeps_its_uid_and_a_redelivery_replaces_it(tmp_path, results, setting, accepts):
    """storescp names each file by its SOP Instance UID: the SC arrives under the UID it was made with (and the
    audit log names), sent twice it is one instance."""
    made = pydicom.dcmread(io.BytesIO(results["sc"]), stop_before_pixels=True).SOPInstanceUID
    with storescp(tmp_path / "in", *accepts, "-uf") as port:
        send(port, [results["sc"]], setting)
        send(port, [results["sc"]], setting)
    files = list((tmp_path / "in").iterdir())
    assert len(files) == 1, files
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.SOPInstanceUID == made == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID.is_compressed


def test_the_sc_goes_uncompressed_to_a_destination_that_accepts_only_uncompressed(tmp_path, results):
    with storescp(tmp_path / "in") as port:  # storescp's default: uncompressed syntaxes only
        send(port, [results["sc"]], "jpeg-ls-lossless")
    sc = received(tmp_path / "in")[SecondaryCaptureImageStorage]
    assert syntax_of(sc) == ExplicitVRLittleEndian and same_pixels(sc, results["sc"])


def test_uncompressed_proposes_no_compressed_syntax(tmp_path, results):
    with storescp(tmp_path / "in", "+xa") as port:  # +xa: every syntax dcmtk knows
        send(port, [results["sc"]], "uncompressed")
    assert syntax_of(received(tmp_path / "in")[SecondaryCaptureImageStorage]) == ExplicitVRLittleEndian


def test_an_sc_that_cannot_be_compressed_is_sent_uncompressed(tmp_path, results, caplog):
    ds = pydicom.dcmread(io.BytesIO(results["sc"]))
    ds.PixelData = ds.PixelData[:-3]  # a few bytes short of its rows x columns x 3: no encoder takes it
    buf = io.BytesIO()
    ds.save_as(buf)
    with storescp(tmp_path / "in", "+xt") as port:
        send(port, [buf.getvalue()], "jpeg-ls-lossless")
    assert syntax_of(received(tmp_path / "in")[SecondaryCaptureImageStorage]) == ExplicitVRLittleEndian
    assert "a Secondary Capture is sent uncompressed: it could not be compressed" in caplog.text


def test_every_setting_names_a_syntax():
    choices = typing.get_args(Settings.model_fields["node_sc_transfer_syntax"].annotation)
    assert set(choices) == set(SC_TRANSFER_SYNTAXES)
    with pytest.raises(ValueError, match="jpeg-ls-lossless"):
        CStoreSender(DicomDestination("PACS", "127.0.0.1", 104), "COVIDSEG", sc_transfer_syntax="jpeg-lossy")


def test_the_node_sends_its_sc_as_jpeg_ls_by_default(tmp_path):
    """The real node, COVIDSEG_NODE_SC_TRANSFER_SYNTAX unset: JPEG-LS to a destination that takes it."""
    source = tmp_path / "cr.dcm"
    source.write_bytes(make_cxr_dicom(COVID[0], "CR", size=1024))
    node_port = free_port()
    with storescp(tmp_path / "in", "+xt") as port, node(tmp_path / "spool", node_port, tmp_path / "node.log",
                                                        COVIDSEG_NODE_DESTINATION=f"PACS@127.0.0.1:{port}",
                                                        COVIDSEG_NODE_OUTPUTS="sc"):
        assert store(node_port, "MODALITY", [source]).returncode == 0
        deadline = time.time() + 240
        while not any((tmp_path / "in").iterdir()) and time.time() < deadline:
            time.sleep(0.5)
    sc = received(tmp_path / "in")[SecondaryCaptureImageStorage]
    assert syntax_of(sc) == JPEGLSLossless and iod_errors(sc) == []
