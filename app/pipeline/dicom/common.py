"""What every DICOM result shares: its identity, the patient and study it belongs to, its series.

Result UIDs are derived from the source instance, the model's sha256, the threshold (its canonical
value), the test-time augmentation and the kind of result, so the same request always yields the same UIDs: a result delivered twice (a node
restarted mid-delivery, a bridge that lost its state) replaces itself in the PACS instead of
duplicating, and a bridge can ask the PACS whether a result already exists before making it. They are
UUID-derived (``2.25.<UUID as an integer>``, PS3.5 B.2), so no organisation root is needed.

The same inputs also give the same bytes: a result's dates and times are the source's own (see
:func:`result_datetime`), never the time it was made, so a result made again is the same object.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass, field

import pydicom

from app import __version__
from app.pipeline.dicom.values import valid_date, valid_time

MANUFACTURER = "covidseg"
#: Result kinds, by the name used in settings, formats and the spool.
KINDS = ("seg", "sc", "sr")
KIND_TITLES = {"seg": "infection segmentation", "sc": "overlay", "sr": "measurements"}
#: The defaults of ``COVIDSEG_SEG_SERIES_NUMBER``, ``_SC_`` and ``_SR_`` (Settings reads them here).
DEFAULT_SERIES_NUMBERS = {"seg": 9901, "sc": 9902, "sr": 9903}

#: Patient and study attributes copied from the source into every result, so that the results
#: file under the same patient and study and cross-object checks (dcentvfy) find no disagreement.
#: They are copied from the writer's view of the source, which holds each valid, emptied or not at all
#: (:func:`app.pipeline.dicom.source.writer_source`).
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "PatientAge", "PatientSize", "PatientWeight",
    "EthnicGroup", "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "StudyDescription", "ProcedureCodeSequence",
)



@dataclass(frozen=True)
class ModelRef:
    """The model a result comes from."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class ScForm:
    """A smaller Secondary Capture than the full-size lossless one, for sites that find that too large (the
    node's ``COVIDSEG_NODE_SC_MAX_SIZE`` and ``COVIDSEG_NODE_SC_TRANSFER_SYNTAX=jpeg-baseline``): its longer
    side at most ``max_side`` px (0: the source's), and/or lossy JPEG baseline. Either makes other pixels,
    so another object: its SOP Instance UID derives from the full-size one and :meth:`names` (PS3.3
    C.7.6.1.1.5: a lossy compressed version of an image gets a new SOP Instance UID)."""

    max_side: int = 0
    lossy_jpeg: bool = False

    @property
    def is_full(self) -> bool:
        return not self.max_side and not self.lossy_jpeg

    def applied_to(self, rows: int, columns: int) -> ScForm:
        """The form as it applies to an image of ``rows`` x ``columns``: no reduction for one already small enough
        (then, without lossy JPEG, the full-size capture itself, under its own UID)."""
        return ScForm(self.max_side if max(rows, columns) > self.max_side else 0, self.lossy_jpeg)

    def names(self) -> tuple[str, ...]:
        """What makes this form another object, for its UID and the node's done record (none when full)."""
        return ((f"max_side={self.max_side}",) if self.max_side else ()) + (("jpeg-baseline",) if self.lossy_jpeg
                                                                             else ())


@dataclass(frozen=True)
class ResultOptions:
    """Operator settings for the written objects."""

    series_numbers: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SERIES_NUMBERS))
    institution_name: str | None = None
    sc_form: ScForm = ScForm()

    def series_number(self, kind: str) -> int:
        return self.series_numbers.get(kind, DEFAULT_SERIES_NUMBERS[kind])


#: The namespace of the name-based UUIDs behind every UID the writers make (a random UUID, fixed here:
#: changing it changes every result's UID).
UID_NAMESPACE = uuid.UUID("bd782401-ea96-4e8b-843b-8f67b8bb91e1")


