"""The cleaning of a source's values for the results, rule by rule: each VR's form, length and characters
(:mod:`app.pipeline.dicom.values`), and the writer's view of the source that applies them
(:func:`app.pipeline.dicom.source.writer_source`: Type 2 emptied, Type 3 left out, items, modules)."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.valuerep import DA

from app.pipeline.dicom.common import NO_DATETIME, result_datetime
from app.pipeline.dicom.source import METHOD_NOT_RECORDED, instance_number, writer_source
from app.pipeline.dicom.values import result_charsets, valid_date, valid_element, valid_text, vm_allows
from tests.dicom_dirty import reread, set_raw

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")  # on the invalid values, on purpose
LATIN1, UTF8 = ["ISO_IR 100"], ["ISO_IR 192"]

VALID = [
    ("DA", "20260101", []), ("DA", "20240229", []),
    ("TM", "12", []), ("TM", "1200", []), ("TM", "120000", []), ("TM", "235960.123456", []),
    ("DT", "2026", []), ("DT", "20260101120000.5+0100", []),
    ("AS", "058Y", []), ("AS", "003D", []),
    ("CS", "ORIGINAL_1 A", []), ("CS", "C" * 16, []),
    ("DS", "1.5", []), ("DS", "-1e3", []), ("DS", " 2 ", []),
    ("IS", "12", []), ("IS", "-2147483648", []),
    ("UI", "1.2.840.10008.1.2", []), ("UI", "2.25." + "1" * 59, []),
    ("AE", "STORESCP", []),
    ("SH", "S" * 16, []), ("LO", "L" * 64, []), ("ST", "s" * 1024, []),
    ("LT", "line one\r\nline two\f", []), ("UT", "x" * 20000, []),
    ("PN", "DOE^JANE", []), ("PN", "DOE^JANE^M^DR^JR", []), ("PN", "DOE^J=ド^ジ=ドウ^ジ", UTF8),
    ("PN", "MÜLLER^JÖRG", LATIN1), ("LO", "胸部", UTF8), ("LO", "ü" * 32, UTF8), ("LO", "ü" * 64, LATIN1),
    ("UR", "http://example.com/a?b=c", []),
]
INVALID = [
    ("DA", "1993.02.24", [], "the ACR-NEMA form, which pydicom's DA reads"),
    ("DA", "20260230", [], "no such day"), ("DA", "2026010", [], "seven digits"),
    ("DA", "202601011", [], "nine digits"), ("DA", "20260101-20260102", [], "a query's range"),
    ("DA", "２０２６０１０１", UTF8, "Unicode digits"),
    ("TM", "12:00:00", [], "the ACR-NEMA form"), ("TM", "240000", [], "hour 24"), ("TM", "12000", [], "odd digits"),
    ("TM", "120000.1234567", [], "seven fraction digits"), ("TM", "1200-1300", [], "a range"),
    ("DT", "2026-01-01T12:00", [], "ISO 8601"), ("DT", "20260230", [], "no such day"),
    ("DT", "2026-2027", [], "a range"),
    ("AS", "58", [], "no unit"), ("AS", "0058Y", [], "too long"), ("AS", "058y", [], "lower case unit"),
    ("AS", "05#Y", [], "a bad character"),
    ("CS", "chest", [], "lower case"), ("CS", "A-B", [], "a hyphen"), ("CS", "C" * 17, [], "17 characters"),
    ("CS", "É", LATIN1, "beyond the default repertoire, even with a character set"),
    ("DS", "1,5", [], "a comma"), ("DS", "nan", [], "not a number"), ("DS", "1e400", [], "not finite"),
    ("DS", "1.000000000000001", [], "17 characters"),
    ("IS", "1.5", [], "a decimal"), ("IS", "2147483648", [], "beyond 32 bits"), ("IS", "1x", [], "a letter"),
    ("IS", "1234567890123", [], "13 characters"),
    ("UI", "1.02.3", [], "a leading zero"), ("UI", "1.2.", [], "an empty component"), ("UI", "1.2.a", [], "a letter"),
    ("UI", "1." + "2" * 63, [], "65 characters"),
    ("AE", "A" * 17, [], "17 characters"), ("AE", "A\x01", [], "a control character"),
    ("SH", "S" * 17, [], "17 characters"), ("LO", "L" * 65, [], "65 characters"), ("ST", "s" * 1025, [], "1025"),
    ("LO", "A\x01B", [], "a control character"), ("LO", "A\x1bB", [], "an ESC left after decoding"),
    ("LO", "A\rB", [], "CR outside free text"), ("LT", "tab\there", [], "TAB, which dciodvfy refuses"),
    ("LO", "ü" * 33, UTF8, "66 bytes in UTF-8"),
    ("PN", "A^B^C^D^E^F", [], "six components"), ("PN", "A=B=C=D", [], "four groups"),
    ("PN", "D" * 65, [], "a 65-character group"), ("PN", "DOE\x01^J", [], "a control character"),
    ("LO", "Thorax pä", [], "non-ASCII without a character set"),
    ("PN", "MÜLLER^JÖRG", [], "non-ASCII without a character set"),
    ("LO", "胸部", LATIN1, "not in the declared set"), ("LO", "A\x85B", LATIN1, "a C1 control character"),
    ("LO", "M\ufffdLLER", UTF8, "a character the decoder replaced"),
    ("UR", "http://example.com/a b", [], "a space inside"),
]


@pytest.mark.parametrize("vr, text, charsets", VALID)
def test_valid_values(vr: str, text: str, charsets: list[str]):
    assert valid_text(vr, text, charsets)


@pytest.mark.parametrize("vr, text, charsets, why", INVALID)
def test_invalid_values(vr: str, text: str, charsets: list[str], why: str):
    assert not valid_text(vr, text, charsets), why


def test_pydicom_alone_takes_the_dotted_date():
    """Why DA is checked here: pydicom reads the ACR-NEMA form as a date."""
    assert DA("1993.02.24") is not None
    assert not valid_date("1993.02.24") and valid_date("19930224")


@pytest.mark.parametrize("vm, counts, allowed", [
    ("1", (1,), True), ("1", (2,), False), ("2", (2,), True), ("2", (1, 3), False), ("1-n", (1, 5), True),
    ("1-3", (3,), True), ("1-3", (4,), False), ("2-2n", (2, 4), True), ("2-2n", (3,), False)])
def test_value_multiplicity(vm: str, counts: tuple[int, ...], allowed: bool):
    assert all(vm_allows(vm, n) is allowed for n in counts)


@pytest.mark.parametrize("keyword, value, valid", [
    ("StudyDescription", ["A", "B"], False),  # VM 1: a backslash split it
    ("OtherPatientNames", ["A^B", "C^D"], True),  # VM 1-n
    ("PatientOrientation", ["L"], False), ("PatientOrientation", ["L", "F"], True),  # VM 2
    ("PatientSex", "X", False), ("PatientIdentityRemoved", "MAYBE", False), ("SmokingStatus", "UNKNOWN", True),
    ("PregnancyStatus", 9, False), ("PregnancyStatus", 4, True),  # enumerated, in binary
    ("ImageLaterality", "U", True), ("Laterality", "U", False),
    ("PatientAge", "", True),  # empty is the module's question, not the VR's
])
def test_elements(keyword: str, value, valid: bool):
    element = DataElement(keyword, pydicom.datadict.dictionary_VR(keyword), value)
    assert valid_element(element) is valid


@pytest.mark.parametrize("value, terms", [
    ("", []), ("ISO_IR 100", ["ISO_IR 100"]), ("ISO_IR 192", ["ISO_IR 192"]),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    ("ISO_IR 6", None), ("ISO-8859-1", None), ("ISO 2022 IR 100", None),  # not a term highdicom writes alone
])
def test_the_character_sets_a_result_can_declare(value, terms):
    assert result_charsets(value) == terms


# ---------------------------------------------------------------- the writer's view of a source


def source(**values) -> pydicom.Dataset:
    """A source holding these values' bytes (not pydicom's conversion of them), read back as the service does."""
    ds = pydicom.Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    charset = values.pop("SpecificCharacterSet", None)
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in values.items():
        if isinstance(value, str):
            set_raw(ds, keyword, value, charset if charset in ("ISO_IR 100", "ISO_IR 192") else None)
        else:
            setattr(ds, keyword, value)
    return reread(ds)


def test_an_invalid_type_2_value_is_emptied_and_a_type_3_one_left_out():
    view = writer_source(source(PatientName="A^B^C^D^E^F", AccessionNumber="A" * 56, StudyDate="1993.02.24",
                                PatientAge="58", StudyDescription="Thorax pä", PatientWeight="70,5"))
    for keyword in ("PatientName", "AccessionNumber", "StudyDate"):  # Type 2: present, unknown
        assert keyword in view and view[keyword].is_empty, keyword
    for keyword in ("PatientAge", "StudyDescription", "PatientWeight"):  # Type 3: not copied
        assert keyword not in view, keyword


def test_valid_values_are_the_sources_own_elements():
    src = source(PatientName="DOE^JANE", PatientAge="058Y", StudyDescription="XR CHEST")
    view = writer_source(src)
    assert all(view[k] is src[k] for k in ("PatientName", "PatientAge", "StudyDescription"))


def test_an_empty_private_sequence_is_left_out_not_a_crash():
    """Vendors' headers hold empty private sequences (no keyword): left out by tag."""
    src = source(PatientName="DOE^JANE")
    src.private_block(0x0029, "VENDOR", create=True).add_new(0x10, "SQ", pydicom.Sequence([]))
    view = writer_source(src)
    assert 0x00291010 not in view and view.PatientName == "DOE^JANE"


