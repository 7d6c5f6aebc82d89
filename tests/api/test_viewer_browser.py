"""The viewer in a real browser (Debian's chromium driven by Playwright) against a real service:
what it shows equals what the JSON API answers, for a PNG and a DICOM, at two thresholds."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from playwright import (
    sync_api as playwright,  # drives Debian chromium: no browser download
)

from tests.conftest import ROOT, fixture_images
from tests.nonchest import png_bytes as png_of
from tests.dicom_fixtures import make_cxr_dicom
from tests.servers import service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: The flags a closed network needs (no background connections) and a root user needs (no sandbox).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
#: Screenshots land here (README's picture is one of them).
ARTIFACTS = Path(os.environ.get("COVIDSEG_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
COVID = fixture_images("Val", "COVID-19")[0]
SHOWN = {"ppar": "ppar", "infected-lung-share": "infected_lung_share", "lung-fraction": "lung_fraction",
         "severity": "severity", "result-threshold": "threshold"}
API_KEY = "viewer-test-key"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    assert os.path.exists(CHROMIUM), "apt-get install chromium (see README)"
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with service() as u:
        yield u


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with service(COVIDSEG_API_KEYS=API_KEY, COVIDSEG_MAX_UPLOAD_BYTES="200000") as u:
        yield u


@pytest.fixture(scope="module")
def cxr_dicom(tmp_path_factory) -> Path:
    """What a CR modality sends: 2048 px, 12-bit, MONOCHROME1, PixelSpacing, JPEG-LS lossless."""
    path = tmp_path_factory.mktemp("dicom") / "cxr.dcm"
    path.write_bytes(make_cxr_dicom(COVID, photometric="MONOCHROME1", compress="1.2.840.10008.1.2.4.80",
                                    size=2048, bits=12, pixel_spacing=0.139))
    return path


class Viewer:
    """One page of the viewer, recording every request it makes."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 800):
        self.url = url
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(f"{url}/")

    def ready(self) -> None:
        self.page.wait_for_selector("#file:enabled", timeout=30_000)

    def upload(self, path: Path) -> None:
        self.page.set_input_files("#file", str(path))  # its change event marks the page busy at once
        self.wait_done()

    def wait_done(self) -> None:
        self.page.wait_for_function("() => !document.body.classList.contains('busy')", timeout=60_000)

    def wait_threshold(self, value: str) -> None:
        """Until the result on show is the one at ``value`` (the slider re-segments a moment after it moves)."""
        self.page.wait_for_function(f"() => document.querySelector('#result-threshold').dataset.value === '{value}'",
                                    timeout=60_000)
        self.wait_done()

    def shown(self) -> dict[str, object]:
        """The figures on show, as the page keeps them (data-value: the JSON values as JS prints them)."""
        values = {key: self.page.get_attribute(f"#{id_}", "data-value") for id_, key in SHOWN.items()}
        return {k: v if k == "severity" else float(v) for k, v in values.items()}

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def foreign_requests(self) -> list[str]:
        own = (f"{self.url}/", f"blob:{self.url}/")
        return [u for u in self.requests if not u.startswith(own)]


