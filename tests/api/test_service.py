"""The service through its real ASGI app, on the shipped model and real fixture X-rays."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from tempfile import SpooledTemporaryFile

import httpx
import numpy as np
import pytest
from PIL import ExifTags, Image

from app.pipeline.infer import ModelLoadError
from tests.conftest import fixture_images, make_client, model_under_test

COVID = fixture_images("Val", "COVID-19") + fixture_images("Train", "COVID-19")
NORMAL = fixture_images("Val", "Normal") + fixture_images("Train", "Normal")


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def post(client, data: bytes, params: str = "", name: str = "cxr.png", headers=None):
    return client.post(f"/segment{params}", files={"file": (name, data, "application/octet-stream")}, headers=headers)


def decode_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return im


# ---------------------------------------------------------------- start-up, health, model


def test_health_ready_and_model_card(service_client):
    client, service = service_client
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["model"]["sha256"] == service.model.info.sha256
    card = client.get("/model").json()
    assert card["loaded"]["providers"] == ["CPUExecutionProvider"]
    assert card["default_threshold"] == service.default_threshold
    assert [b["grade"] for b in card["severity_bins"]] == ["none", "mild", "moderate", "severe", "critical"]
    with make_client(max_pixels=4_000_000, max_batch_files=3) as small:
        limits = small.get("/model").json()["input_limits"]
    assert limits == {"max_upload_bytes": 20 * 1024 * 1024, "max_pixels": 4_000_000, "min_image_side": 64,
                      "max_batch_files": 3}


def test_not_ready_before_start_up():
    client = make_client()  # not entered: the lifespan (model load) has not run
    assert client.get("/health").status_code == 200
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "starting"
    r = post(client, COVID[0].read_bytes())
    assert r.status_code == 503 and r.json()["code"] == "not_ready"


def test_missing_or_corrupt_model_stops_start_up(tmp_path):
    from app.core.config import Settings
    from app.main import create_app
    from fastapi.testclient import TestClient

    with pytest.raises(ModelLoadError, match="model file not found"):
        with TestClient(create_app(Settings(model_path=tmp_path / "nope.onnx"))):
            pass
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        with TestClient(create_app(Settings(model_path=corrupt))):
            pass


def test_a_card_about_another_file_stops_start_up_unless_relaxed(tmp_path):
    import json
    import shutil

    from app.core.config import Settings
    from app.main import create_app
    from fastapi.testclient import TestClient

    model = tmp_path / "m.onnx"
    shutil.copy(model_under_test(), model)
    card = json.loads(model_under_test().with_suffix(".card.json").read_text())
    card["sha256"] = "0" * 64
    model.with_suffix(".card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="describes another file"):
        with TestClient(create_app(Settings(model_path=model))):
            pass
    with TestClient(create_app(Settings(model_path=model, verify_card=False))) as client:
        assert client.get("/model").json()["sha256"] == "0" * 64  # served, with the card it has
        assert client.get("/model").json()["loaded"]["sha256"] != "0" * 64
    model.with_suffix(".card.json").write_text('{"name": "incomplete"}')
    with pytest.raises(ModelLoadError, match="is not valid"):
        with TestClient(create_app(Settings(model_path=model))):
            pass


# ---------------------------------------------------------------- results


def test_json_result_on_a_covid_image(service_client):
    client, service = service_client
    r = post(client, COVID[0].read_bytes(), "?threshold=0.25")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold"] == 0.25 and body["image"] == {"width": 256, "height": 256, "format": "PNG", "mode": "L"}
    assert body["model"] == service.model_identity()
    assert len(body["request_id"]) == 32 and r.headers["x-request-id"] == body["request_id"]
    assert body["ppar"] == pytest.approx(body["infection_pixels"] / (256 * 256))
    assert body["lung_fraction"] == pytest.approx(body["lung_pixels"] / (256 * 256))
    assert 0 < body["infected_lung_share"] <= 1 and body["severity"] in {"mild", "moderate", "severe", "critical"}
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "judge", "postprocess", "total"}
    assert "mask_png_base64" not in body


def test_default_threshold_comes_from_the_card(service_client):
    client, service = service_client
    assert post(client, COVID[0].read_bytes()).json()["threshold"] == service.default_threshold


@pytest.mark.parametrize("path", COVID, ids=lambda p: p.name)
def test_shipped_model_finds_infection_on_covid_fixtures(service_client, path):
    body = post(service_client[0], path.read_bytes(), "?threshold=0.5").json()
    assert body["ppar"] > 0.05, body  # ground-truth infection covers 32-35 % of these images
    assert body["lung_fraction"] > 0.15


@pytest.mark.parametrize("path", NORMAL, ids=lambda p: p.name)
def test_shipped_model_is_near_zero_on_normal_fixtures(service_client, path):
    body = post(service_client[0], path.read_bytes(), "?threshold=0.5").json()
    assert body["ppar"] < 0.01, body
    assert body["severity"] in {"none", "mild"}


def test_lower_threshold_never_predicts_less(service_client):
    client, _ = service_client
    data = COVID[1].read_bytes()
    counts = [post(client, data, f"?threshold={t}").json()["infection_pixels"] for t in (0.75, 0.5, 0.25)]
    assert counts[0] <= counts[1] <= counts[2]
    assert post(client, data, "?threshold=0").json()["ppar"] == 1.0


def test_png_outputs_are_at_the_input_resolution(service_client):
    client, _ = service_client
    big = Image.open(COVID[0]).convert("RGB").resize((512, 384))
    data = png_bytes(big)
    mask = decode_png(post(client, data, "?format=png").content)
    assert mask.size == (512, 384) and mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255} and np.asarray(mask).any()
    overlay = decode_png(post(client, data, "?format=png&output=overlay").content)
    assert overlay.size == (512, 384) and overlay.mode == "RGB"
    prob = np.asarray(decode_png(post(client, data, "?format=png&output=probability").content))
    assert prob.shape == (384, 512) and prob.max() > 128
    lung = decode_png(post(client, data, "?format=png&output=lung").content)
    assert lung.size == (512, 384)
    # the PNG mask and the JSON count agree
    body = post(client, data, "?threshold=0.5").json()
    assert body["image"]["width"] == 512 and int((np.asarray(mask) > 0).sum()) == body["infection_pixels"]


def test_accept_header_selects_png(service_client):
    r = post(service_client[0], COVID[0].read_bytes(), headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    assert float(r.headers["x-ppar"]) > 0 and r.headers["cache-control"] == "no-store"


def test_include_embeds_pngs_in_json(service_client):
    body = post(service_client[0], COVID[0].read_bytes(), "?include=mask,overlay").json()
    mask = decode_png(base64.b64decode(body["mask_png_base64"]))
    overlay = decode_png(base64.b64decode(body["overlay_png_base64"]))
    assert mask.size == overlay.size == (256, 256)
    assert int((np.asarray(mask) > 0).sum()) == body["infection_pixels"]


@pytest.mark.parametrize("convert", ["I;16", "RGBA", "P", "JPEG", "1", "CMYK"])
def test_accepts_common_modes_and_formats(service_client, convert):
    src = Image.open(COVID[0]).convert("L")
    if convert == "I;16":
        data = png_bytes(Image.fromarray(np.asarray(src).astype(np.uint16) * 257))
    elif convert == "JPEG":
        data = png_bytes(src, "JPEG", quality=95)
    elif convert == "CMYK":  # print workflows and some scanners save CMYK JPEGs
        data = png_bytes(src.convert("CMYK"), "JPEG", quality=95)
    else:
        data = png_bytes(src.convert(convert))
    r = post(service_client[0], data)
    assert r.status_code == 200, r.text
    if convert in ("I;16", "JPEG", "RGBA", "P", "CMYK"):
        assert r.json()["ppar"] > 0.05
    if convert == "CMYK":
        gray = post(service_client[0], png_bytes(src)).json()
        assert r.json()["image"]["mode"] == "CMYK"
        assert abs(r.json()["infection_pixels"] - gray["infection_pixels"]) <= 0.05 * gray["infection_pixels"]


def test_exif_orientation_is_applied_so_masks_match_what_viewers_show(service_client):
    upright = Image.open(COVID[0]).convert("L").crop((0, 0, 256, 200))  # not square: the sides tell
    stored_sideways = upright.transpose(Image.Transpose.ROTATE_90)  # EXIF 6: a viewer turns it back
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    plain, turned = io.BytesIO(), io.BytesIO()
    upright.save(plain, "JPEG", quality=95)
    stored_sideways.save(turned, "JPEG", quality=95, exif=exif.tobytes())
    a = post(service_client[0], plain.getvalue(), "?include=mask").json()
    b = post(service_client[0], turned.getvalue(), "?include=mask").json()
    assert (b["image"]["width"], b["image"]["height"]) == (256, 200) == (a["image"]["width"], a["image"]["height"])
    mask_a, mask_b = (decode_png(base64.b64decode(x["mask_png_base64"])) for x in (a, b))
    assert a["infection_pixels"] > 0 and np.mean(np.asarray(mask_a) == np.asarray(mask_b)) > 0.99


# ---------------------------------------------------------------- bad input


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("data, status, code", [
    (b"", 400, "empty_file"),
    (b"just some text, not an image", 415, "not_an_image"),
    (None, 400, "corrupt_image"),  # truncated PNG
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", 400, "corrupt_image"),  # a PNG cut inside its header
    (b"\xff\xd8\xff\xe0\x00\x10JF", 400, "corrupt_image"),  # a JPEG cut inside its header
    (png_bytes(Image.new("L", (8, 8)), "GIF"), 415, "unsupported_format"),
    (_png_header_only(100_000, 100_000), 413, "too_many_pixels"),  # a bomb: refused from its header
    (png_bytes(Image.new("L", (4000, 1))), 422, "image_too_small"),  # no chest X-ray
    (_png_header_only(63, 2000), 422, "image_too_small"),  # refused from its header
])
def test_bad_files_get_a_clear_4xx(service_client, data, status, code):
    if data is None:
        data = COVID[0].read_bytes()[:4000]
    r = post(service_client[0], data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["detail"] and body["request_id"]


@pytest.mark.parametrize("params, fragment", [
    ("?threshold=1.5", "threshold"), ("?threshold=-0.1", "threshold"), ("?threshold=abc", "threshold"),
    ("?threshold=nan", "threshold"), ("?format=xml", "format"), ("?format=png&output=heatmap", "output"),
    ("?include=mask,bogus", "bogus"),
])
def test_bad_parameters_get_422(service_client, params, fragment):
    r = post(service_client[0], COVID[0].read_bytes(), params)
    assert r.status_code == 422 and fragment in r.json()["detail"]


def test_missing_file_gets_422_saying_how_to_send_it(service_client):
    client, _ = service_client
    for sent in ({}, {"content": COVID[0].read_bytes(), "headers": {"content-type": "image/png"}},
                 {"files": {"image": ("a.png", COVID[0].read_bytes())}}):  # nothing, a raw body, another field
        r = client.post("/segment", **sent)
        assert r.status_code == 422 and "multipart/form-data field 'file'" in r.json()["detail"], r.text
    r = client.post("/segment/batch", files={"file": ("a.png", COVID[0].read_bytes())})
    assert r.status_code == 422 and "fields 'files'" in r.json()["detail"]


def test_a_second_file_is_refused_not_dropped(service_client):
    files = [("file", (p.name, p.read_bytes())) for p in (COVID[0], NORMAL[0])]
    r = service_client[0].post("/segment", files=files)
    assert r.status_code == 422 and r.json()["code"] == "too_many_files" and "/segment/batch" in r.json()["detail"]


def test_upload_and_pixel_limits():
    with make_client(max_upload_bytes=10_000, max_pixels=256 * 200, max_batch_files=2) as client:
        big = COVID[0].read_bytes()
        assert len(big) > 10_000
        r = post(client, big)
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        small = png_bytes(Image.new("L", (256, 256)))
        r = post(client, small)
        assert r.status_code == 413 and "over the limit" in r.json()["detail"]
        # a declared body beyond the request cap is refused before it is read
        r = client.post("/segment", content=b"x" * 100, headers={"content-length": str(10 ** 9),
                                                                  "content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413
        files = [("files", ("a.png", png_bytes(Image.new("L", (64, 64))))) for _ in range(3)]
        r = client.post("/segment/batch", files=files)
        assert r.status_code == 413 and r.json()["code"] == "too_many_files"


def test_streamed_body_over_the_cap_is_cut_off():
    with make_client(max_upload_bytes=5_000, max_batch_files=1) as client:
        def chunks():
            for _ in range(100):
                yield b"y" * 1000
        r = client.post("/segment", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


# ---------------------------------------------------------------- batch


def test_batch_returns_one_result_per_file_in_order(service_client):
    client, _ = service_client
    paths = [COVID[0], NORMAL[0], COVID[1]]
    r = client.post("/segment/batch?threshold=0.5", files=[("files", (p.name, p.read_bytes())) for p in paths])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    for p, res in zip(paths, results):
        single = post(client, p.read_bytes(), "?threshold=0.5").json()
        assert res["infection_pixels"] == pytest.approx(single["infection_pixels"], abs=5)


def test_batch_names_the_bad_file(service_client):
    files = [("files", ("a.png", COVID[0].read_bytes())), ("files", ("b.png", b"nope"))]
    r = service_client[0].post("/segment/batch", files=files)
    assert r.status_code == 415 and r.json()["detail"].startswith("file 1:")


# ---------------------------------------------------------------- auth, metrics, privacy, concurrency


def test_api_keys():
    with make_client(api_keys=["k-one", "k-two"]) as client:
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        assert client.get("/model").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
        r = post(client, COVID[0].read_bytes())
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert post(client, COVID[0].read_bytes(), headers={"X-API-Key": "k-two"}).status_code == 200
        assert client.get("/model", headers={"X-API-Key": "k-one"}).status_code == 200


def test_api_keys_from_environment(monkeypatch):
    from app.core.config import Settings

    monkeypatch.setenv("COVIDSEG_API_KEYS", "a, b,")
    assert Settings().api_keys == ["a", "b"]


def test_metrics_move(service_client):
    client, _ = service_client

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = client.get("/metrics").text
    post(client, COVID[0].read_bytes())
    post(client, b"")
    after = client.get("/metrics").text
    ok = 'covidseg_requests_total{method="POST",route="/segment",status="200"}'
    bad = 'covidseg_requests_total{method="POST",route="/segment",status="400"}'
    assert value(after, ok) == value(before, ok) + 1
    assert value(after, bad) == value(before, bad) + 1
    assert value(after, "covidseg_inference_duration_seconds_count") == value(before, "covidseg_inference_duration_seconds_count") + 1
    assert value(after, "covidseg_images_total") == value(before, "covidseg_images_total") + 1
    assert 'covidseg_model_info{' in after


def test_uploads_are_never_spooled_to_disk(service_client, monkeypatch):
    def refuse(self):
        raise AssertionError("upload rolled over to a temporary file on disk")

    monkeypatch.setattr(SpooledTemporaryFile, "rollover", refuse)
    noise = np.random.default_rng(0).integers(0, 255, (1400, 1400), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    assert len(data) > 1024 * 1024  # over Starlette's default 1 MB spool size
    r = post(service_client[0], data)
    assert r.status_code == 422 and r.json()["code"] == "not_a_chest_radiograph", r.text  # read in memory, judged


def test_logs_carry_no_filenames(service_client, caplog):
    caplog.set_level(logging.DEBUG)
    post(service_client[0], COVID[0].read_bytes(), name="DOE^JOHN_1961-02-03.png")
    post(service_client[0], b"garbage", name="DOE^JOHN_1961-02-03.png")
    assert caplog.records and "DOE" not in caplog.text


def test_health_answers_while_inference_is_busy():
    release = threading.Event()
    with make_client() as client:
        service = client.app.state.service
        original = service.model.run

        def slow(batch):
            release.wait(10)
            return original(batch)

        service.model.run = slow

        async def scenario():
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                busy = asyncio.create_task(ac.post("/segment", files={"file": ("x.png", COVID[0].read_bytes())}))
                await asyncio.sleep(0.3)
                t0 = time.perf_counter()
                health = await ac.get("/health")
                ready = await ac.get("/ready")
                waited = time.perf_counter() - t0
                assert not busy.done()
                release.set()
                return health, ready, waited, await busy

        health, ready, waited, busy = asyncio.run(scenario())
        service.model.run = original
    assert health.status_code == 200 and ready.status_code == 200 and waited < 2
    assert busy.status_code == 200


def test_concurrent_requests_get_their_own_results(service_client):
    client, _ = service_client
    paths = [COVID[0], NORMAL[0], COVID[1], NORMAL[1]]
    expected = [post(client, p.read_bytes(), "?threshold=0.5").json()["infection_pixels"] for p in paths]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: post(client, p.read_bytes(), "?threshold=0.5").json()["infection_pixels"],
                            paths * 2))
    assert got == expected * 2


def test_openapi_documents_every_parameter(service_client):
    spec = service_client[0].get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/segment"]["post"]["parameters"]}
    assert {"threshold", "format", "output", "include"} <= set(params)
    assert all(p.get("description") for p in params.values())
    assert {"/segment/batch", "/model", "/metrics", "/health", "/ready"} <= set(spec["paths"])


def test_the_tests_serve_the_shipped_model_and_card(service_client):
    """The figures these tests check are the shipped model's: the service they start loads that
    file (by its sha256) and its card, not a model under development."""
    import hashlib

    from app.card import ModelCard
    from app.core.config import DEFAULT_MODEL_PATH

    client, _ = service_client
    loaded = client.get("/model").json()["loaded"]
    card = ModelCard.load(DEFAULT_MODEL_PATH)
    assert loaded["sha256"] == hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest() == card.sha256
    assert (loaded["name"], loaded["version"]) == (card.name, card.version)


def test_the_cards_region_rule_shapes_the_mask_at_any_threshold(service_client):
    from app.pipeline.inputs import decode_upload
    from app.pipeline.postprocess import infection_mask

    client, service = service_client
    rule = service.card.region_peak_threshold
    assert client.get("/model").json()["region_peak_threshold"] == rule > 0.25  # the shipped card has one
    data = COVID[0].read_bytes()
    body = post(client, data, "?threshold=0.25").json()
    assert body["region_peak_threshold"] == rule
    seg = service.engine.segment([decode_upload(data, service.max_pixels, "cxr.png", None)], 0.25)[0]
    assert np.array_equal(seg.infection_mask, infection_mask(seg.infection_probability(), 0.25, rule))
    assert body["infection_pixels"] == seg.infection_pixels > 0


@pytest.mark.parametrize("accept, media", [
    ("image/png", "image/png"), ("image/PNG", "image/png"), ("image/png;q=0", "application/json"),
    ("application/json;q=0.5, image/png", "image/png"), ("image/png;q=0.2, application/json", "application/json"),
    ("*/*", "application/json"), ("image/png;q=abc", "application/json"),
])
def test_accept_is_parsed_by_media_type_and_q_not_by_substring(service_client, accept, media):
    r = post(service_client[0], COVID[0].read_bytes(), headers={"Accept": accept})
    assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == media, accept


@pytest.mark.parametrize("name, content_type", [("x.dcm", "application/octet-stream"), ("x.png", "application/dicom")])
def test_a_png_named_or_sent_as_dicom_is_read_by_its_signature(service_client, name, content_type):
    client, _ = service_client
    r = client.post("/segment", files={"file": (name, COVID[0].read_bytes(), content_type)})
    assert r.status_code == 200 and r.json()["image"]["format"] == "PNG", r.text