def derived_uid(*names: str) -> str:
    """``2.25.<int>`` of the version-5 (SHA-1, name-based) UUID of ``names`` in :data:`UID_NAMESPACE`: the
    same names, the same UID; at most 44 characters (a UUID is below 2**128, 39 digits)."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, json.dumps(names)).int}"


def canonical_threshold(threshold: float) -> str:
    """The threshold as identities name it: one text per value (``-0.0`` is 0, ``0.25`` and ``0.250`` one)."""
    return f"{float(threshold) + 0.0:.6g}"  # adding 0.0 turns -0.0 into 0.0


def result_uid(kind: str, source_uid: str, model_sha256: str, threshold: float, tta: str = "none") -> str:
    """A UID for a result that is the same for the same source, model, threshold, test-time augmentation and
    kind, and differs when any of them differs (a result with ``tta=flip`` has other masks than without)."""
    names = [kind, source_uid, model_sha256, canonical_threshold(threshold)]
    if tta != "none":  # without TTA the names are those results always had
        names.append(f"tta={tta}")
    return derived_uid(*names)


@dataclass(frozen=True)
class ResultIdentity:
    """Series and instance UIDs of one result of one source image."""

    series_instance_uid: str
    sop_instance_uid: str

    @classmethod
    def of(cls, kind: str, source: pydicom.Dataset, model: ModelRef, threshold: float,
           tta: str = "none") -> "ResultIdentity":
        # One result series per source series, kind, model, threshold and TTA.
        series = result_uid(f"{kind}-series", str(source.SeriesInstanceUID), model.sha256, threshold, tta)
        return cls(series, result_uid(kind, str(source.SOPInstanceUID), model.sha256, threshold, tta))


def copy_patient_study(source: pydicom.Dataset, target: pydicom.Dataset) -> None:
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = source[keyword]


def series_description(kind: str, model: ModelRef) -> str:
    return f"{model.name} {model.version} {KIND_TITLES[kind]}"[:64]


#: Where a result's date and time come from, the first pair with a valid date (exactly ``YYYYMMDD``, see
#: :func:`~app.pipeline.dicom.values.valid_date`: pydicom's DA also reads the ACR-NEMA ``1993.02.24``, which
#: the results must not carry): the source's content, its acquisition, its series, its study. Without any,
#: :data:`NO_DATETIME`; a date without a valid time gets 000000.
SOURCE_DATETIMES = (("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
                    ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"))
NO_DATETIME = ("19000101", "000000")
#: Type 3 times of making that highdicom stamps with the clock: left out, so the same inputs give the same bytes.
CLOCK_KEYWORDS = ("InstanceCreationDate", "InstanceCreationTime", "DateOfSecondaryCapture", "TimeOfSecondaryCapture")


def result_datetime(source: pydicom.Dataset) -> tuple[str, str]:
    """The date (DA) and time (TM) every result of ``source`` carries: the source's own, so they are the
    same each time the result is made (and the result sorts beside its image)."""
    for date_keyword, time_keyword in SOURCE_DATETIMES:
        date, time = str(source.get(date_keyword) or "").strip(), str(source.get(time_keyword) or "").strip()
        if valid_date(date):
            return date, time if valid_time(time) else NO_DATETIME[1]
    return NO_DATETIME


def stamp_datetimes(target: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Series and content date and time from :func:`result_datetime`; the clock's times left out."""
    date, time = result_datetime(source)
    target.SeriesDate, target.SeriesTime = date, time
    target.ContentDate, target.ContentTime = date, time
    for keyword in CLOCK_KEYWORDS:
        if keyword in target:
            delattr(target, keyword)
    for item in target.get("ContributingEquipmentSequence", []):  # highdicom's own item has the clock's time
        if "ContributionDateTime" in item:
            del item.ContributionDateTime


def finish_result(target: pydicom.Dataset, source: pydicom.Dataset, kind: str, model: ModelRef,
                  options: ResultOptions) -> None:
    """Patient/study from the source; series date, time, description; equipment."""
    copy_patient_study(source, target)
    stamp_datetimes(target, source)
    target.SeriesDescription = series_description(kind, model)
    target.SeriesNumber = options.series_number(kind)
    target.Manufacturer = MANUFACTURER
    target.ManufacturerModelName = model.name[:64]
    target.SoftwareVersions = [model.version, f"service {__version__}"]
    if options.institution_name:
        target.InstitutionName = options.institution_name


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """Part 10 bytes (with preamble and file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
