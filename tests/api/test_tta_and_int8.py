"""Test-time flip and the int8 model, through the real app."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.card import ModelCard
from app.core.config import DEFAULT_MODEL_PATH
from app.pipeline.infer import OnnxSegmenter
from app.pipeline.preprocess import preprocess_batch
from tests.conftest import fixture_images, make_client, read_gray

COVID, NORMAL = fixture_images("Val", "COVID-19"), fixture_images("Val", "Normal")
INT8 = DEFAULT_MODEL_PATH.with_name(f"{DEFAULT_MODEL_PATH.stem}-int8.onnx")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mask(client, data: bytes, params: str) -> np.ndarray:
    r = client.post(f"/segment?format=png&{params}", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content))) > 0


@pytest.mark.parametrize("path", COVID[:2])
def test_flip_of_a_flipped_image_gives_the_mirrored_mask(service_client, path):
    client, _ = service_client
    gray = read_gray(path)
    for output in ("mask", "probability"):
        plain = mask(client, png(gray), f"tta=flip&output={output}&threshold=0.3")
        mirrored = mask(client, png(gray[:, ::-1].copy()), f"tta=flip&output={output}&threshold=0.3")
        assert np.array_equal(mirrored, plain[:, ::-1]) and plain.any()


def test_flip_is_applied_and_can_be_the_default(service_client):
    client, _ = service_client
    data = COVID[0].read_bytes()
    r = client.post("/segment?output=probability&format=png", files={"file": ("x.png", data, "image/png")})
    flip = client.post("/segment?output=probability&format=png&tta=flip", files={"file": ("x.png", data, "image/png")})
    assert r.content != flip.content  # the mirror's opinion changed the probabilities
    with make_client(tta="flip") as flipping:
        default = flipping.post("/segment?output=probability&format=png", files={"file": ("x.png", data, "image/png")})
        assert flipping.get("/model").json()["loaded"]["tta_default"] == "flip"
    assert default.content == flip.content
    bad = client.post("/segment?tta=rotate", files={"file": ("x.png", data, "image/png")})
    assert bad.status_code == 422 and "tta" in bad.json()["detail"]


def test_the_int8_model_loads_says_so_and_agrees_with_fp32():
    card = ModelCard.load(INT8)
    fp32 = ModelCard.load(DEFAULT_MODEL_PATH)
    assert card.export["quantized_from"]["sha256"] == fp32.sha256 and card.version == fp32.version
    with make_client(model_path=INT8) as client:
        loaded = client.get("/model").json()["loaded"]
        assert loaded["precision"] == "int8" and loaded["name"].endswith("-int8") and loaded["sha256"] == card.sha256
        results = [client.post("/segment", files={"file": ("x.png", p.read_bytes(), "image/png")}).json()
                   for p in COVID + NORMAL]
    reference = OnnxSegmenter(DEFAULT_MODEL_PATH).predict(preprocess_batch([read_gray(p) for p in COVID + NORMAL]))
    for result, probs in zip(results, reference):
        fp32_pixels = int((probs[0] >= 0.5).sum())
        # mask agreement, not 1e-4: int8 moves probabilities near the threshold
        assert abs(result["infection_pixels"] - fp32_pixels) <= max(0.05 * fp32_pixels, 50)


def test_int8_masks_agree_with_fp32_pixel_by_pixel():
    int8, fp32 = OnnxSegmenter(INT8), OnnxSegmenter(DEFAULT_MODEL_PATH)
    batch = preprocess_batch([read_gray(p) for p in COVID + NORMAL])
    a, b = int8.predict(batch), fp32.predict(batch)
    assert float(np.mean((a[:, 0] >= 0.5) == (b[:, 0] >= 0.5))) > 0.99
    assert float(np.mean((a[:, 1] >= 0.5) == (b[:, 1] >= 0.5))) > 0.99
    assert float(np.abs(a - b).max()) > 1e-4  # it is really another graph
