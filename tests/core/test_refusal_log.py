"""A client's bad file is one warning line in a real server's log, at the default level: its code, the route
and the request id; no ERROR (pydicom logs each decoder's failure at ERROR with its traceback), no traceback,
nothing of the file or of the patient."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests import servers
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, with_garbage_frame

COVID = fixture_images("Val", "COVID-19")[0]
SECRET = "SECRET^PATIENT"


def log_after(log: Path, start: int, requests: int, seconds: float = 30) -> str:
    """What the server logged after ``start`` bytes, once it has logged ``requests`` request lines."""
    deadline = time.time() + seconds
    while True:
        text = log.read_text()[start:]
        if text.count("POST /segment") >= requests or time.time() > deadline:
            return text
        time.sleep(0.2)


@pytest.mark.parametrize("compress", ["jpeg-baseline", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"],
                         ids=["jpeg", "jpeg-ls", "jpeg2000"])
def test_a_corrupt_compressed_dicom_and_a_cut_png_are_one_warning_each_without_traceback(tmp_path: Path, compress):
    corrupt = with_garbage_frame(make_cxr_dicom(COVID, compress=compress, patient_name=SECRET))
    cut_png = COVID.read_bytes()[:400]
    log = tmp_path / "service.log"
    with servers.service(log=log, COVIDSEG_LOG_LEVEL="info") as url:  # info: the default level
        start = len(log.read_text())
        r = httpx.post(f"{url}/segment", files={"file": ("x.dcm", corrupt, "application/dicom")}, timeout=120)
        assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom", r.text
        rid = r.headers["x-request-id"]
        png = httpx.post(f"{url}/segment", files={"file": ("x.png", cut_png, "image/png")}, timeout=120)
        assert png.status_code == 400 and png.json()["code"] == "corrupt_image", png.text
        text = log_after(log, start, requests=2)
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, text
    assert "400 corrupt_dicom" in warnings[0] and rid in warnings[0] and "/segment" in warnings[0]
    assert "400 corrupt_image" in warnings[1]
    assert " ERROR " not in text and "Traceback" not in text, text
    for leaked in ("SECRET", "libjpeg", "pixel data", "PIL", "pydicom"):  # no patient, no decoder's words
        assert leaked not in text, leaked
