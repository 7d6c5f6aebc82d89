"""The module conditions (Type 1C, 2, 2C, 3) of SEG, SC and SR, applied to what they copy from sources that
send each copied attribute absent, empty or filled, all checked by dciodvfy (dicom3tools): no Error line.

One model run on the fixture X-ray is shared: the sources differ from it only in their attributes, so
its Segmentation applies to each, and each result is made by the service's own output step
(:func:`app.engine.results.dicom_of`, which the routes and the node call) from the source as the
real reader loads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from app.engine.results import dicom_of
from app.pipeline.dicom.common import KINDS, ModelRef, ResultOptions
from app.pipeline.dicom.read import load_dicom_bytes
from app.pipeline.dicom.source import METHOD_NOT_RECORDED
from app.pipeline.errors import PipelineError
from app.pipeline.postprocess import Segmentation
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.dicom_validate import iod_errors

COVID = fixture_images("Val", "COVID-19")[0]
MAX_PIXELS = 10 ** 8


def item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


#: Each attribute the writers copy from the source (themselves or through highdicom's copy of the
#: Patient and Study modules) or derive from it, with a conformant value for the "filled" state.
FILLED = {
    # Patient
    "PatientName": "DOE^JANE", "PatientID": "PID-0001", "IssuerOfPatientID": "HOSP",
    "IssuerOfPatientIDQualifiersSequence": [item(UniversalEntityID="1.2.3", UniversalEntityIDType="ISO")],
    "PatientBirthDate": "19610203", "PatientBirthTime": "101010", "PatientSex": "F",
    "OtherPatientIDsSequence": [item(PatientID="X1", IssuerOfPatientID="OTHER", TypeOfPatientID="TEXT")],
    "OtherPatientNames": "SMITH^JANE", "EthnicGroup": "W", "PatientComments": "none",
    "PatientIdentityRemoved": "NO", "DeidentificationMethod": "manual",
    "DeidentificationMethodCodeSequence": [code("113100", "DCM", "Basic Application Confidentiality Profile")],
    # animal patients (1C/2C companions the source does not have)
    "PatientSpeciesDescription": "dog", "PatientBreedDescription": "labrador", "ResponsiblePerson": "OWNER^A",
    "PatientSexNeutered": "ALTERED",
    # General Study, Patient Study
    "StudyDate": "20260101", "StudyTime": "120000", "StudyID": "1", "AccessionNumber": "ACC1",
    "IssuerOfAccessionNumberSequence": [item(LocalNamespaceEntityID="RIS")], "ReferringPhysicianName": "WHO^DR",
    "StudyDescription": "XR CHEST PA", "ProcedureCodeSequence": [code("36643-5", "LN", "XR Chest 2 Views")],
    "PatientAge": "065Y", "PatientSize": "1.7", "PatientWeight": "70",
    # General Series, General Image, General Equipment, Frame of Reference, SOP Common
    "BodyPartExamined": "CHEST", "Laterality": "L", "ImageLaterality": "U", "ViewPosition": "PA",
    "PatientOrientation": ["P", "FL"], "InstanceNumber": "3", "PixelSpacing": [0.2, 0.2],
    "ImagerPixelSpacing": [0.2, 0.2], "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.1",
    "Manufacturer": "ACME", "InstitutionName": "General Hospital", "SpecificCharacterSet": "ISO_IR 100",
}
#: Filled only under their condition: the de-identification method is asked for by YES.
CONDITION = {"DeidentificationMethod": {"PatientIdentityRemoved": "YES"},
             "DeidentificationMethodCodeSequence": {"PatientIdentityRemoved": "YES"}}


def empty_of(value):
    return [] if isinstance(value, list) and value and isinstance(value[0], Dataset) else ""


def variant(base: pydicom.Dataset, changes: dict) -> bytes:
    """``base`` with each keyword set to its value (``None``: removed), as Part 10 bytes."""
    import io

    ds = pydicom.Dataset()
    for element in base:
        ds.add(element)
    ds.file_meta = base.file_meta
    for keyword, value in changes.items():
        if keyword in ds:  # removed, not set: setting would change the element ``base`` shares
            delattr(ds, keyword)
        if value is not None:
            setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Shared:
    base: pydicom.Dataset
    seg: Segmentation
    model: ModelRef

    def results(self, changes: dict) -> dict[str, pydicom.Dataset]:
        loaded = load_dicom_bytes(variant(self.base, changes), MAX_PIXELS)
        return {kind: read(dicom_of(kind, self.seg, loaded, self.model, ResultOptions())) for kind in KINDS}


@pytest.fixture(scope="module")
def shared(service_client) -> Shared:
    _, service = service_client
    data = make_cxr_dicom(COVID, full_patient=True)  # an ordinary CR: CHEST, PA, L\F, no laterality
    loaded = load_dicom_bytes(data, MAX_PIXELS)
    seg = service.engine.segment([loaded], 0.4)[0]
    assert seg.infection_pixels > 0
    return Shared(read(data), seg, service.model_ref())


def errors_of(results: dict[str, pydicom.Dataset], tmp_path: Path) -> dict[str, list[str]]:
    found = {}
    for kind, ds in results.items():
        path = tmp_path / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        found[kind] = iod_errors(path)
    return found


def no_errors(results: dict[str, pydicom.Dataset], tmp_path: Path) -> None:
    errors = errors_of(results, tmp_path)
    assert errors == {kind: [] for kind in results}


@pytest.mark.parametrize("keyword", list(FILLED))
def test_every_copied_attribute_absent_empty_or_filled_passes_dciodvfy(shared: Shared, keyword: str, tmp_path: Path):
    for state, value in (("absent", None), ("empty", empty_of(FILLED[keyword])), ("filled", FILLED[keyword])):
        errors = errors_of(shared.results({**CONDITION.get(keyword, {}), keyword: value}), tmp_path)
        assert errors == {kind: [] for kind in KINDS}, state


def test_ordinary_chest_cr_gives_a_capture_without_laterality(shared: Shared, tmp_path: Path):
    """The reported failure: the chest is unpaired, so General Series has no Laterality (Type 2C),
    whatever the source sends; the fixture's own source (CHEST, no laterality) was enough."""
    for laterality in (None, "", "L"):
        results = shared.results({"Laterality": laterality})
        assert "Laterality" not in results["sc"]
        assert results["sc"].BodyPartExamined == "CHEST"
        no_errors(results, tmp_path)