def api_result(url: str, path: Path, threshold: float, **headers: str) -> dict:
    r = httpx.post(f"{url}/segment", params={"threshold": threshold}, headers=headers, timeout=120,
                   files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 200, r.text
    return r.json()


def as_shown(result: dict) -> dict[str, object]:
    return {key: result[key] for key in SHOWN.values()}


def default_threshold(url: str, **headers: str) -> float:
    return httpx.get(f"{url}/model", headers=headers).json()["default_threshold"]


def test_a_png_shows_the_api_figures_and_the_threshold_slider_resegments(browser, url, tmp_path):
    viewer = Viewer(browser, url)
    viewer.ready()
    start = default_threshold(url)
    assert float(viewer.page.input_value("#threshold")) == start  # starts at the card's default
    viewer.upload(COVID)
    at_start = api_result(url, COVID, start)
    assert viewer.shown() == as_shown(at_start)
    assert viewer.text("#ppar") == f"{100 * at_start['ppar']:.2f} %"
    assert viewer.text("#result-model") == f"{at_start['model']['name']} {at_start['model']['version']}"
    assert viewer.page.is_visible("#view canvas#infection-layer")

    viewer.page.fill("#threshold", "0.25")
    viewer.wait_threshold("0.25")
    at_low = api_result(url, COVID, 0.25)
    assert at_low["ppar"] != at_start["ppar"]  # the image tells the thresholds apart
    assert viewer.shown() == as_shown(at_low)

    viewer.page.focus("#threshold")  # the keyboard moves it too: one step of 0.01
    viewer.page.keyboard.press("ArrowRight")
    viewer.wait_threshold("0.26")
    assert viewer.shown() == as_shown(api_result(url, COVID, 0.26))

    with viewer.page.expect_download() as download:
        viewer.page.click("text=Mask PNG")
    mask = httpx.post(f"{url}/segment", params={"threshold": 0.26, "format": "png"},
                      files={"file": (COVID.name, COVID.read_bytes())}).content
    assert Path(download.value.path()).read_bytes() == mask
    assert not viewer.page.is_visible("text=DICOM SEG")  # a PNG has no DICOM results
    assert viewer.foreign_requests() == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewer.page.screenshot(path=str(ARTIFACTS / "viewer-png-1280x800.png"))


def test_a_dicom_shows_the_api_figures_and_offers_its_dicom_results(browser, url, cxr_dicom):
    viewer = Viewer(browser, url)
    viewer.ready()
    viewer.upload(cxr_dicom)
    expected = api_result(url, cxr_dicom, default_threshold(url))
    assert viewer.shown() == as_shown(expected)
    assert viewer.page.eval_on_selector("#image-layer", "c => [c.width, c.height]") == [2048, 2048]
    for kind, sop_class in (("SEG", "1.2.840.10008.5.1.4.1.1.66.4"), ("SC", "1.2.840.10008.5.1.4.1.1.7"),
                            ("SR", "1.2.840.10008.5.1.4.1.1.88.34")):
        with viewer.page.expect_download() as download:
            viewer.page.click(f"text=DICOM {kind}")
        ds = pydicom.dcmread(download.value.path())
        assert ds.SOPClassUID == sop_class
        assert ds.StudyInstanceUID == expected["dicom"]["study_instance_uid"]
    assert viewer.foreign_requests() == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewer.page.screenshot(path=str(ARTIFACTS / "viewer-dicom-1280x800.png"))


@pytest.mark.parametrize("name, data", [("notes.txt", b"not an image, a note\n" * 20),
                                        ("cut.png", COVID.read_bytes()[:300]),
                                        ("blank.png", png_of(np.full((512, 512), 255, np.uint8))),
                                        ("turned.png", png_of(np.rot90(np.asarray(Image.open(COVID).convert("L")))))])
def test_a_bad_file_shows_the_api_message(browser, url, tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    refusal = httpx.post(f"{url}/segment", files={"file": (name, data)})
    assert 400 <= refusal.status_code < 500
    viewer = Viewer(browser, url)
    viewer.ready()
    viewer.upload(path)
    error = viewer.text("#error")
    assert refusal.json()["detail"] in error and refusal.json()["code"] in error
    assert not viewer.page.is_visible("#results")


def test_with_api_keys_the_page_works_only_once_a_key_is_entered(browser, keyed_url, cxr_dicom):
    viewer = Viewer(browser, keyed_url)
    viewer.page.wait_for_selector("#key-form:visible")
    assert viewer.page.is_disabled("#file")
    viewer.page.fill("#api-key", "wrong")
    viewer.page.click("#key-submit")
    viewer.page.wait_for_selector("#error:has-text('refused')")
    assert viewer.page.is_disabled("#file")
    viewer.page.fill("#api-key", API_KEY)
    viewer.page.click("#key-submit")
    viewer.ready()
    viewer.upload(COVID)
    headers = {"X-API-Key": API_KEY}
    assert viewer.shown() == as_shown(api_result(keyed_url, COVID, default_threshold(keyed_url, **headers), **headers))
    viewer.upload(cxr_dicom)  # over this service's 200 kB upload limit
    refusal = httpx.post(f"{keyed_url}/segment", headers=headers, files={"file": ("x.dcm", cxr_dicom.read_bytes())})
    assert refusal.status_code == 413
    assert refusal.json()["detail"] in viewer.text("#error")
    assert viewer.foreign_requests() == []


@pytest.mark.parametrize("width, height", [(1280, 800), (768, 1024)])
def test_the_page_fits_desktop_and_tablet_widths(browser, url, width, height):
    viewer = Viewer(browser, url, width, height)
    viewer.ready()
    viewer.upload(COVID)
    fits = viewer.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    box = viewer.page.locator("#image-layer").bounding_box()
    assert fits and 0 < box["width"] <= width
    assert abs(box["width"] / box["height"] - 1.0) < 0.02  # the 256x256 image keeps its aspect
    assert viewer.page.is_visible("#ppar")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewer.page.screenshot(path=str(ARTIFACTS / f"viewer-{width}x{height}.png"), full_page=True)


def test_a_file_dropped_on_the_page_is_segmented(browser, url):
    viewer = Viewer(browser, url)
    viewer.ready()
    image = fixture_images("Val", "COVID-19")[1]
    dropped = viewer.page.evaluate_handle(
        """([bytes, name]) => {
             const dt = new DataTransfer();
             dt.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
             return dt;
           }""", [list(image.read_bytes()), image.name])
    viewer.page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    viewer.wait_done()
    assert viewer.shown() == as_shown(api_result(url, image, default_threshold(url)))
