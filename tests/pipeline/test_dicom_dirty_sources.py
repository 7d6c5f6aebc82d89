"""Results clean from dirty sources (issue 27, section 3), through the real service (``python -m app``).

A generated matrix: every attribute the results copy from a source (the Patient and Study modules that
highdicom copies, :data:`~app.pipeline.dicom.common.PATIENT_STUDY_KEYWORDS`, what the writers take
themselves, the items of the copied sequences) x four faults (a bad character, too long, the wrong
form, non-ASCII without a SpecificCharacterSet). Each dirty source, a 256 px chest X-ray from the
fixtures that is otherwise complete and valid (:func:`full_source`), goes through ``POST /segment?
format=dicom&outputs=seg,sc,sr``; its SEG, SC and SR must pass ``dciodvfy`` without an Error, hold
the dirty value nowhere, still reference the source's UIDs, and keep a Type 2 attribute present (empty).

A fault that does not apply to a VR is a skipped case with the reason (:func:`fault_values`): free
text (LT, ST, UT, UC, UR) has no wrong form, VRs without a length limit (UT, UC, UR) cannot be too
long, a multi-valued attribute (VM 1-n) takes any number of values, numbers stored in binary (US, FD)
have no characters. The source's own UIDs (Study, Series, SOP Instance, SOP Class) are not in the
matrix: references quote them as they are (:func:`test_references_quote_the_sources_uids_as_they_are`).
"""

from __future__ import annotations

import functools
import io
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from highdicom._standard_utils import get_module_attribute_map  # the tables highdicom copies by
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from app.pipeline.dicom.common import PATIENT_STUDY_KEYWORDS
from app.pipeline.dicom.multipart import multipart_parts
from app.pipeline.dicom.source import ANIMAL_PATIENT, REQUIRED_UIDS, SPECIMEN, TYPE2_PATIENT_STUDY
from app.pipeline.dicom.values import ENUMERATED, texts
from tests import servers
from tests.conftest import fixture_images
from tests.dicom_dirty import CODECS, part10, set_raw, shallow_copy
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.dicom_validate import iod_errors

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")  # on the dirty values, on purpose
COVID = fixture_images("Val", "COVID-19")[0]
RESULTS = ("seg", "sc", "sr")
QUERY = "format=dicom&outputs=seg,sc,sr&selection=ignore"  # a dirty BodyPartExamined is not a reason to refuse

#: The modules of the Patient and Study entities that highdicom copies into the SEG and the SR, by its
#: own tables (so an attribute it starts copying joins the matrix).
COPIED_MODULES = ("patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study")
#: What the writers take from the source themselves: the SC's hanging attributes (and the Laterality that
#: follows from them), the SEG's and SC's PatientOrientation, the InstanceNumber, the dates and times a
#: result's SeriesDate/ContentDate come from, the acquisition equipment highdicom puts in the
#: ContributingEquipmentSequence, the SEG's lossy compression, the spacing the SR measures in mm².
WRITERS_COPY = ("BodyPartExamined", "ImageLaterality", "ViewPosition", "Laterality", "PatientOrientation",
                "InstanceNumber", "ContentDate", "ContentTime", "AcquisitionDate", "AcquisitionTime", "SeriesDate",
                "SeriesTime", "AcquisitionDateTime", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
                "DeviceSerialNumber", "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress",
                "StationName", "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
                "PixelSpacing", "ImagerPixelSpacing")


def copied_attributes() -> list[str]:
    """Every attribute a result copies from its source, but the UIDs references quote and what is never
    copied (animal patients, specimens)."""
    tables = get_module_attribute_map()
    found = [a["keyword"] for module in COPIED_MODULES for a in tables[module] if not a["path"]]
    never = {*REQUIRED_UIDS, *ANIMAL_PATIENT, *SPECIMEN}
    return list(dict.fromkeys(k for k in (*found, *PATIENT_STUDY_KEYWORDS, *WRITERS_COPY) if k not in never))


# ---------------------------------------------------------------- a complete, valid source


def item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def code(value: str = "113100", scheme: str = "DCM", meaning: str = "Basic Application Confidentiality Profile"):
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def reference() -> Dataset:
    return item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID="1.2.826.0.1.3680043.8.498.7")