@pytest.mark.parametrize("body_part", ["CHEST", "LUNG", "THORAX", "", None])
@pytest.mark.parametrize("laterality", [None, "", "R"])
@pytest.mark.parametrize("image_laterality", [None, "U", "X"])
def test_capture_laterality_follows_body_part_and_image_laterality(shared: Shared, tmp_path: Path, body_part,
                                                                   laterality, image_laterality):
    results = shared.results({"BodyPartExamined": body_part, "Laterality": laterality,
                              "ImageLaterality": image_laterality})
    sc = results["sc"]
    has_image_laterality = image_laterality == "U"  # an unenumerated value is not copied
    assert ("ImageLaterality" in sc) == has_image_laterality
    if has_image_laterality or body_part == "CHEST":
        assert "Laterality" not in sc
    else:  # a paired (LUNG) or unknown body part: the source's R or L, else empty (unknown)
        assert sc.Laterality == ("R" if laterality == "R" else "")
    assert "Laterality" not in results["seg"]
    no_errors(results, tmp_path)


def test_type_2_attributes_the_source_lacks_are_written_empty(shared: Shared, tmp_path: Path):
    missing = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
               "AccessionNumber", "ReferringPhysicianName")
    results = shared.results(dict.fromkeys(missing))
    for kind, ds in results.items():
        assert all(k in ds and ds[k].is_empty for k in missing), kind
    no_errors(results, tmp_path)


def test_identity_removed_without_a_method_says_so(shared: Shared, tmp_path: Path):
    results = shared.results({"PatientIdentityRemoved": "YES", "DeidentificationMethod": "",
                              "DeidentificationMethodCodeSequence": []})
    for ds in results.values():
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == METHOD_NOT_RECORDED
    no_errors(results, tmp_path)
    coded = shared.results({"PatientIdentityRemoved": "YES", **{k: FILLED[k] for k in CONDITION}})
    for ds in coded.values():  # both methods copied as they are
        assert ds.DeidentificationMethod == "manual"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_patient_orientation_is_the_sources_or_empty(shared: Shared, tmp_path: Path):
    for given, written in ((["P", "FL"], ["P", "FL"]), (["L", "F"], ["L", "F"]), ("L", ""), ("", ""), (None, "")):
        results = shared.results({"PatientOrientation": given})
        for kind in ("seg", "sc"):
            value = results[kind].PatientOrientation
            assert (list(value) if isinstance(value, pydicom.multival.MultiValue) else value) == written, (kind, given)
        no_errors(results, tmp_path)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_sources_without_the_uids_results_reference_are_refused(shared: Shared, keyword: str, service_client):
    loaded = load_dicom_bytes(variant(shared.base, {keyword: ""}), MAX_PIXELS)
    with pytest.raises(PipelineError) as err:
        dicom_of("sc", shared.seg, loaded, shared.model, ResultOptions())
    assert err.value.code == "incomplete_dicom" and keyword in err.value.message
    r = service_client[0].post("/segment?format=dicom-seg",
                               files={"file": ("x.dcm", variant(shared.base, {keyword: None}), "application/dicom")})
    assert r.status_code == 422 and r.json()["code"] == "incomplete_dicom", r.text
    assert keyword in r.json()["detail"]


def test_a_writers_refusal_is_incomplete_dicom_without_the_values_it_quotes(shared: Shared, monkeypatch):
    """highdicom's and pydicom's messages quote the source's values ("could not convert string to float: 'a'",
    a name...): the refusal names the kind of problem, never the value (issue 29, point 9)."""
    import app.engine.results as results

    def refuses(*args, **kwargs):
        raise ValueError("could not convert string to float: 'SMITH^JOHN'")

    monkeypatch.setattr(results, "write_result", refuses)
    loaded = load_dicom_bytes(variant(shared.base, {}), MAX_PIXELS)
    with pytest.raises(PipelineError) as err:
        dicom_of("sr", shared.seg, loaded, shared.model, ResultOptions())
    assert err.value.code == "incomplete_dicom" and "dicom-sr" in err.value.message
    assert "SMITH" not in err.value.message and "ValueError" in err.value.message
