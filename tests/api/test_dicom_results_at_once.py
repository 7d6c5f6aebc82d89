"""``POST /segment?format=dicom&outputs=...``: several DICOM results of one image in one answer
(multipart/related; type="application/dicom", one part per kind in the order asked), from one model run,
each part byte for byte what its own format gives."""

from __future__ import annotations

import pytest

from app.pipeline.dicom.multipart import multipart_parts
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom

COVID = fixture_images("Val", "COVID-19")


@pytest.fixture(scope="module")
def cxr() -> bytes:
    return make_cxr_dicom(COVID[0], "CR", "MONOCHROME1", size=512, pixel_spacing=0.14)


def post(client, data: bytes, query: str, name: str = "cxr.dcm", media_type: str = "application/dicom"):
    return client.post(f"/segment{query}", files={"file": (name, data, media_type)})


def test_the_parts_are_the_single_answers_in_the_order_asked(service_client, cxr):
    client, _ = service_client
    r = post(client, cxr, "?format=dicom&outputs=sr,seg&threshold=0.3")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    alone = {kind: post(client, cxr, f"?format=dicom-{kind}&threshold=0.3") for kind in ("sr", "seg")}
    assert multipart_parts(r.content, r.headers["content-type"]) == [alone["sr"].content, alone["seg"].content]
    for header in ("x-ppar", "x-threshold", "x-severity", "x-model-version", "cache-control"):
        assert r.headers[header] == alone["seg"].headers[header]


def test_all_three_by_default_from_one_model_run(service_client, cxr):
    client, service = service_client
    runs, real = [], service.model.run
    service.model.run = lambda batch: runs.append(len(batch)) or real(batch)
    try:
        r = post(client, cxr, "?format=dicom")
    finally:
        service.model.run = real
    assert r.status_code == 200 and runs == [1]
    parts = multipart_parts(r.content, r.headers["content-type"])
    assert parts == [post(client, cxr, f"?format=dicom-{kind}").content for kind in ("seg", "sc", "sr")]


@pytest.mark.parametrize("query, says", [
    ("?format=dicom&outputs=seg,knee", "unknown result(s) ['knee']"),
    ("?format=dicom&outputs=seg,seg", "each result once"),
    ("?format=dicom&outputs=,", "none asked"),
    ("?format=json&outputs=seg", "only with format=dicom"),
    ("?format=dicom-seg&outputs=sc", "only with format=dicom"),
])
def test_bad_outputs_are_a_clear_422(service_client, cxr, query, says):
    r = post(service_client[0], cxr, query)
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameter" and says in r.json()["detail"], r.text


def test_a_png_gets_no_dicom_results(service_client):
    r = post(service_client[0], COVID[0].read_bytes(), "?format=dicom", "cxr.png", "image/png")
    assert r.status_code == 422 and "format=dicom needs a DICOM input" in r.json()["detail"]


def test_a_knee_is_refused_unless_selection_is_ignored(service_client):
    client, _ = service_client
    knee = make_cxr_dicom(COVID[1], "DX", body_part="KNEE")
    refused = post(client, knee, "?format=dicom&outputs=seg")
    assert refused.status_code == 422 and refused.json()["code"] == "not_selected"
    taken = post(client, knee, "?format=dicom&outputs=seg&selection=ignore")
    assert taken.status_code == 200
    assert multipart_parts(taken.content, taken.headers["content-type"]) == [
        post(client, knee, "?format=dicom-seg&selection=ignore").content]
