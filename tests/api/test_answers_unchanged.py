"""The answers of /segment and /segment/batch, byte for byte, against a reference stored before the
request path was made faster (issue 22, service overhead): the speed-ups must not change a byte.

The reference holds, per request, the status, the headers that carry results and the sha256 of the body;
in JSON bodies the request id and the timings (which differ on every request) are blanked first.
Regenerate it only for a change that is meant to alter answers:
``COVIDSEG_WRITE_ANSWERS=1 .venv/bin/python -m pytest -q tests/api/test_answers_unchanged.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import fixture_images, make_client

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "answers" / "segment-answers.json"
COVID = fixture_images("Val", "COVID-19")[0]  # the image bench/serve.py sends
NORMAL = fixture_images("Val", "Normal")[0]
RESULT_HEADERS = ("content-type", "x-ppar", "x-threshold", "x-severity", "x-model-version", "cache-control")
VARYING = [(re.compile(rb'"request_id":"[0-9a-f]+"'), b'"request_id":"-"'),
           (re.compile(rb'"timings_ms":\{[^}]*\}'), b'"timings_ms":{}')]


def resized_png(path: Path, size: tuple[int, int]) -> bytes:
    """A fixture X-ray at another size (so the resizes to and from the network's 256 px run)."""
    buf = io.BytesIO()
    Image.open(path).convert("L").resize(size, Image.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


def one(data: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", ("cxr.png", data, "image/png"))]


def requests() -> dict[str, tuple[str, list[tuple[str, tuple[str, bytes, str]]]]]:
    covid, normal, wide = COVID.read_bytes(), NORMAL.read_bytes(), resized_png(COVID, (384, 320))
    cases = {"json": ("/segment", one(covid)),
             "json-0.25-include-all": ("/segment?threshold=0.25&include=mask,overlay,probability,lung", one(covid)),
             "json-normal": ("/segment", one(normal)),
             "json-384x320-flip": ("/segment?tta=flip&include=overlay", one(wide)),
             "batch": ("/segment/batch?include=mask", [("files", ("a.png", covid, "image/png")),
                                                       ("files", ("b.png", wide, "image/png"))])}
    for output in ("mask", "overlay", "probability", "lung"):
        cases[f"png-{output}"] = (f"/segment?format=png&output={output}", one(covid))
        cases[f"png-{output}-384x320"] = (f"/segment?format=png&output={output}&threshold=0.3", one(wide))
    return cases


def answer_of(response) -> dict:
    body = response.content
    if response.headers["content-type"].startswith("application/json"):
        for pattern, blank in VARYING:
            body = pattern.sub(blank, body)
    return {"status": response.status_code, "headers": {h: response.headers.get(h) for h in RESULT_HEADERS},
            "body_sha256": hashlib.sha256(body).hexdigest(), "body_bytes": len(body)}


@pytest.fixture(scope="module")
def answers() -> dict[str, dict]:
    with make_client() as client:
        return {name: answer_of(client.post(path, files=files)) for name, (path, files) in requests().items()}


def test_answers_are_byte_identical_to_the_reference(answers):
    if os.environ.get("COVIDSEG_WRITE_ANSWERS"):
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    reference = json.loads(REFERENCE.read_text())
    assert set(answers) == set(reference)
    for name, expected in reference.items():
        assert answers[name] == expected, name
