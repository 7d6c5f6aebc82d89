"""The smaller Secondary Captures a site may choose (COVIDSEG_NODE_SC_MAX_SIZE, COVIDSEG_NODE_SC_TRANSFER_SYNTAX=
jpeg-baseline): objects of their own UIDs, valid (dciodvfy), lossy ones saying so; sent under that UID by the
node's C-STORE sender as made (dcmtk's storescp taking JPEG baseline) or decoded (storescp taking uncompressed
only), and by the real node, whose audit log names the UID the destination holds."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage

from app.engine.results import dicom_of
from app.pipeline.dicom.common import ResultOptions, ScForm
from app.pipeline.dicom.read import load_dicom_bytes
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom
from tests.dicom_validate import iod_errors
from tests.node.test_node_audit import events
from tests.node.test_sc_compression import received, send, storescp, syntax_of
from tests.servers import free_port, node, store

COVID = fixture_images("Val", "COVID-19")


@pytest.fixture(scope="module")
def captures(service_client) -> dict[ScForm, bytes]:
    """The SC of one 2048 px CR in each form, made by the service's own output step."""
    _, service = service_client
    loaded = load_dicom_bytes(make_cxr_dicom(COVID[0], "CR", size=2048), 10 ** 8)
    seg = service.engine.segment([loaded], service.default_threshold)[0]
    forms = [ScForm(), ScForm(1024), ScForm(0, True), ScForm(1024, True)]
    return {form: dicom_of("sc", seg, loaded, service.model_ref(), ResultOptions(sc_form=form)) for form in forms}


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_each_form_is_an_object_of_its_own_uid_valid_and_saying_what_it_is(tmp_path, captures):
    full = dataset(captures[ScForm()])
    uids = {dataset(data).SOPInstanceUID for data in captures.values()}
    assert len(uids) == len(captures)  # four forms, four objects
    assert {dataset(data).SeriesInstanceUID for data in captures.values()} == {full.SeriesInstanceUID}
    for form, data in captures.items():
        ds = dataset(data)
        path = tmp_path / f"{form.max_side}-{form.lossy_jpeg}.dcm"
        path.write_bytes(data)
        assert iod_errors(path) == [], form
        assert (ds.Rows, ds.Columns) == ((form.max_side,) * 2 if form.max_side else (2048, 2048))
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        if form.lossy_jpeg:
            assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
            assert (ds.PhotometricInterpretation, ds.LossyImageCompression, ds.LossyImageCompressionMethod) == \
                ("YBR_FULL_422", "01", "ISO_10918_1")
            assert float(ds.LossyImageCompressionRatio) > 10
            assert ds.ImageType[0] == "DERIVED" and "lossy JPEG baseline" in ds.DerivationDescription
        else:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and "LossyImageCompression" not in ds
    assert len(captures[ScForm(1024, True)]) < len(captures[ScForm()]) / 50
    # lossy, yet the same picture: the decoded pixels within a few grey levels of the lossless capture's
    lossy = dataset(captures[ScForm(0, True)]).pixel_array.astype(np.int16)
    assert np.abs(lossy - full.pixel_array.astype(np.int16)).mean() < 2.0


def test_a_lossy_sc_is_sent_as_made_or_decoded_under_its_own_uid(tmp_path, captures):
    made = captures[ScForm(1024, True)]
    uid = dataset(made).SOPInstanceUID
    with storescp(tmp_path / "jpeg", "+xy", "-uf") as port:  # takes JPEG baseline
        send(port, [made], "jpeg-baseline")
        send(port, [made], "jpeg-baseline")  # again: replaces
    with storescp(tmp_path / "plain", "-uf") as port:  # uncompressed only
        send(port, [made], "jpeg-baseline")
    as_made = received(tmp_path / "jpeg")[SecondaryCaptureImageStorage]
    decoded = received(tmp_path / "plain")[SecondaryCaptureImageStorage]
    assert len(list((tmp_path / "jpeg").iterdir())) == 1 and as_made.read_bytes()[-len(made) // 2:] in made
    assert syntax_of(as_made) == JPEGBaseline8Bit and syntax_of(decoded) == ExplicitVRLittleEndian
    for path in (as_made, decoded):
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == uid
        assert ds.LossyImageCompression == "01"  # decoding makes no other image: it stays lossy
        assert iod_errors(path) == []
    assert pydicom.dcmread(decoded).PhotometricInterpretation == "RGB"


def test_a_lossless_setting_never_makes_a_lossy_sc_lossless_or_the_reverse(tmp_path, captures):
    """A full-size SC queued before a site chose jpeg-baseline is sent as made (no lossy conversion at sending:
    that would be another image under the same UID)."""
    full = captures[ScForm()]
    with storescp(tmp_path / "in", "+xy") as port:
        send(port, [full], "jpeg-baseline")
    sc = received(tmp_path / "in")[SecondaryCaptureImageStorage]
    assert syntax_of(sc) == ExplicitVRLittleEndian and pydicom.dcmread(sc).SOPInstanceUID == dataset(full).SOPInstanceUID


def test_the_node_makes_and_sends_the_sc_the_site_chose_under_the_uid_it_audits(tmp_path):
    source = tmp_path / "cr.dcm"
    source.write_bytes(make_cxr_dicom(COVID[0], "CR", size=2048, bits=12))
    spool, node_port = tmp_path / "spool", free_port()
    with storescp(tmp_path / "in", "+xy") as port, \
            node(spool, node_port, tmp_path / "node.log", COVIDSEG_NODE_DESTINATION=f"PACS@127.0.0.1:{port}",
                 COVIDSEG_NODE_OUTPUTS="sc", COVIDSEG_NODE_SC_TRANSFER_SYNTAX="jpeg-baseline",
                 COVIDSEG_NODE_SC_MAX_SIZE="1024"):
        assert store(node_port, "MODALITY", [source]).returncode == 0
        deadline = time.time() + 240
        while not events(spool, "result-delivered") and time.time() < deadline:
            time.sleep(0.5)
    sc = received(tmp_path / "in")[SecondaryCaptureImageStorage]
    ds = pydicom.dcmread(sc)
    assert syntax_of(sc) == JPEGBaseline8Bit and (ds.Rows, ds.Columns) == (1024, 1024) and iod_errors(sc) == []
    assert sc.stat().st_size < 300_000
    [made], [delivered] = events(spool, "result-made"), events(spool, "result-delivered")
    assert made["ParticipantObjectID"] == delivered["ParticipantObjectID"] == ds.SOPInstanceUID
