"""DICOM results (SEG, SC, SR) of realistic modality files, through the real app on the shipped model,
checked by the standard validators (dicom3tools) and read back with highdicom."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from tests import servers
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.dicom_validate import entity_problems, iod_errors

COVID = fixture_images("Val", "COVID-19")[0]
FORMATS = ("dicom-seg", "dicom-sc", "dicom-sr")
CASES = {
    # a CR plate reader: 2048 px, 12-bit, MONOCHROME1, calibrated PixelSpacing, RIS-fed patient attributes
    "cr-2048-mono1": dict(modality="CR", photometric="MONOCHROME1", size=2048, bits=12, pixel_spacing=0.139,
                          full_patient=True),
    # a flat-panel DX: 14-bit JPEG-LS, ImagerPixelSpacing only, no PatientOrientation, no BodyPartExamined
    "dx-2048-jpegls": dict(modality="DX", size=2048, bits=14, imager_pixel_spacing=0.148, compress=JPEGLSLossless,
                           orientation=None, body_part=None, full_patient=True),
    # 16-bit JPEG 2000 with both spacings and an image laterality
    "dx-1024-j2k": dict(modality="DX", size=1024, bits=16, pixel_spacing=0.2, imager_pixel_spacing=0.2,
                        compress=JPEG2000Lossless, laterality="U"),
    # the dataset's own size, RLE, no spacing at all, no view
    "cr-256-rle": dict(modality="CR", compress=RLELossless, view=None),
}


@dataclass
class Outputs:
    source: bytes
    results: dict[str, bytes]
    json: dict
    mask: np.ndarray
    lung: np.ndarray


def post(client, data: bytes, params: str) -> object:
    r = client.post(f"/segment?{params}", files={"file": ("x.dcm", data, "application/dicom")})
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def outputs(request, service_client) -> Outputs:
    client, _ = service_client
    data = make_cxr_dicom(COVID, **CASES[request.param])
    results = {fmt: post(client, data, f"format={fmt}&threshold=0.4").content for fmt in FORMATS}
    mask = np.asarray(Image.open(io.BytesIO(post(client, data, "format=png&threshold=0.4").content))) > 0
    lung = np.asarray(Image.open(io.BytesIO(post(client, data, "format=png&output=lung").content))) > 0
    return Outputs(data, results, post(client, data, "threshold=0.4").json(), mask, lung)


def test_every_result_passes_dciodvfy(outputs: Outputs, tmp_path: Path):
    for fmt, data in outputs.results.items():
        path = tmp_path / f"{fmt}.dcm"
        path.write_bytes(data)
        assert iod_errors(path) == [], fmt


def test_patient_and_study_agree_across_source_and_results(outputs: Outputs, tmp_path: Path):
    paths = []
    for name, data in {"source": outputs.source, **outputs.results}.items():
        paths.append(tmp_path / f"{name}.dcm")
        paths[-1].write_bytes(data)
    # dicom3tools files AccessionNumber under the Series IE for SR documents and under Study for images;
    # that is its model of the IODs, not a disagreement of values, so it is the one line let through.
    problems = [p for p in entity_problems(paths) if "Different information entities for attribute" not in p]
    assert problems == []
    src = read(outputs.source)
    for data in outputs.results.values():
        ds = read(data)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                        "IssuerOfPatientID", "PatientAge", "StudyDescription"):
            assert ds.get(keyword) == src.get(keyword), keyword


def test_seg_reads_back_and_equals_the_png_masks(outputs: Outputs):
    seg = hd.seg.segread(io.BytesIO(outputs.results["dicom-seg"]))
    src = read(outputs.source)
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    infection = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    lung = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[2])[0, :, :, 0]
    assert infection.shape == (src.Rows, src.Columns)
    assert np.array_equal(infection.astype(bool), outputs.mask) and outputs.mask.any()
    assert np.array_equal(lung.astype(bool), outputs.lung)


def test_sr_reads_back_with_the_json_figures(outputs: Outputs):
    sr = hd.sr.srread(io.BytesIO(outputs.results["dicom-sr"]))
    seg = read(outputs.results["dicom-seg"])
    infection, lung = sr.content.get_planar_roi_measurement_groups()
    values = {m.name.meaning: float(m.value) for m in infection.get_measurements()}
    body = outputs.json
    assert values["Predicted positive area ratio"] == pytest.approx(100 * body["ppar"], abs=1e-3)
    assert values["Infected share of lung field"] == pytest.approx(100 * body["infected_lung_share"], abs=1e-3)
    severity = infection.get_qualitative_evaluations()[0].value.meaning.split()[0].lower()
    assert severity == body["severity"]
    area = next(m for m in infection.get_measurements() if m.name.meaning == "Area")
    spacing = read(outputs.source).get("PixelSpacing") or read(outputs.source).get("ImagerPixelSpacing")
    expected = body["infection_pixels"] * (float(spacing[0]) * float(spacing[1]) if spacing else 1.0)
    assert float(area.value) == pytest.approx(expected, rel=1e-4)
    assert area.unit.value == ("mm2" if spacing else "{pixels}")
    for group, frame in ((infection, 1), (lung, 2)):
        ref = group.referenced_segmentation_frame[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and int(ref.ReferencedFrameNumber) == frame
    text = str(read(outputs.results["dicom-sr"]))  # the algorithm identification items
    assert "Algorithm Parameters" in text and "threshold=0.4" in text
    rule = body["region_peak_threshold"]  # the card's region rule is part of the decision, so it is named too
    texts = {e.value for e in read(outputs.results["dicom-sr"]).iterall() if e.keyword == "TextValue"}
    assert rule > 0.4 and f"region_peak_threshold={rule:g}" in texts
    params = read(outputs.results["dicom-seg"]).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert f"region_peak_threshold={rule:g}" in params.AlgorithmParameters


def test_results_carry_series_identity(outputs: Outputs, service_client):
    _, service = service_client
    info = service.model.info
    numbers = set()
    for fmt, data in outputs.results.items():
        ds = read(data)
        assert ds.SeriesDescription.startswith(f"{info.name} {info.version}")
        assert len(ds.SeriesDate) == 8 and len(ds.SeriesTime) >= 6
        assert ds.Manufacturer == "covidseg" and info.version in ds.SoftwareVersions
        assert ds.SeriesInstanceUID != read(outputs.source).SeriesInstanceUID
        numbers.add(int(ds.SeriesNumber))
    assert numbers == {9901, 9902, 9903}


def test_same_request_gives_the_same_uids_and_another_threshold_new_ones(service_client):
    client, _ = service_client
    data = make_cxr_dicom(COVID)
    first = read(post(client, data, "format=dicom-seg&threshold=0.5").content)
    again = read(post(client, data, "format=dicom-seg&threshold=0.5").content)
    other = read(post(client, data, "format=dicom-seg&threshold=0.3").content)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert other.SOPInstanceUID != first.SOPInstanceUID
    sr = read(post(client, data, "format=dicom-sr&threshold=0.5").content)
    assert first.SOPInstanceUID in str(sr.CurrentRequestedProcedureEvidenceSequence)


def test_series_numbers_are_settings():
    from tests.conftest import make_client

    with make_client(seg_series_number=42, sr_series_number=43, institution_name="General Hospital") as client:
        data = make_cxr_dicom(COVID)
        seg = read(post(client, data, "format=dicom-seg").content)
        sr = read(post(client, data, "format=dicom-sr").content)
    assert (int(seg.SeriesNumber), int(sr.SeriesNumber)) == (42, 43)
    assert seg.InstitutionName == "General Hospital"


NON_CONFORMANT = {"StudyDate": "2026-01-01", "StudyTime": "12:00", "PatientBirthDate": "19XX0101",
                  "PatientSex": "Female"}  # as some modalities write them


def test_non_conformant_source_values_are_written_empty_not_refused(service_client, tmp_path: Path):
    ds = read(make_cxr_dicom(COVID, "DX", size=1024, full_patient=True))
    for keyword, value in NON_CONFORMANT.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    for fmt in FORMATS:
        content = post(service_client[0], buf.getvalue(), f"format={fmt}").content
        result = read(content)
        assert all(result.get(k) == "" for k in NON_CONFORMANT), fmt  # Type 2: present, empty
        assert (result.PatientName, result.PatientID, result.StudyInstanceUID) == (
            ds.PatientName, ds.PatientID, ds.StudyInstanceUID)  # still filed under the same patient and study
        path = tmp_path / f"{fmt}.dcm"
        path.write_bytes(content)
        assert iod_errors(path) == [], fmt


def test_library_warnings_about_odd_values_do_not_reach_the_log(tmp_path: Path):
    """pydicom warns with the value of an invalid UID, highdicom with a one-component patient name:
    the service's whole output (log lines and stderr) stays free of both."""
    ds = read(make_cxr_dicom(COVID, patient_name="SECRETNAME", patient_id="SECRET-ID"))
    ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.826.0.SECRETUID", "1.2.826.0.SECRETSTUDY"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    log = tmp_path / "service.log"
    with servers.service(log=log, COVIDSEG_LOG_LEVEL="info") as url:
        for fmt in FORMATS:
            r = httpx.post(f"{url}/segment?format={fmt}", files={"file": ("x.dcm", buf.getvalue())}, timeout=120)
            assert r.status_code == 200, r.text
    text = log.read_text()
    assert "POST /segment 200" in text  # the log was written
    assert "SECRET" not in text


def test_no_identifiers_in_logs_while_writing(service_client, caplog):
    client, _ = service_client
    data = make_cxr_dicom(COVID, patient_name="SECRET^NAME", patient_id="SECRET-ID")
    src = read(data)
    with caplog.at_level(logging.INFO):
        for fmt in FORMATS:
            post(client, data, f"format={fmt}")
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("SECRET", str(src.SOPInstanceUID), str(src.StudyInstanceUID), str(src.SeriesInstanceUID)):
        assert secret not in text