#: One valid item of each copied sequence, and the keyword of the text attribute in it that the
#: matrix makes dirty (most items' attributes are Type 1 in their macro: the whole item goes).
SEQUENCE_ITEMS: dict[str, tuple[Callable[[], Dataset], str]] = {
    "ReferencedPatientSequence": (reference, "ReferencedSOPInstanceUID"),
    "ReferencedStudySequence": (reference, "ReferencedSOPInstanceUID"),
    "IssuerOfPatientIDQualifiersSequence": (lambda: item(UniversalEntityID="1.2.3", UniversalEntityIDType="ISO"),
                                            "UniversalEntityIDType"),
    "OtherPatientIDsSequence": (lambda: item(PatientID="X1", IssuerOfPatientID="OTHER", TypeOfPatientID="TEXT"),
                                "PatientID"),
    "SourcePatientGroupIdentificationSequence": (lambda: item(PatientID="G1"), "PatientID"),
    "GroupOfPatientsIdentificationSequence": (lambda: item(PatientID="G2"), "PatientID"),
    "GeneticModificationsSequence": (lambda: item(GeneticModificationsDescription="none",
                                                  GeneticModificationsNomenclature="HGNC"),
                                     "GeneticModificationsNomenclature"),
    # dciodvfy asks for an HL7InstanceIdentifier in this macro's reference (a condition it reads its own way)
    "ReferencedPatientPhotoSequence": (lambda: item(
        StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.5", TypeOfInstances="DICOM",
        ReferencedSOPSequence=[item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.7",
                                    ReferencedSOPInstanceUID="1.2.3.6", HL7InstanceIdentifier="1.2.3.6")],
        DICOMRetrievalSequence=[item(RetrieveAETitle="PACS")]), "TypeOfInstances"),
    "OtherClinicalTrialProtocolIDsSequence": (lambda: item(ClinicalTrialProtocolID="P2",
                                                           IssuerOfClinicalTrialProtocolID="SPONSOR"),
                                              "ClinicalTrialProtocolID"),
    "ConsentForClinicalTrialUseSequence": (lambda: item(ConsentForDistributionFlag="YES", ClinicalTrialProtocolID="P1",
                                                        DistributionType="NAMED_PROTOCOL"), "DistributionType"),
}
#: By suffix: the Code Sequence macro, the HL7v2 Hierarchic Designator (issuers), Person Identification.
SEQUENCE_KINDS: dict[str, tuple[Callable[[], Dataset], str]] = {
    "CodeSequence": (code, "CodeMeaning"),
    "IDSequence": (lambda: item(LocalNamespaceEntityID="RIS"), "LocalNamespaceEntityID"),
    "NumberSequence": (lambda: item(LocalNamespaceEntityID="RIS"), "LocalNamespaceEntityID"),
    "IdentificationSequence": (lambda: item(PersonIdentificationCodeSequence=[code("D1", "99LOCAL", "Dr One")],
                                            InstitutionName="General Hospital"), "InstitutionName"),
}


def sequence_item(keyword: str) -> tuple[Callable[[], Dataset], str]:
    if keyword in SEQUENCE_ITEMS:
        return SEQUENCE_ITEMS[keyword]
    return next(kind for suffix, kind in SEQUENCE_KINDS.items() if keyword.endswith(suffix))


#: Values a VR's generic one will not do for (enumerated, Defined Terms the results read, companions).
VALUES = {"BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientOrientation": ["P", "FL"],
          "ImageLaterality": "U", "Laterality": "L", "PatientSex": "F", "PatientAge": "042Y", "PatientName": "DOE^JANE",
          "LossyImageCompression": "01", "LossyImageCompressionMethod": "ISO_10918_1", "PregnancyStatus": 4,
          "LongitudinalTemporalOffsetFromEvent": 1.5, "PatientIdentityRemoved": "NO", "InstanceNumber": "3",
          "PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.2, 0.2], "PatientAlternativeCalendar": "I",
          "PatientBirthDateInAlternativeCalendar": "14000101", "PatientDeathDateInAlternativeCalendar": "14500101",
          "TypeOfPatientID": "TEXT"}
