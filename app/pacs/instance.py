"""What the bridge needs of a PACS, whichever API it speaks (Orthanc REST or DICOMweb)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

#: The attributes the selection rules read (:mod:`app.pipeline.select`): asked of the PACS before any
#: download, so that an instance the rules leave out is never fetched.
SELECTION_ATTRIBUTES = ("Modality", "BodyPartExamined", "ViewPosition", "PresentationIntentType")


@dataclass(frozen=True)
class Instance:
    """One source image in the PACS, by its DICOM UIDs (and the PACS's own id where it has one)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    pacs_id: str = ""
    #: Selection attributes the listing already told (keyword -> value); not part of the identity.
    attributes: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


class Pacs(Protocol):
    def describe(self) -> str: ...

    def find_instances(self, study_uid: str | None = None, date_from: str | None = None, date_to: str | None = None,
                       *, modalities: tuple[str, ...]) -> list[Instance]:
        """Instances of these modalities (the selection's, ``COVIDSEG_SELECT_MODALITIES``), optionally of
        one study or of studies in a date range (YYYYMMDD)."""
        ...

    def selection_attributes(self, instance: Instance) -> dict[str, str]:
        """What the PACS says of the instance's :data:`SELECTION_ATTRIBUTES` without sending its pixels:
        keyword -> value ("" when the object has none); an attribute it cannot tell is left out."""
        ...

    def download(self, instance: Instance) -> bytes: ...

    def upload(self, dicom: bytes) -> None: ...

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool: ...

    def close(self) -> None: ...


def sorted_instances(found: dict[str, Instance]) -> list[Instance]:
    return sorted(found.values(), key=lambda i: (i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid))
