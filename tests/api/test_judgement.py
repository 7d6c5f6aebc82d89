"""The input judgement through the service: what the model cannot judge is a 422 with its own code and a
detail that says what was measured against which limit; what it accepts carries the judgement's figures."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from app.pipeline.judge import APPEARS_INVERTED, NO_CONTRAST, NOT_A_CHEST
from tests.conftest import fixture_images, make_client
from tests.dicom_fixtures import make_cxr_dicom

COVID = fixture_images("Val", "COVID-19")


def png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(gray, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def post(client, data: bytes, name: str = "x.png", params: str = ""):
    return client.post(f"/segment{params}", files={"file": (name, data, "application/octet-stream")})


def chest() -> np.ndarray:
    return np.asarray(Image.open(COVID[0]).convert("L"))


@pytest.mark.parametrize("picture, code, words", [
    (np.full((1024, 1024), 255), NO_CONTRAST, "grey levels"),
    (np.zeros((1024, 1024)), NO_CONTRAST, "grey levels"),
    (np.random.default_rng(1).integers(0, 256, (512, 512)), NOT_A_CHEST, "over the limit"),
    (np.rot90(chest()), NOT_A_CHEST, "not a frontal chest radiograph this model can read"),
    (255 - chest(), APPEARS_INVERTED, "negative"),
])
def test_pictures_the_model_cannot_judge_get_a_422_with_their_code_and_no_result(service_client, picture, code, words):
    client, _ = service_client
    for params in ("", "?format=png", "?include=mask"):
        r = post(client, png(picture), params=params)
        assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text
        body = r.json()
        assert body["code"] == code and words in body["detail"] and body["request_id"]


def test_an_accepted_image_reports_the_judgements_figures_and_the_model_names_the_limits(service_client):
    client, _ = service_client
    body = post(client, COVID[0].read_bytes()).json()
    limits = client.get("/model").json()["input_judgement"]["limits"]
    assert limits == service_client[1].engine.card.input_judgement.limits  # the card's, named by GET /model
    figures = body["judgement"]
    assert figures["contrast"] >= limits["min_contrast"]
    assert figures["feature_distance"] <= limits["max_feature_distance"]
    assert figures["frontal_score"] >= limits["min_frontal_score"]
    assert figures["lung_share_left"] + figures["lung_share_right"] >= limits["min_lung_share"]
    assert figures["lung_confidence"] >= limits["min_lung_confidence"]
    assert "judge" in body["timings_ms"]


def test_a_batch_names_the_file_the_model_cannot_judge(service_client):
    files = [("files", ("a.png", COVID[0].read_bytes())), ("files", ("b.png", png(np.full((512, 512), 7))))]
    r = service_client[0].post("/segment/batch", files=files)
    assert r.status_code == 422 and r.json()["code"] == NO_CONTRAST
    assert r.json()["detail"].startswith("file 1: ")


def test_a_dicom_whose_own_window_whites_it_out_is_refused_for_no_contrast_in_every_format(service_client):
    ds = pydicom.dcmread(io.BytesIO(make_cxr_dicom(COVID[1], modality="DX", size=1024, bits=16)))
    ds.WindowCenter, ds.WindowWidth = 10, 20  # every pixel above the window: all white, as the DX
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    for params in ("", "?format=dicom-seg", "?format=dicom&outputs=seg,sc,sr", "?selection=ignore"):
        r = post(service_client[0], buf.getvalue(), "x.dcm", params)
        assert r.status_code == 422 and r.json()["code"] == NO_CONTRAST, r.text


def test_monochrome1_said_of_monochrome2_pixels_is_refused_pointing_at_photometric_interpretation(service_client):
    ds = pydicom.dcmread(io.BytesIO(make_cxr_dicom(COVID[1], size=1024, window=False)))
    ds.PhotometricInterpretation = "MONOCHROME1"  # the header says so; the pixels are MONOCHROME2's
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = post(service_client[0], buf.getvalue(), "x.dcm", "?format=dicom-sr")
    assert r.status_code == 422 and r.json()["code"] == APPEARS_INVERTED, r.text
    assert "PhotometricInterpretation" in r.json()["detail"]
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, str(ds.PatientName)):
        assert uid not in r.text


def test_with_micro_batching_the_negative_of_a_refused_image_runs_through_the_batcher():
    with make_client(microbatch_wait_ms=20, microbatch_max_batch=4) as client:
        service = client.app.state.service
        runs: list[int] = []
        original = service.model.run
        service.model.run = lambda batch: (runs.append(len(batch)), original(batch))[1]
        r = post(client, png(255 - chest()))
        assert r.status_code == 422 and r.json()["code"] == APPEARS_INVERTED, r.text
        assert runs == [1, 1]  # the image, then its negative
        waits = [line for line in client.get("/metrics").text.splitlines()
                 if line.startswith("covidseg_inference_queue_wait_seconds_count")]
        assert waits and float(waits[0].split()[-1]) == 2  # both waited in the batcher's queue
        assert post(client, COVID[0].read_bytes()).status_code == 200
