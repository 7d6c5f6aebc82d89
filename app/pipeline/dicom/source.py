"""The source image as the writers copy it: what they take from it, in the form their results' modules allow.

Modalities send attributes absent, empty, filled, or filled with what their VR does not allow (a date
``1993.02.24``, an age ``58``, a 56-character accession number, Latin-1 names without a character set),
and a result must follow its own modules' rules (Type 1, 1C, 2, 2C, 3), not mirror the source. Every
rule that concerns what is copied is applied here, once, to a view of the source (the source itself is
left as it is), so the writers and highdicom's copy of the Patient and Study modules see only values
they may write:

- the UIDs every result references (study, series, instance, SOP class) must have a value, or no
  result can be made: a refusal (:class:`PipelineError`, ``Problem.INVALID``, ``incomplete_dicom``); they
  are quoted as they are, whatever their form: a reference must name the source as the source names itself;
- every other value is checked against its VR, value multiplicity, enumerated values and character set
  (:mod:`app.pipeline.dicom.values`); an invalid one is written empty where the attribute is Type 2 in
  the result's module (:data:`TYPE_2`) and left out everywhere else, never copied; an item of a
  sequence with an invalid value is left out (its attributes are mostly Type 1 in their macro);
- the source's SpecificCharacterSet is the results' when they can declare it (highdicom's terms); else it
  is left out, and the values are judged in the default repertoire: without a character set, a value
  beyond ASCII is invalid (pydicom reads such bytes as Latin-1, a guess the results cannot declare);
- a Type 2 Patient or General Study attribute the source lacks is added empty (present, unknown);
- an empty value that can only mean "not known" is left out where the result's module does not
  allow it empty: a sequence without items (every copied sequence is Type 3, so one item or none),
  SpecificCharacterSet (empty is the default repertoire), FrameOfReferenceUID (Type 1),
  DeidentificationMethod (Type 1C), BodyPartExamined and ImageLaterality (Type 3; the SC's
  Laterality depends on both);
- the Frame of Reference of a projection image (no Image Orientation) places nothing: the results
  map onto the source by reference, so it is left out;
- the animal-patient attributes (species, breed, responsible person, neutered, strain) and the Specimen
  module are left out: their Type 1C/2C companions cannot be completed from a source that lacks them, and
  this service reads human chest X-rays (only the SEG would copy a specimen, so the results would disagree);
- the Clinical Trial Subject and Study modules are copied only complete (:data:`CLINICAL_TRIAL_MODULES`),
  and a Type 1C attribute and the companions that require it only together (:data:`NEEDED_BY`);
- PatientIdentityRemoved YES without a de-identification method (Type 1C, needed then) gets a
  DeidentificationMethod saying that the source did not record it, rather than losing the flag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from app.pipeline.dicom.values import result_charsets, valid_element
from app.pipeline.errors import PipelineError, Problem

#: Type 1 in every result (identity, the study it files under, its references to the source).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Type 2 in the Patient and General Study modules of every result: present, empty when unknown.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class OptionalModule:
    """A module the results carry only when the source fills it completely: with a valid value for each
    Type 1 attribute and for one of the ``one_of`` (Type 1C) ones; its Type 2 attributes added empty."""

    keywords: tuple[str, ...]
    type1: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    type2: tuple[str, ...] = ()


CLINICAL_TRIAL_MODULES = (
    OptionalModule(  # Clinical Trial Subject (PS3.3 C.7.1.3)
        keywords=("ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
                  "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialSiteID",
                  "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID",
                  "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
                  "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
                  "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"),
        type1=("ClinicalTrialSponsorName", "ClinicalTrialProtocolID"),
        one_of=("ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID"),
        type2=("ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName")),
    OptionalModule(  # Clinical Trial Study (PS3.3 C.7.2.3)
        keywords=("ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
                  "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
                  "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
                  "ConsentForClinicalTrialUseSequence"),
        type2=("ClinicalTrialTimePointID",)),
)
#: The copied attributes that are Type 2 in the results' modules: an invalid value is written empty.
#: Every other copied attribute is Type 3 there, or Type 1/1C in a module the results may go without
#: (above, :data:`NEEDED_BY`): an invalid value is left out.
TYPE_2 = frozenset({
    *TYPE2_PATIENT_STUDY,  # Patient, General Study: every result
    *(k for module in CLINICAL_TRIAL_MODULES for k in module.type2),  # when the source fills the module
    "PatientOrientation",  # General Image of SEG and SC: 2C, an image without plane geometry
    "Laterality",  # General Series of the SC: 2C, a body part that may be paired
})
#: Type 1C attributes required when one of their companions is present, and not allowed otherwise: without
#: a valid value of their own the companions are left out, and without a companion so are they.
NEEDED_BY = {
    "PatientAlternativeCalendar": ("PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar"),
    "ClinicalTrialProtocolEthicsCommitteeName": ("ClinicalTrialProtocolEthicsCommitteeApprovalNumber",),
    "LongitudinalTemporalEventType": ("LongitudinalTemporalOffsetFromEvent",),
}
#: Empty means "not known" for these, and their result modules do not allow them empty, or the
#: result's other conditions read them (Laterality from BodyPartExamined and ImageLaterality).
EMPTY_IS_ABSENT = ("SpecificCharacterSet", "FrameOfReferenceUID", "BodyPartExamined", "ImageLaterality",
                   "DeidentificationMethod")
#: Patient module attributes of animal patients (Type 1C/2C "if the patient is an animal"), Patient
#: Study's PatientSexNeutered, and the strain of a research animal (with one, the patient is an animal
#: and needs the others: dciodvfy asks for them).
ANIMAL_PATIENT = ("PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
                  "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
                  "ResponsiblePersonRole", "ResponsibleOrganization", "PatientSexNeutered", "StrainDescription",
                  "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation", "StrainCodeSequence")
#: The Specimen module (a container and its specimens, Type 1 and 2 each), which highdicom copies into the SEG.
SPECIMEN = ("ContainerIdentifier", "IssuerOfTheContainerIdentifierSequence", "AlternateContainerIdentifierSequence",
            "ContainerTypeCodeSequence", "ContainerDescription", "ContainerComponentSequence",
            "SpecimenDescriptionSequence")
ORIENTATION = re.compile(r"[APLRHF]+")  # one direction of a biped patient, e.g. "FL" (feet and left)
METHOD_NOT_RECORDED = "method not recorded by the source"  # LO: at most 64 characters


def is_empty(element: DataElement) -> bool:
    return element.is_empty or (element.VR == "SQ" and len(element.value) == 0)


def has_value(dataset: pydicom.Dataset, keyword: str) -> bool:
    return keyword in dataset and not is_empty(dataset[keyword])


def check_identity(source: pydicom.Dataset) -> None:
    missing = [k for k in REQUIRED_UIDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise PipelineError(Problem.INVALID, "incomplete_dicom",
                            f"the source has no {', '.join(missing)} (Type 1 in every result)")


def valid_item(item: pydicom.Dataset, charsets: Sequence[str]) -> bool:
    """Whether every value of a sequence item, at any depth, may be written as it is."""
    return all(all(valid_item(i, charsets) for i in e.value) if e.VR == "SQ" else valid_element(e, charsets)
               for e in item)


def as_written(element: DataElement, charsets: list[str] | None) -> DataElement | None:
    """``element`` as the view holds it: itself when valid, else emptied (:data:`TYPE_2`) or ``None``
    (left out). ``charsets``: the results' character set, ``None`` when the source's cannot be theirs."""
    if element.keyword in REQUIRED_UIDS:  # references quote the source's own, whatever their form
        return element
    if element.keyword == "SpecificCharacterSet":
        return element if charsets else None
    if element.VR == "SQ":
        items = [item for item in element.value if valid_item(item, charsets or [])]
        if len(items) == len(element.value):
            return element
        return DataElement(element.tag, "SQ", items) if items else None
    if valid_element(element, charsets or []):
        return element
    return DataElement(element.tag, element.VR, "") if element.keyword in TYPE_2 else None


def _left_out(view: pydicom.Dataset) -> set[BaseTag]:
    """Tags of the view's root elements that the writers must not see (tags, not keywords: a private
    element has no keyword, and an empty private sequence is common in vendors' headers)."""
    out = {view[k].tag for k in (*ANIMAL_PATIENT, *SPECIMEN) if k in view}
    for element in view:
        if is_empty(element) and (element.VR == "SQ" or element.keyword in EMPTY_IS_ABSENT):
            out.add(element.tag)
    if "FrameOfReferenceUID" in view and "ImageOrientationPatient" not in view:
        out.add(view["FrameOfReferenceUID"].tag)
    for needed, companions in NEEDED_BY.items():
        if not has_value(view, needed) or not any(has_value(view, k) for k in companions):
            out.update(view[k].tag for k in (needed, *companions) if k in view)
    return out


