"""The viewer's page and assets as HTTP answers: served from the service itself, open without a
key, behind a strict Content-Security-Policy, and gone with ``COVIDSEG_VIEWER=false``."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from app.pipeline.load import load_image_bytes
from tests.conftest import fixture_images, make_client

COVID = fixture_images("Val", "COVID-19")[0]


class PageParts(HTMLParser):
    """What a CSP must allow: the script and style sources, inline handlers, style attributes, controls."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self.controls: list[dict[str, str | None]] = []
        self.label_targets: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a.get("src"))
        if tag == "link" and a.get("rel") == "stylesheet":
            self.styles.append(a["href"] or "")
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag}[{k}]" for k in a if k.startswith("on") or k == "style"]
        if tag in ("input", "select", "textarea"):
            self.controls.append(a)
        if tag == "label" and a.get("for"):
            self.label_targets.add(a["for"])


def page_parts(html: str) -> PageParts:
    parts = PageParts()
    parts.feed(html)
    return parts


@pytest.mark.parametrize("path", ["/", "/viewer"])
def test_the_page_is_served_with_only_its_own_origin_allowed(service_client, path):
    client, _ = service_client
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == csp["style-src"] == csp["connect-src"] == "'self'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    parts = page_parts(r.text)
    assert parts.inline == []  # nothing the policy would have to allow
    assert parts.scripts and all(s and s.startswith("/viewer/") for s in parts.scripts)
    for asset in parts.scripts + parts.styles:  # every asset is the service's own
        a = client.get(asset)
        assert a.status_code == 200 and a.headers["x-content-type-options"] == "nosniff"
        assert b"http://" not in a.content and b"https://" not in a.content


def test_every_control_has_a_label(service_client):
    parts = page_parts(service_client[0].get("/").text)
    assert len(parts.controls) >= 4
    for control in parts.controls:
        assert control.get("id") in parts.label_targets, control


def test_an_unknown_asset_is_a_json_404(service_client):
    r = service_client[0].get("/viewer/secrets.py")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_with_api_keys_the_page_is_open_and_the_api_is_not():
    with make_client(api_keys=["k1"]) as client:
        assert client.get("/").status_code == 200
        assert client.get("/viewer/viewer.js").status_code == 200
        assert client.get("/model").status_code == 401
        assert client.get("/model", headers={"X-API-Key": "k1"}).status_code == 200


def test_the_viewer_setting_turns_the_page_off():
    with make_client(viewer=False) as client:
        for path in ("/", "/viewer", "/viewer/viewer.js"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert client.get("/health").status_code == 200


def test_include_image_is_the_image_as_segmented(service_client):
    client, _ = service_client
    data = COVID.read_bytes()
    r = client.post("/segment?include=image", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 200
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["image_png_base64"]))))
    assert np.array_equal(shown, load_image_bytes(data, 10**8).gray)
    png = client.post("/segment?format=png&output=image", files={"file": ("x.png", data, "image/png")})
    assert base64.b64encode(png.content).decode() == r.json()["image_png_base64"]
