"""DICOM in (pydicom) and out (highdicom SEG and SC), through the real app on the shipped model.
The reader on its own: tests/pipeline/test_dicom_read.py."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read, rle_overrunning_the_frame, with_lut_shape, without_file_meta

COVID = fixture_images("Val", "COVID-19")[0]


def post(client, data: bytes, params: str = "", name: str = "image.dcm", content_type: str = "application/dicom"):
    return client.post(f"/segment{params}", files={"file": (name, data, content_type)})


def test_json_answer_echoes_uids_not_patient(service_client):
    client, _ = service_client
    data = make_cxr_dicom(COVID, photometric="MONOCHROME1", patient_name="SECRET^PATIENT")
    src = read(data)
    r = post(client, data, "?threshold=0.5")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dicom"] == {"study_instance_uid": src.StudyInstanceUID,
                             "series_instance_uid": src.SeriesInstanceUID, "sop_instance_uid": src.SOPInstanceUID}
    assert body["image"]["format"] == "DICOM" and "SECRET" not in r.text and "PID-0001" not in r.text
    png = client.post("/segment?threshold=0.5", files={"file": ("x.png", COVID.read_bytes(), "image/png")}).json()
    assert abs(body["infection_pixels"] - png["infection_pixels"]) <= 0.01 * max(1, png["infection_pixels"])


def test_bad_dicom_gets_a_clear_4xx(service_client):
    client, _ = service_client
    truncated = make_cxr_dicom(COVID)[:2000]
    r = post(client, truncated)
    assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom"
    ds = read(make_cxr_dicom(COVID))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    r = post(client, buf.getvalue())
    assert r.status_code == 422 and "no pixel data" in r.json()["detail"]
    r = post(client, make_cxr_dicom(COVID, size=32))
    assert r.status_code == 422 and r.json()["code"] == "image_too_small" and "32x32" in r.json()["detail"]


@pytest.mark.parametrize("fmt", ["json", "dicom-seg", "dicom-sr"])
def test_a_damaged_attribute_is_refused_when_read_not_met_by_a_writer(service_client, fmt):
    """A value representation no DICOM has ('ZZ') on Patient's Name, which only the writers copy."""
    data = make_cxr_dicom(COVID)
    name_element = b"\x10\x00\x10\x00PN"  # (0010,0010) PN, explicit VR little endian
    assert data.count(name_element) == 1
    r = post(service_client[0], data.replace(name_element, name_element[:4] + b"ZZ"), f"?format={fmt}")
    assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom", r.text
    assert "attribute (0010,0010)" in r.json()["detail"]