BY_VR = {"AE": "AE1", "AS": "042Y", "CS": "CODE1", "DA": "20200102", "DS": "1.25", "DT": "20200102101112",
         "IS": "7", "LO": "long string", "LT": "long text", "PN": "WHO^DR", "SH": "short", "ST": "short text",
         "TM": "101112", "UC": "unlimited", "UI": "1.2.3.4", "UR": "http://example.com/x", "UT": "unlimited text"}


def valid_value(keyword: str):
    if keyword in VALUES:
        return VALUES[keyword]
    if keyword in ENUMERATED:
        return sorted(ENUMERATED[keyword])[0]
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        make, _ = sequence_item(keyword)
        return [make()]
    return BY_VR[vr]


#: Standard attributes newer than the data dictionary of the dciodvfy the tests run (dicom3tools of
#: 2022-06, Debian's), which reports each as "not a recognized standard attribute", an Error. The
#: results copy them (Type 3, valid); the full source leaves them out, each dirty case puts its own in.
NEWER_THAN_DCIODVFY = ("EthnicGroupCodeSequence", "IssuerOfClinicalTrialProtocolID",
                       "OtherClinicalTrialProtocolIDsSequence", "IssuerOfClinicalTrialSiteID",
                       "IssuerOfClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectReadingID",
                       "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID")


def with_valid(ds: pydicom.Dataset, keywords) -> pydicom.Dataset:
    for keyword in keywords:
        setattr(ds, keyword, valid_value(keyword))
    return ds


@functools.cache
def full_source() -> bytes:
    """The fixture X-ray with every copied attribute filled with a valid value, but those dciodvfy does
    not know (the SC then has BodyPartExamined CHEST and ImageLaterality U, so no Laterality)."""
    ds = read(make_cxr_dicom(COVID, size=256, full_patient=True))
    return part10(with_valid(ds, [k for k in copied_attributes() if k not in NEWER_THAN_DCIODVFY]))


# ---------------------------------------------------------------- faults


def _multi_valued(keyword: str) -> bool:
    return dictionary_VM(keyword).endswith("n")


def _too_long(vr: str) -> str | None:
    limits = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240, "PN": 64,
              "SH": 16, "ST": 1024, "TM": 14, "UI": 64}
    if vr not in limits:
        return None
    digits = {"DA": "2", "DS": "1", "IS": "1", "TM": "1", "DT": "2", "AS": "0"}
    if vr == "UI":
        return "1." + "2" * (limits[vr] - 1)
    if vr == "AS":
        return "0042Y"
    return digits.get(vr, "A") * (limits[vr] + 1)


#: The wrong form of a value, by VR (text VRs: one value more than the attribute takes).
WRONG_FORM = {"DA": "2020.01.02", "TM": "10:11:12", "DT": "2020-01-02T10:11:12", "AS": "42", "DS": "1,25",
              "IS": "7.5", "UI": "1.02.3", "PN": "A^B^C^D^E^F"}
BAD_CHARACTER = {"DA": "2020O102", "TM": "10111x", "DT": "20200102x", "AS": "04#Y", "DS": "1.2x", "IS": "7x",
                 "UI": "1.2.3.x", "CS": "A-B", "UR": "http://example.com/a b", "LT": "tab\there"}
NON_ASCII = {"DA": "2020é102", "TM": "10111é", "DT": "2020010é", "AS": "042é", "DS": "1.2é", "IS": "7é",
             "UI": "1.2.é", "PN": "DÖE^JANE", "UR": "http://example.com/é"}


FREE_TEXT = ("LT", "ST", "UT", "UC", "UR")


def _wrong_form(keyword: str, vr: str) -> str | pytest.MarkDecorator:
    """Not among the enumerated values, the VR's wrong form, or one value more than the attribute takes."""
    if keyword in ENUMERATED and vr == "CS":
        return "ZZ"
    if vr in WRONG_FORM:
        return WRONG_FORM[vr]
    if vr in FREE_TEXT:
        return pytest.mark.skip(reason=f"{vr} is free text: every character it allows is in its form")
    if _multi_valued(keyword):
        return pytest.mark.skip(reason=f"VM {dictionary_VM(keyword)}: one more {vr} value is not a wrong form")
    values = 3 if dictionary_VM(keyword) == "2" else 2
    return "\\".join(["DIRTY" if vr != "CS" else "A"] * values)