def test_the_sources_uids_are_kept_whatever_their_form():
    src = source()
    src.SOPInstanceUID = "1.2.826.0.01"  # a leading zero: not a valid UI
    assert writer_source(src).SOPInstanceUID == "1.2.826.0.01"


def test_an_item_with_an_invalid_value_is_left_out():
    item = pydicom.Dataset()
    item.PatientID, item.TypeOfPatientID = "X1", "TEXT"
    bad = pydicom.Dataset()
    set_raw(bad, "PatientID", "P" * 65)
    src = source(OtherPatientIDsSequence=[item, bad], ProcedureCodeSequence=[bad])
    view = writer_source(src)
    assert [i.PatientID for i in view.OtherPatientIDsSequence] == ["X1"]
    assert "ProcedureCodeSequence" not in view  # no item left: the sequence goes (Type 3)


def test_without_a_character_set_non_ascii_is_invalid_and_with_one_it_is_copied():
    assert writer_source(source(PatientName="MÜLLER^J"))["PatientName"].is_empty
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        view = writer_source(source(SpecificCharacterSet=charset, PatientName="MÜLLER^J"))
        assert (view.SpecificCharacterSet, str(view.PatientName)) == (charset, "MÜLLER^J")


def test_a_character_set_the_results_cannot_declare_is_left_out_with_its_non_ascii_values():
    view = writer_source(source(SpecificCharacterSet="ISO_IR 6", PatientName="MÜLLER^J", StudyID="S1"))
    assert "SpecificCharacterSet" not in view and view["PatientName"].is_empty and view.StudyID == "S1"


