"""DICOM result identity against a real server (``python -m app``, issue 29 point 4): a result's UIDs name
everything that changes its content, TTA included, and one threshold value is one result whatever its text."""

from __future__ import annotations

import io

import httpx
import pydicom
import pytest

from app.pipeline.dicom.multipart import multipart_parts
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom
from tests.servers import service

SOURCE = make_cxr_dicom(fixture_images("Val", "COVID-19")[0], "CR", size=512)


@pytest.fixture(scope="module")
def url() -> str:
    with service() as found:
        yield found


def results(url: str, **params: str) -> list[pydicom.Dataset]:
    r = httpx.post(f"{url}/segment", params={"format": "dicom", "outputs": "seg,sc,sr", **params},
                   files={"file": ("x.dcm", SOURCE)}, timeout=120)
    assert r.status_code == 200, r.text
    return [pydicom.dcmread(io.BytesIO(p)) for p in multipart_parts(r.content, r.headers["content-type"])]


def uids(found: list[pydicom.Dataset]) -> list[tuple[str, str]]:
    return [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in found]


def test_results_with_and_without_tta_are_other_instances_in_other_series(url: str):
    plain, flipped = results(url, tta="none"), results(url, tta="flip")
    assert plain[0].PixelData != flipped[0].PixelData  # other masks
    for a, b in zip(uids(plain), uids(flipped)):
        assert a[0] != b[0] and a[1] != b[1]
    assert uids(results(url, tta="flip")) == uids(flipped)  # and the same again


@pytest.mark.parametrize("same", [("0", "-0"), ("0.25", "0.250"), ("0.5", "5e-1")])
def test_one_threshold_value_is_one_result_whatever_its_text(url: str, same: tuple[str, str]):
    a, b = (results(url, threshold=t) for t in same)
    assert uids(a) == uids(b)
    assert [ds.to_json() for ds in a] == [ds.to_json() for ds in b]  # the same objects