def complete_module(view: pydicom.Dataset, module: OptionalModule) -> None:
    """``module`` as the view keeps it: left out unless complete, its Type 2 attributes present."""
    present = [k for k in module.keywords if k in view]
    if not present:
        return
    complete = all(has_value(view, k) for k in module.type1) and (
        not module.one_of or any(has_value(view, k) for k in module.one_of))
    if not complete:
        for keyword in present:
            delattr(view, keyword)
        return
    for keyword in module.type2:
        if keyword not in view:
            view[keyword] = DataElement(tag_for_keyword(keyword), dictionary_VR(keyword), "")


def _identity_removed_without_method(view: pydicom.Dataset) -> bool:
    return (str(view.get("PatientIdentityRemoved", "")).upper() == "YES"
            and not any(has_value(view, k) for k in ("DeidentificationMethod", "DeidentificationMethodCodeSequence")))


def writer_source(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """``dataset`` as the writers copy it (see the module's rules), in a dataset of its own."""
    check_identity(dataset)
    charsets = result_charsets(dataset.get("SpecificCharacterSet"))
    view = pydicom.Dataset()
    for element in dataset:  # elements shared, not copied: the source is not changed
        kept = as_written(element, charsets)
        if kept is not None:
            view.add(kept)
    if hasattr(dataset, "file_meta"):
        view.file_meta = dataset.file_meta
    for tag in _left_out(view):
        del view[tag]
    for module in CLINICAL_TRIAL_MODULES:
        complete_module(view, module)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in view:
            view[keyword] = DataElement(tag_for_keyword(keyword), dictionary_VR(keyword), "")
    if _identity_removed_without_method(view):
        view["DeidentificationMethod"] = DataElement(tag_for_keyword("DeidentificationMethod"), "LO",
                                                     METHOD_NOT_RECORDED)
    return view


def instance_number(source: pydicom.Dataset) -> int:
    """The results' InstanceNumber: the source's when it is a positive integer (highdicom takes no other;
    the view holds only a valid IS), else 1."""
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return number if number >= 1 else 1


def patient_orientation(source: pydicom.Dataset) -> list[str] | str:
    """General Image PatientOrientation (Type 2C, required for an image without plane geometry, as
    the results of a projection X-ray are): the source's row and column directions when it gives
    both in the standard form (``L\\F``, ``P\\FL``), else empty: unknown, not guessed."""
    value = source.get("PatientOrientation")
    values = [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)] if value else []
    return values if len(values) == 2 and all(ORIENTATION.fullmatch(v) for v in values) else ""
