"""The source image as the writers copy it: what they take from it, in the form their results' modules allow.

Modalities send attributes absent, empty or filled in every combination, and a result must follow
its own modules' rules (Type 1, 1C, 2, 2C, 3), not mirror the source. The rules that concern what
is copied are applied here, once, to a view of the source (the source itself is left as it is):

- the UIDs every result references (study, series, instance, SOP class) must have a value, or no
  result can be made: a refusal (:class:`PipelineError`, ``Problem.INVALID``, ``incomplete_dicom``);
- a Type 2 Patient or General Study attribute the source lacks is added empty (present, unknown);
- a value not in its standard form where the results check it (dates, times, sex) is emptied
  (:func:`~app.pipeline.dicom.common.conformant_source`);
- an empty value that can only mean "not known" is left out where the result's module does not
  allow it empty: a sequence without items (every copied sequence is Type 3, so one item or none),
  SpecificCharacterSet (empty is the default repertoire), FrameOfReferenceUID (Type 1),
  DeidentificationMethod (Type 1C), BodyPartExamined and ImageLaterality (Type 3; the SC's
  Laterality depends on both);
- the Frame of Reference of a projection image (no Image Orientation) places nothing: the results
  map onto the source by reference, so it is left out;
- the animal-patient attributes (species, breed, responsible person, neutered) are left out: their
  Type 1C/2C companions cannot be completed from a source that lacks them, and this service reads
  human chest X-rays;
- PatientIdentityRemoved YES without a de-identification method (Type 1C, needed then) gets a
  DeidentificationMethod saying that the source did not record it, rather than losing the flag.
"""

from __future__ import annotations

import re

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from app.pipeline.dicom.common import conformant_source
from app.pipeline.errors import PipelineError, Problem

#: Type 1 in every result (identity, the study it files under, its references to the source).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Type 2 in the Patient and General Study modules of every result: present, empty when unknown.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Empty means "not known" for these, and their result modules do not allow them empty, or the
#: result's other conditions read them (Laterality from BodyPartExamined and ImageLaterality).
EMPTY_IS_ABSENT = ("SpecificCharacterSet", "FrameOfReferenceUID", "BodyPartExamined", "ImageLaterality",
                   "DeidentificationMethod")
#: Patient module attributes of animal patients (Type 1C/2C "if the patient is an animal") and
#: Patient Study's PatientSexNeutered.
ANIMAL_PATIENT = ("PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
                  "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
                  "ResponsiblePersonRole", "ResponsibleOrganization", "PatientSexNeutered")
ORIENTATION = re.compile(r"[APLRHF]+")  # one direction of a biped patient, e.g. "FL" (feet and left)
METHOD_NOT_RECORDED = "method not recorded by the source"  # LO: at most 64 characters


def is_empty(element: DataElement) -> bool:
    return element.is_empty or (element.VR == "SQ" and len(element.value) == 0)


def check_identity(source: pydicom.Dataset) -> None:
    missing = [k for k in REQUIRED_UIDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise PipelineError(Problem.INVALID, "incomplete_dicom",
                            f"the source has no {', '.join(missing)} (Type 1 in every result)")


def _left_out(source: pydicom.Dataset) -> set[str]:
    """Keywords of the source's root elements that the writers must not see."""
    out = {k for k in ANIMAL_PATIENT if k in source}
    for element in source:
        if is_empty(element) and (element.VR == "SQ" or element.keyword in EMPTY_IS_ABSENT):
            out.add(element.keyword)
    if "FrameOfReferenceUID" in source and "ImageOrientationPatient" not in source:
        out.add("FrameOfReferenceUID")
    return out


def _identity_removed_without_method(source: pydicom.Dataset, left_out: set[str]) -> bool:
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES":
        return False
    methods = [k for k in ("DeidentificationMethod", "DeidentificationMethodCodeSequence")
               if k in source and k not in left_out and not is_empty(source[k])]
    return not methods


def writer_source(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """``dataset`` as the writers copy it (see the module's rules), in a dataset of its own."""
    check_identity(dataset)
    source = conformant_source(dataset)
    left_out = _left_out(source)
    view = pydicom.Dataset()
    for element in source:  # elements shared, not copied: the source is not changed
        if element.keyword not in left_out:
            view.add(element)
    if hasattr(source, "file_meta"):
        view.file_meta = source.file_meta
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in view:
            view[keyword] = DataElement(tag_for_keyword(keyword), dictionary_VR(keyword), "")
    if _identity_removed_without_method(source, left_out):
        view["DeidentificationMethod"] = DataElement(tag_for_keyword("DeidentificationMethod"), "LO",
                                                     METHOD_NOT_RECORDED)
    return view


def patient_orientation(source: pydicom.Dataset) -> list[str] | str:
    """General Image PatientOrientation (Type 2C, required for an image without plane geometry, as
    the results of a projection X-ray are): the source's row and column directions when it gives
    both in the standard form (``L\\F``, ``P\\FL``), else empty: unknown, not guessed."""
    value = source.get("PatientOrientation")
    values = [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)] if value else []
    return values if len(values) == 2 and all(ORIENTATION.fullmatch(v) for v in values) else ""