def with_first_frame(data: bytes, change) -> bytes:
    """``data`` with its encapsulated first frame replaced by ``change(frame)``."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = read(data)
    ds.PixelData = encapsulate([change(next(generate_frames(ds.PixelData, number_of_frames=1)))])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_damaged_compressed_pixels_are_corrupt_and_an_unknown_syntax_is_unsupported(service_client):
    client, _ = service_client
    for compress in (JPEG2000Lossless, RLELossless, "jpeg-baseline"):  # syntaxes we decode, data cut short
        r = post(client, with_first_frame(make_cxr_dicom(COVID, "DX", compress=compress), lambda f: f[:200]))
        assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom", (compress, r.text)
    ds = read(make_cxr_dicom(COVID, compress=JPEG2000Lossless))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder here
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = post(client, buf.getvalue())
    assert r.status_code == 415 and r.json()["code"] == "unsupported_transfer_syntax"
    assert "1.2.840.10008.1.2.4.100" in r.json()["detail"]


def test_pixel_data_that_crashes_the_decoder_is_a_400_and_the_service_goes_on(service_client):
    client, _ = service_client
    r = post(client, rle_overrunning_the_frame(COVID), "?format=dicom-seg")
    assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom", r.text
    assert "pixel data" in r.json()["detail"]
    assert post(client, make_cxr_dicom(COVID, compress=RLELossless)).status_code == 200


def test_dicom_seg_round_trips_and_equals_the_png_mask(service_client):
    client, service = service_client
    data = make_cxr_dicom(COVID, modality="DX", compress=RLELossless)
    src = read(data)
    r = post(client, data, "?format=dicom-seg&threshold=0.25")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(r.content))
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == src.PatientID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SOPInstanceUID != src.SOPInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["COVID-19 infection", "Lung"]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == service.model.info.name and algo.AlgorithmVersion == service.model.info.version
    pixels = seg.pixel_array  # (frames, rows, cols): one frame per segment
    assert pixels.shape == (2, 256, 256)
    png = client.post("/segment?format=png&threshold=0.25",
                      files={"file": ("x.dcm", data, "application/dicom")})
    mask = np.asarray(Image.open(io.BytesIO(png.content))) > 0
    assert np.array_equal(pixels[0].astype(bool), mask) and mask.any()
    lung = client.post("/segment?format=png&output=lung", files={"file": ("x.dcm", data, "application/dicom")})
    assert np.array_equal(pixels[1].astype(bool), np.asarray(Image.open(io.BytesIO(lung.content))) > 0)


def test_dicom_sc_is_an_rgb_overlay_in_a_new_series(service_client):
    client, _ = service_client
    data = make_cxr_dicom(COVID)
    src = read(data)
    r = post(client, data, "?format=dicom-sc")
    assert r.status_code == 200
    sc = pydicom.dcmread(io.BytesIO(r.content))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES" and "PPAR" in sc.DerivationDescription
    rgb = sc.pixel_array
    assert rgb.shape == (256, 256, 3)
    red = (rgb[..., 0] > rgb[..., 1] + 40)
    assert red.any()  # infection tint present
    yellow = (rgb[..., 0] > 180) & (rgb[..., 1] > 180) & (rgb[..., 2] < 100)
    assert yellow[:40].any() and not yellow[:40, -3:].any()  # the summary is burned in, and fits the width


def test_dicom_outputs_need_a_dicom_input(service_client):
    r = service_client[0].post("/segment?format=dicom-seg", files={"file": ("x.png", COVID.read_bytes(), "image/png")})
    assert r.status_code == 422 and "needs a DICOM input" in r.json()["detail"]


def test_batch_accepts_dicom(service_client):
    files = [("files", ("a.dcm", make_cxr_dicom(COVID), "application/dicom")),
             ("files", ("b.png", COVID.read_bytes(), "image/png"))]
    r = service_client[0].post("/segment/batch", files=files)
    assert r.status_code == 200
    a, b = r.json()["results"]
    assert a["image"]["format"] == "DICOM" and "dicom" in a and "dicom" not in b


FIGURES = ("ppar", "infection_pixels", "lung_pixels", "infected_lung_share", "severity")


def figures(r) -> dict:
    assert r.status_code == 200, r.text
    return {k: r.json()[k] for k in FIGURES}


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit", "explicit"])
def test_a_dicom_without_file_meta_gets_the_answer_of_the_file_with_it(service_client, implicit_vr):
    """As gateways and archives keep them: no preamble, no 'DICM', no File Meta; named and typed as nothing
    in particular, so it is recognised by its content."""
    client, _ = service_client
    part10 = make_cxr_dicom(COVID, photometric="MONOCHROME1", bits=14, window=False)
    bare = without_file_meta(part10, implicit_vr)
    got = post(client, bare, "?threshold=0.4", name="IM000001", content_type="application/octet-stream")
    want = post(client, part10, "?threshold=0.4")
    assert figures(got) == figures(want) and want.json()["infection_pixels"] > 0
    assert got.json()["dicom"] == want.json()["dicom"] and got.json()["image"]["format"] == "DICOM"
    seg = post(client, bare, "?format=dicom-seg&threshold=0.4", name="IM000001", content_type="")
    assert seg.status_code == 200, seg.text
    assert seg.content == post(client, part10, "?format=dicom-seg&threshold=0.4").content  # the same object


def test_compressed_pixels_without_file_meta_are_a_415(service_client):
    ds = read(make_cxr_dicom(COVID, compress=RLELossless))
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    r = post(service_client[0], buf.getvalue(), name="IM000002", content_type="application/octet-stream")
    assert r.status_code == 415 and r.json()["code"] == "unsupported_transfer_syntax", r.text


def test_presentation_lut_shape_inverse_is_applied_once(service_client):
    """MONOCHROME2 pixels stored inverted with INVERSE read as the plain image; MONOCHROME1 with INVERSE
    (as the DX IOD pairs them) as MONOCHROME1 alone, not inverted twice."""
    client, _ = service_client
    plain = figures(post(client, make_cxr_dicom(COVID, modality="DX"), "?threshold=0.4"))
    stored_inverted = make_cxr_dicom(COVID, modality="DX", photometric="MONOCHROME1")
    inverse = post(client, with_lut_shape(stored_inverted, "INVERSE", "MONOCHROME2"), "?threshold=0.4")
    assert figures(inverse) == plain and plain["infection_pixels"] > 0
    mono1 = figures(post(client, stored_inverted, "?threshold=0.4"))
    assert mono1 == plain
    assert figures(post(client, with_lut_shape(stored_inverted, "INVERSE"), "?threshold=0.4")) == mono1
