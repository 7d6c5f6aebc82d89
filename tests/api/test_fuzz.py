"""A mutation fuzzer over real uploads against a real server (``python -m app``): PNG, JPEG and DICOM files (plain
and compressed) with bytes flipped, cut, inserted or repeated, under random query parameters. Whatever arrives,
the answer is never a 5xx and never a dropped connection: every request on one kept-alive connection is answered
(issue 29: the fuzz run found 500s, and requests lost behind them)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom
from tests.servers import service

COVID = fixture_images("Val", "COVID-19")


def jpeg_of(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("L").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


SEEDS = {
    "png": COVID[0].read_bytes(),
    "jpeg": jpeg_of(COVID[1]),
    "dicom": make_cxr_dicom(COVID[0], size=256),
    "dicom-mono1-16bit": make_cxr_dicom(COVID[1], size=256, photometric="MONOCHROME1"),
    "dicom-jpeg-ls": make_cxr_dicom(COVID[0], size=256, compress="1.2.840.10008.1.2.4.80"),
    "dicom-jpeg2000": make_cxr_dicom(COVID[0], size=256, compress="1.2.840.10008.1.2.4.90"),
    "dicom-rle": make_cxr_dicom(COVID[0], size=256, compress="1.2.840.10008.1.2.5"),
}
NAMES = {"png": "a.png", "jpeg": "a.jpg"}  # the DICOMs as .dcm


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "zero"]))
        if how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at:at + draw(st.integers(1, 4096))]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif how == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 2048))] * draw(st.integers(1, 4))
        else:
            data[at:at + 8] = bytes(8)  # lengths and counts to zero
        if not data:
            break
    return kind, bytes(data)


QUERIES = st.fixed_dictionaries({}, optional={
    "threshold": st.sampled_from(["0", "-0", "0.25", "1", "0.5e0"]),
    "format": st.sampled_from(["json", "png", "dicom-seg", "dicom-sc", "dicom-sr", "dicom"]),
    "output": st.sampled_from(["mask", "overlay", "probability", "lung", "image"]),
    "include": st.sampled_from(["mask,overlay", "probability,lung,image"]),
    "tta": st.sampled_from(["none", "flip"]),
    "selection": st.sampled_from(["apply", "ignore"]),
})


@pytest.fixture(scope="module")
def client():
    with service() as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http


# derandomize: the same examples on every run, so that a CI failure reproduces (hypothesis prints the example)
@settings(max_examples=250, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(upload=mutated(), query=QUERIES, media_type=st.sampled_from([None, "application/dicom", "image/png"]),
       batch=st.booleans())
def test_no_mutated_upload_gets_a_5xx_or_a_lost_answer(client, upload, query, media_type, batch):
    kind, data = upload
    part = (NAMES.get(kind, "a.dcm"), data) + ((media_type,) if media_type else ())
    if batch:  # beside an intact file, in /segment/batch
        query = {k: v for k, v in query.items() if k not in ("format", "output")}
        r = client.post("/segment/batch", params=query, files=[("files", ("b.png", SEEDS["png"])), ("files", part)])
    else:
        r = client.post("/segment", params=query, files={"file": part})  # raises if the answer is lost
    assert r.status_code < 500, (kind, query, r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert body["code"] and body["detail"] and body["request_id"] == r.headers["x-request-id"]
