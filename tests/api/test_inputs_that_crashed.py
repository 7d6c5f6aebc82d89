"""Inputs that once answered 500 (issue 29, points 1 and 3), against a real server (``python -m app``): each is a
4xx with its code, and the server answers the next request on the same connection."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from PIL import Image

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.servers import service

COVID = fixture_images("Val", "COVID-19")


def png_with_a_text_bomb() -> bytes:
    """A 2 KB PNG whose zTXt chunk inflates to 2 MB (Pillow refuses it with ValueError when opening)."""
    buf = io.BytesIO()
    Image.new("L", (256, 256), 100).save(buf, format="PNG")
    data = zlib.compress(b"a" * 2_000_000, 9)
    body = b"zTXt" + b"Comment\x00\x00" + data
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    png = buf.getvalue()
    return png[:33] + chunk + png[33:]  # after the IHDR chunk


def dicom(change: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = read(make_cxr_dicom(COVID[0], size=256))
    change(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def lut(**values: str) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: [setattr(ds, k, v) for k, v in values.items()]


CASES = {
    "png-ztxt-bomb": (png_with_a_text_bomb(), "x.png", 400, "corrupt_image"),
    "pixel-data-4x": (dicom(lambda ds: setattr(ds, "PixelData", ds.PixelData * 4)), "x.dcm", 400, "corrupt_dicom"),
    "rows-columns-too-small": (dicom(lut(Rows=128, Columns=128)), "x.dcm", 400, "corrupt_dicom"),
    "slope-nan": (dicom(lut(RescaleSlope="NaN", RescaleIntercept="0")), "x.dcm", 400, "corrupt_dicom"),
    "slope-inf": (dicom(lut(RescaleSlope="inf", RescaleIntercept="0")), "x.dcm", 400, "corrupt_dicom"),
    "slope-1e308": (dicom(lut(RescaleSlope="1e308", RescaleIntercept="0")), "x.dcm", 400, "corrupt_dicom"),
    "window-width-1e308": (dicom(lut(WindowWidth="1e308")), "x.dcm", 400, "corrupt_dicom"),
}


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    with service(tmp_path_factory.mktemp("log") / "service.log") as found:
        yield found


@pytest.mark.parametrize("name", CASES)
def test_an_input_that_crashed_is_a_4xx_with_its_code_and_the_connection_goes_on(url: str, name: str):
    data, filename, status, code = CASES[name]
    with httpx.Client(base_url=url, timeout=60) as client:
        for params in ("", "?format=dicom-seg" if filename.endswith(".dcm") else "?format=png"):
            r = client.post(f"/segment{params}", files={"file": (filename, data)})
            assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert client.get("/health").status_code == 200  # the same connection, still answered


def test_the_same_image_with_sound_values_is_segmented(url: str):
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/segment", files={"file": ("x.dcm", dicom(lambda ds: None))})
        assert r.status_code == 200 and r.json()["severity"] != "none", r.text