def fault_values(keyword: str, vr: str) -> dict[str, str | int | pytest.MarkDecorator]:
    """Each fault's dirty value for ``keyword`` of ``vr``, or a skip saying why it does not apply."""
    if vr in ("US", "FD", "FL", "SS", "UL", "SL"):
        binary = pytest.mark.skip(reason=f"{vr} is stored in binary: no characters, no length, no text form")
        wrong = 9 if keyword in ENUMERATED else binary
        return {"bad_character": binary, "too_long": binary, "non_ascii": binary, "wrong_form": wrong}
    long_value = _too_long(vr)
    return {
        "bad_character": BAD_CHARACTER.get(vr, "DIRTY\x01VALUE"),
        "too_long": long_value if long_value else pytest.mark.skip(reason=f"{vr} has no length limit to exceed"),
        "wrong_form": _wrong_form(keyword, vr),
        "non_ascii": NON_ASCII.get(vr, "DIRTY é VALUE"),
    }


def matrix() -> Iterator:
    for keyword in copied_attributes():
        target, vr = keyword, dictionary_VR(keyword)
        if vr == "SQ":
            target = sequence_item(keyword)[1]
            vr = dictionary_VR(target)
        for fault, value in fault_values(target, vr).items():
            marks = [value] if isinstance(value, pytest.MarkDecorator) else []
            yield pytest.param(keyword, fault, None if marks else value, marks=marks, id=f"{keyword}-{fault}")


#: What each attribute's case needs besides the full source: Laterality is written only for a body
#: part that may be paired and without ImageLaterality.
CONTEXT = {"Laterality": {"BodyPartExamined": None, "ImageLaterality": None}}


def dirty_source(keyword: str, value: str | int) -> bytes:
    ds = shallow_copy(read(full_source()))
    for other, context_value in CONTEXT.get(keyword, {}).items():
        set_raw(ds, other, context_value)
    if dictionary_VR(keyword) == "SQ":
        make, target = sequence_item(keyword)
        dirty_item = make()
        set_raw(dirty_item, target, value)
        setattr(ds, keyword, Sequence([dirty_item]))
    elif isinstance(value, str):
        set_raw(ds, keyword, value)
    else:
        setattr(ds, keyword, int(value))  # a binary number out of its enumerated values
    return part10(ds)


# ---------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def service_url(tmp_path_factory) -> Iterator[str]:
    with servers.service(log=tmp_path_factory.mktemp("service") / "service.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=120) as http:
        yield http


@dataclass
class Answer:
    """The service's answer to one source: its results (without pixel data) and dciodvfy's Error lines."""

    status: int
    text: str
    results: dict[str, pydicom.Dataset] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)


def answer_of(client: httpx.Client, data: bytes, folder: Path) -> Answer:
    r = client.post(f"/segment?{QUERY}", files={"file": ("x.dcm", data, "application/dicom")})
    if r.status_code != 200:
        return Answer(r.status_code, r.text)
    answer = Answer(r.status_code, "")
    for kind, part in zip(RESULTS, multipart_parts(r.content, r.headers["content-type"]), strict=True):
        path = folder / f"{uuid.uuid4().hex}-{kind}.dcm"
        path.write_bytes(part)
        answer.errors[kind] = iod_errors(path)
        path.unlink()
        answer.results[kind] = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
    return answer


def results_of(client: httpx.Client, data: bytes, folder: Path) -> Answer:
    answer = answer_of(client, data, folder)
    assert answer.status == 200, answer.text
    return answer