CLINICAL_TRIAL = {"ClinicalTrialSponsorName": "SPONSOR", "ClinicalTrialProtocolID": "P1",
                  "ClinicalTrialSubjectID": "S1", "ClinicalTrialProtocolEthicsCommitteeName": "IRB",
                  "ClinicalTrialProtocolEthicsCommitteeApprovalNumber": "1"}


def test_a_complete_clinical_trial_module_is_copied_with_its_type_2_attributes():
    view = writer_source(source(**CLINICAL_TRIAL, ClinicalTrialTimePointDescription="baseline"))
    assert view.ClinicalTrialSponsorName == "SPONSOR"
    for keyword in ("ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
                    "ClinicalTrialTimePointID"):
        assert keyword in view and view[keyword].is_empty, keyword


@pytest.mark.parametrize("change", [
    {"ClinicalTrialSponsorName": "S" * 65}, {"ClinicalTrialProtocolID": None}, {"ClinicalTrialSubjectID": None},
], ids=["type-1-invalid", "type-1-absent", "no-subject"])
def test_an_incomplete_clinical_trial_subject_module_is_left_out(change):
    values = {k: v for k, v in {**CLINICAL_TRIAL, **change}.items() if v is not None}
    view = writer_source(source(**values))
    assert not [k for k in CLINICAL_TRIAL if k in view]


@pytest.mark.parametrize("needed, companion", [
    ("ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"),
    ("PatientAlternativeCalendar", "PatientBirthDateInAlternativeCalendar")])
def test_a_type_1c_attribute_and_its_companion_go_together(needed: str, companion: str):
    values = {**CLINICAL_TRIAL, "PatientAlternativeCalendar": "I", "PatientBirthDateInAlternativeCalendar": "14000101"}
    assert needed in writer_source(source(**values)) and companion in writer_source(source(**values))
    invalid_needed = writer_source(source(**{**values, needed: "x\x01"}))
    assert needed not in invalid_needed and companion not in invalid_needed
    invalid_companion = writer_source(source(**{**values, companion: "x\x01"}))
    assert needed not in invalid_companion and companion not in invalid_companion


def test_strain_and_specimen_are_not_copied():
    view = writer_source(source(StrainDescription="C57BL/6", ContainerIdentifier="C1"))
    assert "StrainDescription" not in view and "ContainerIdentifier" not in view


def test_identity_removed_with_an_invalid_method_says_the_method_was_not_recorded():
    view = writer_source(source(PatientIdentityRemoved="YES", DeidentificationMethod="M" * 65))
    assert view.DeidentificationMethod == METHOD_NOT_RECORDED


@pytest.mark.parametrize("value, number", [("7", 7), ("0", 1), ("-3", 1), (None, 1)])
def test_instance_number_is_the_sources_when_positive(value, number):
    ds = pydicom.Dataset()
    if value is not None:
        ds.InstanceNumber = value
    assert instance_number(ds) == number


@pytest.mark.parametrize("dates, expected", [
    ({"ContentDate": "1993.02.24", "AcquisitionDate": "19930225"}, ("19930225", "000000")),
    ({"AcquisitionDate": "1993.02.24"}, NO_DATETIME),
    ({"SeriesDate": "19930224", "SeriesTime": "12:00:00"}, ("19930224", "000000")),
])
def test_result_dates_come_only_from_valid_source_dates(dates: dict, expected: tuple[str, str]):
    assert result_datetime(source(**dates)) == expected
