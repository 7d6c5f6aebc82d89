"""Every photometric interpretation the DICOM reader accepts gives the answer the same picture gets as
a PNG (through the real app on the shipped model); the others are refused with a 415 that says so.

The colour sources are real encodings: dcmtk's ``img2dcm`` wrapping a JPEG (YBR_FULL_422, what
digitisers and screen captures send), pydicom and its encoders for the others (RLE, JPEG 2000)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from app.pipeline.dicom.read import load_dicom_bytes, looks_like_dicom
from app.pipeline.errors import PipelineError, Problem
from tests.conftest import fixture_images, read_gray
from tests.dicom_fixtures import (
    img2dcm,
    make_colour_dicom,
    make_cxr_dicom,
    make_palette_dicom,
    read,
    tinted,
    with_lut_shape,
    without_file_meta,
)

COVID = fixture_images("Val", "COVID-19")[0]
THRESHOLD = 0.4


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def answer(client, data: bytes, name: str, media_type: str) -> dict:
    # The colour sources are Secondary Captures (Modality OT), which the selection rules leave out: this
    # is about reading them, so the research override is on (PNGs are not judged either way).
    r = client.post(f"/segment?threshold={THRESHOLD}&selection=ignore", files={"file": (name, data, media_type)})
    assert r.status_code == 200, r.text
    return r.json()


def assert_same_answer(client, dicom: bytes, picture: Image.Image, exact: bool) -> dict:
    """The DICOM's answer equals the PNG's: to the pixel when both hold the same pixels, else (a
    lossy codec decoded by another library) within what one gray level here and there moves."""
    got = answer(client, dicom, "x.dcm", "application/dicom")
    want = answer(client, png_bytes(picture), "x.png", "image/png")
    assert want["infection_pixels"] > 0  # the picture has findings, so a mis-read shows
    if exact:
        fields = ("infection_pixels", "lung_pixels", "ppar", "infected_lung_share", "severity")
        assert {k: got[k] for k in fields} == {k: want[k] for k in fields}
    else:
        for key, tolerance in (("ppar", 0.005), ("lung_fraction", 0.005), ("infected_lung_share", 0.01)):
            assert got[key] == pytest.approx(want[key], abs=tolerance), key
        assert got["severity"] == want["severity"]
    return got


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_grayscale_reads_as_the_png(service_client, photometric: str):
    # 8-bit with the full-range window: displayed as stored, the PNG's gray levels (MONOCHROME1 inverted)
    data = make_cxr_dicom(COVID, photometric=photometric, bits=8)
    got = assert_same_answer(service_client[0], data, Image.open(COVID).convert("L"), exact=True)
    assert got["image"]["mode"] == photometric


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT"])
def test_lossless_colour_reads_as_the_png(service_client, photometric: str):
    rgb = tinted(COVID)
    data = make_colour_dicom(rgb, photometric)
    assert read(data).PhotometricInterpretation == photometric
    got = assert_same_answer(service_client[0], data, Image.fromarray(rgb), exact=True)
    assert got["image"]["mode"] == photometric


def test_jpeg_2000_irreversible_colour_reads_as_the_png(service_client):
    rgb = tinted(COVID)
    data = make_colour_dicom(rgb, "YBR_ICT")
    assert read(data).PhotometricInterpretation == "YBR_ICT"
    assert_same_answer(service_client[0], data, Image.fromarray(rgb), exact=False)


def test_img2dcm_jpeg_ybr_full_422_reads_as_the_jpeg_as_png(service_client, tmp_path: Path):
    """The reported case: pydicom already returns YBR as RGB; converting again gave PPAR 0.20 for 0.34."""
    jpeg = tmp_path / "cxr.jpg"
    Image.fromarray(tinted(COVID)).save(jpeg, quality=95, subsampling=1)  # 4:2:2, as cameras write
    data = img2dcm(jpeg, tmp_path / "cxr.dcm")
    ds = read(data)
    assert (ds.PhotometricInterpretation, ds.file_meta.TransferSyntaxUID) == ("YBR_FULL_422", "1.2.840.10008.1.2.4.50")
    decoded = Image.open(jpeg).convert("RGB")  # the pixels the JPEG holds, as a PNG
    assert_same_answer(service_client[0], data, decoded, exact=False)


def test_palette_colour_reads_as_the_palette_png(service_client):
    picture = Image.fromarray(tinted(COVID)).quantize(colors=128)  # a "P" image: indices and a palette
    got = assert_same_answer(service_client[0], make_palette_dicom(picture), picture, exact=True)
    assert got["image"]["mode"] == "PALETTE COLOR"


@pytest.mark.parametrize("photometric", ["YBR_PARTIAL_420", "HSV", ""])
def test_other_interpretations_are_refused_with_415(service_client, photometric: str):
    ds = read(make_colour_dicom(tinted(COVID), "RGB"))
    ds.PhotometricInterpretation = photometric
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # a Secondary Capture (OT): the rules, judged first, would refuse it; this is about reading it
    r = service_client[0].post("/segment?selection=ignore",
                               files={"file": ("x.dcm", buf.getvalue(), "application/dicom")})
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["code"] == "unsupported_mode"
    assert f"photometric interpretation {photometric or 'missing'} is not supported" in body["detail"]
    assert "PALETTE COLOR" in body["detail"] and "YBR_FULL_422" in body["detail"]


def test_palette_without_its_lookup_tables_is_a_400(service_client):
    ds = read(make_palette_dicom(Image.fromarray(tinted(COVID)).quantize(colors=16)))
    del ds.RedPaletteColorLookupTableData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = service_client[0].post("/segment?selection=ignore",
                               files={"file": ("x.dcm", buf.getvalue(), "application/dicom")})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "corrupt_dicom"


# ---------------------------------------------------------------- the reader on its own (no app)


@pytest.mark.parametrize("kw", [
    {}, {"photometric": "MONOCHROME1"}, {"modality": "DX"}, {"compress": RLELossless},
    {"compress": JPEG2000Lossless, "photometric": "MONOCHROME1"}, {"compress": "jpeg-baseline"},
], ids=["cr", "mono1", "dx", "rle", "j2k-mono1", "jpeg-baseline"])
def test_decodes_to_the_same_gray_image(kw):
    loaded = load_dicom_bytes(make_cxr_dicom(COVID, **kw), max_pixels=10 ** 8)
    ref = read_gray(COVID).astype(int)
    tolerance = 4 if kw.get("compress") == "jpeg-baseline" else 1  # lossy JPEG
    assert np.abs(loaded.gray.astype(int) - ref).mean() < tolerance
    assert loaded.format == "DICOM" and set(loaded.dicom.uids()) == {
        "study_instance_uid", "series_instance_uid", "sop_instance_uid"}


def test_rescale_and_missing_window_stretch_the_image_range():
    loaded = load_dicom_bytes(make_cxr_dicom(COVID, window=False, slope=2.0, intercept=-1024), 10 ** 8)
    assert loaded.gray.min() == 0 and loaded.gray.max() == 255
    assert np.corrcoef(loaded.gray.ravel(), read_gray(COVID).ravel())[0, 1] > 0.999


def test_detection_by_content_media_type_or_extension():
    data = make_cxr_dicom(COVID)
    assert looks_like_dicom(data)
    assert looks_like_dicom(b"x", content_type="application/dicom")
    assert looks_like_dicom(b"x", filename="A.DCM")
    assert not looks_like_dicom(COVID.read_bytes(), "x.png", "image/png")


def test_multi_frame_and_no_pixel_data_are_refused():
    ds = read(make_cxr_dicom(COVID))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(PipelineError) as err:
        load_dicom_bytes(buf.getvalue(), 10 ** 8)
    assert err.value.problem is Problem.INVALID and err.value.code == "multi_frame"
    del ds.PixelData
    ds.NumberOfFrames = 1
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(PipelineError) as err:
        load_dicom_bytes(buf.getvalue(), 10 ** 8)
    assert err.value.problem is Problem.INVALID and err.value.code == "no_pixel_data"


# ---------------------------------------------------------------- DICOM without File Meta


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit", "explicit"])
def test_a_dataset_without_file_meta_is_recognised_by_content_and_read_as_the_file(implicit_vr: bool):
    part10 = make_cxr_dicom(COVID, photometric="MONOCHROME1")
    bare = without_file_meta(part10, implicit_vr)
    assert bare[128:132] != b"DICM" and not bare.startswith(b"\0" * 8)  # no preamble, no marker
    assert looks_like_dicom(bare) and looks_like_dicom(bare, "IM000001", "application/octet-stream")
    loaded, reference = load_dicom_bytes(bare, 10 ** 8), load_dicom_bytes(part10, 10 ** 8)
    assert np.array_equal(loaded.gray, reference.gray) and loaded.dicom.uids() == reference.dicom.uids()
    syntax = loaded.dicom.dataset.file_meta.TransferSyntaxUID  # as pydicom parsed it, for the decoders
    assert syntax == (ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian)


def test_file_meta_without_the_preamble_is_recognised():
    ds = read(make_cxr_dicom(COVID))
    ds.preamble = None  # the File Meta group first, no 128 bytes and no 'DICM' before it
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    data = buf.getvalue()
    assert data[:2] == b"\x02\x00" and looks_like_dicom(data)
    assert load_dicom_bytes(data, 10 ** 8).gray.shape == (256, 256)


def test_what_is_not_a_dataset_is_not_taken_for_one():
    jpeg = io.BytesIO()
    Image.open(COVID).convert("L").save(jpeg, format="JPEG")
    bare = without_file_meta(make_cxr_dicom(COVID))
    for data in (COVID.read_bytes(), jpeg.getvalue(), b"not an image\n", b"\x08\x00\x16\x00", bytes(64),
                 bare[:20],  # the first element cut short: its length runs past the data
                 b"\x08\x00\x16\x00UI\xff\x7f" + bytes(16)):  # explicit VR, a length past the data
        assert not looks_like_dicom(data), data[:16]
    shuffled = bare[:8 + 26] + b"\x08\x00\x05\x00" + bare[8 + 26 + 4:]  # a second tag below the first
    assert not looks_like_dicom(shuffled)


def test_compressed_pixels_without_file_meta_are_an_unsupported_transfer_syntax():
    ds = read(make_cxr_dicom(COVID, compress=RLELossless))
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    with pytest.raises(PipelineError) as err:
        load_dicom_bytes(buf.getvalue(), 10 ** 8)  # parsed, but nothing says which codec made the pixels
    assert err.value.problem is Problem.UNSUPPORTED and err.value.code == "unsupported_transfer_syntax"


# ---------------------------------------------------------------- Presentation LUT Shape


def test_inverse_presentation_inverts_monochrome2_and_monochrome1_only_once():
    plain = load_dicom_bytes(make_cxr_dicom(COVID, bits=8), 10 ** 8).gray
    stored_inverted = make_cxr_dicom(COVID, photometric="MONOCHROME1", bits=8)  # pixels stored inverted
    inverse = load_dicom_bytes(with_lut_shape(stored_inverted, "INVERSE", "MONOCHROME2"), 10 ** 8).gray
    assert np.array_equal(inverse, plain)
    mono1 = load_dicom_bytes(stored_inverted, 10 ** 8).gray
    assert np.array_equal(mono1, plain)
    assert np.array_equal(load_dicom_bytes(with_lut_shape(stored_inverted, "INVERSE"), 10 ** 8).gray, mono1)
    identity = load_dicom_bytes(with_lut_shape(make_cxr_dicom(COVID, bits=8), "IDENTITY"), 10 ** 8).gray
    assert np.array_equal(identity, plain)


@pytest.mark.parametrize("data", [bytes(range(256)) * 20, b"hello world\n"], ids=["random-bytes", "text"])
@pytest.mark.parametrize("how", [{"filename": "x.dcm"}, {"content_type": "application/dicom"}], ids=["named", "sent"])
def test_bytes_only_named_or_sent_as_dicom_are_corrupt_dicom_not_a_refused_modality(service_client, data, how):
    """A gateway sending junk as .dcm is a damaged-file warning (400 corrupt_dicom), not a selection refusal
    ("no Modality") that would point at selection=ignore."""
    client, _ = service_client
    name, media = how.get("filename", "x.bin"), how.get("content_type", "application/octet-stream")
    for selection in ("apply", "ignore"):
        r = client.post(f"/segment?selection={selection}", files={"file": (name, data, media)})
        assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom", r.text