@pytest.fixture(scope="module")
def matrix_answers(request, client: httpx.Client, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The selected matrix cases sent to the service two at a time, in the order the tests check them,
    ahead of them: the service has two cores, and each answer's checks overlap the next's model run."""
    folder = tmp_path_factory.mktemp("dirty")
    cases = [item.callspec for item in request.session.items
             if item.originalname == "test_a_dirty_value_is_not_copied" and item.callspec.params["value"] is not None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c.id: pool.submit(lambda p: answer_of(client, dirty_source(p["keyword"], p["value"]), folder),
                                     c.params) for c in cases}
        yield futures
        for future in futures.values():
            future.cancel()


def holding(ds: pydicom.Dataset, value: str) -> list[str]:
    """The attributes of ``ds``, at any depth, whose value is ``value`` as written."""
    return [e.keyword for e in ds.iterall() if e.VR != "SQ" and not e.is_empty and "\\".join(texts(e.value)) == value]


def assert_references(results: dict[str, pydicom.Dataset], source: pydicom.Dataset) -> None:
    study, series, sop = (str(source[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    for kind, ds in results.items():
        assert ds.StudyInstanceUID == study, kind
    for kind in ("seg", "sc"):
        assert results[kind].SourceImageSequence[0].ReferencedSOPInstanceUID == sop, kind
    assert results["seg"].ReferencedSeriesSequence[0].SeriesInstanceUID == series
    evidence = results["sr"].CurrentRequestedProcedureEvidenceSequence
    quoted = [(s.SeriesInstanceUID, r.ReferencedSOPInstanceUID) for e in evidence
              for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
    assert (series, sop) in quoted


NO_ERRORS = {kind: [] for kind in RESULTS}
TAG = re.compile(r"\(([0-9a-f]{4},[0-9a-f]{4})\)")


# ---------------------------------------------------------------- tests


def test_the_full_source_is_copied_and_valid(client: httpx.Client, tmp_path: Path):
    """The matrix's baseline: with every copied attribute valid, the results pass and carry them."""
    answer = results_of(client, full_source(), tmp_path)
    assert answer.errors == NO_ERRORS
    source = read(full_source())
    for kind, ds in answer.results.items():
        assert (ds.PatientName, ds.AccessionNumber, ds.PatientAge) == (
            source.PatientName, source.AccessionNumber, source.PatientAge), kind
    assert answer.results["seg"].ClinicalTrialSponsorName == source.ClinicalTrialSponsorName  # highdicom's copy
    assert answer.results["sc"].ViewPosition == "PA"
    assert_references(answer.results, source)


def test_only_attributes_newer_than_dciodvfy_are_reported_on_a_valid_source(client: httpx.Client, tmp_path: Path):
    """What dciodvfy still reports on the results of a valid source: the standard attributes its dictionary
    lacks, copied as the standard allows, and nothing else (the README and conformance statement say so)."""
    ds = with_valid(read(full_source()), NEWER_THAN_DCIODVFY)
    answer = results_of(client, part10(ds), tmp_path)
    tags = {f"{t.group:04x},{t.element:04x}" for t in map(Tag, NEWER_THAN_DCIODVFY)}
    for kind, errors in answer.errors.items():
        assert all("not a recognized standard attribute" in line and TAG.findall(line.split(">")[0])[-1] in tags
                   for line in errors), (kind, errors)
    assert answer.results["seg"].IssuerOfClinicalTrialSiteID == ds.IssuerOfClinicalTrialSiteID


@pytest.mark.parametrize("keyword, fault, value", list(matrix()))
def test_a_dirty_value_is_not_copied(matrix_answers: dict[str, Future], request, keyword: str, fault: str,
                                     value: str):
    answer = matrix_answers[request.node.callspec.id].result()
    assert answer.status == 200, answer.text
    assert answer.errors == NO_ERRORS
    for kind, ds in answer.results.items():
        assert not holding(ds, str(value)), (kind, holding(ds, str(value)))
        if keyword in TYPE2_PATIENT_STUDY:  # present, empty: unknown
            assert keyword in ds and ds[keyword].is_empty, kind
    assert_references(answer.results, read(full_source()))


# ---------------------------------------------------------------- character sets

#: Non-ASCII values in the attributes of each kind of copy: highdicom's constructor (PatientName), the
#: Patient/Study copy (StudyDescription, ReferringPhysicianName, PatientComments), a sequence item
#: (OtherPatientIDsSequence), the acquisition equipment item (InstitutionName).
NON_ASCII_VALUES = {"PatientName": "MÜLLER^JÖRG", "StudyDescription": "Thorax pä",
                    "ReferringPhysicianName": "DUPONT^RENÉ", "PatientComments": "Remarque : été\r\n2e ligne",
                    "InstitutionName": "Hôpital Général"}


def declared(charset: str, values: dict[str, str | bytes]) -> pydicom.Dataset:
    ds = shallow_copy(read(full_source()))
    set_raw(ds, "SpecificCharacterSet", charset)
    for keyword, value in values.items():
        set_raw(ds, keyword, value, charset)
    ds.OtherPatientIDsSequence = [item(PatientID="X1", IssuerOfPatientID="Hôpital", TypeOfPatientID="TEXT")]
    return ds


@pytest.mark.parametrize("charset, extra", [("ISO_IR 100", {}), ("ISO_IR 192", {"StudyDescription": "胸部 Thorax"})])
def test_non_ascii_in_a_declared_character_set_is_copied(client: httpx.Client, tmp_path: Path, charset: str, extra):
    """Decoded by the source's SpecificCharacterSet, written in the same one by every result."""
    values = {**NON_ASCII_VALUES, **extra}
    answer = results_of(client, part10(declared(charset, values)), tmp_path)
    assert answer.errors == NO_ERRORS
    for kind, ds in answer.results.items():
        assert ds.SpecificCharacterSet == charset, kind
        for keyword in ("PatientName", "StudyDescription", "ReferringPhysicianName"):
            assert str(ds[keyword].value) == values[keyword], (kind, keyword)
        assert ds.OtherPatientIDsSequence[0].IssuerOfPatientID == "Hôpital", kind
        equipment = [i for i in ds.get("ContributingEquipmentSequence", []) if "InstitutionName" in i]
        assert [i.InstitutionName for i in equipment] == [values["InstitutionName"]], kind
    assert answer.results["seg"].PatientComments == values["PatientComments"]  # highdicom's copy (not the SC's)


@pytest.mark.parametrize("charset, keyword, value, why", [
    ("ISO_IR 192", "PatientName", b"M\xfcLLER^J", "Latin-1 bytes that are not UTF-8"),
    ("ISO_IR 192", "StudyDescription", "ü" * 33, "33 characters, 66 bytes: over LO's 64"),
    ("ISO_IR 100", "StudyDescription", b"Thorax\x85pa", "a C1 control character"),
    ("ISO_IR 6", "PatientName", "MÜLLER^JÖRG", "a SpecificCharacterSet the results cannot declare"),
    ("ISO-8859-1", "StudyDescription", "Thorax pä", "a misspelt SpecificCharacterSet"),
], ids=["not-utf8", "too-many-bytes", "c1-control", "iso-ir-6", "misspelt"])
def test_a_value_the_results_character_set_cannot_hold_is_not_copied(client: httpx.Client, tmp_path: Path,
                                                                      charset: str, keyword: str, value, why: str):
    ds = shallow_copy(read(full_source()))
    set_raw(ds, "SpecificCharacterSet", charset)
    set_raw(ds, keyword, value, charset if charset in CODECS else None)
    answer = results_of(client, part10(ds), tmp_path)
    assert answer.errors == NO_ERRORS, why
    source = read(part10(ds))
    for kind, result in answer.results.items():
        assert not holding(result, str(source[keyword].value)), (kind, why)
        assert result.get("SpecificCharacterSet") == (charset if charset in CODECS else None), (kind, why)
        if keyword in TYPE2_PATIENT_STUDY:
            assert result[keyword].is_empty, (kind, why)


# ---------------------------------------------------------------- the source's UIDs


def test_references_quote_the_sources_uids_as_they_are(client: httpx.Client, tmp_path: Path):
    """The one exception: a reference names the source as the source names itself, even in a form UI does not
    allow (a component with a leading zero), so those are the only Errors dciodvfy reports."""
    ds = shallow_copy(read(full_source()))
    odd = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.01", "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.02",
           "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.03"}
    for keyword, uid in odd.items():
        set_raw(ds, keyword, uid)
    ds.file_meta.MediaStorageSOPInstanceUID = odd["SOPInstanceUID"]
    answer = results_of(client, part10(ds), tmp_path)
    assert_references(answer.results, read(part10(ds)))
    for kind, errors in answer.errors.items():
        assert errors and all(any(uid in line for uid in odd.values()) for line in errors), (kind, errors)
