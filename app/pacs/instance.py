"""What the bridge needs of a PACS, whichever API it speaks (Orthanc REST or DICOMweb)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

XRAY_MODALITIES = ("CR", "DX")


@dataclass(frozen=True)
class Instance:
    """One source image in the PACS, by its DICOM UIDs (and the PACS's own id where it has one)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    pacs_id: str = ""


class Pacs(Protocol):
    def describe(self) -> str: ...

    def find_instances(self, study_uid: str | None = None, date_from: str | None = None,
                       date_to: str | None = None, modalities: tuple[str, ...] = XRAY_MODALITIES) -> list[Instance]: ...

    def download(self, instance: Instance) -> bytes: ...

    def upload(self, dicom: bytes) -> None: ...

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool: ...

    def close(self) -> None: ...


def sorted_instances(found: dict[str, Instance]) -> list[Instance]:
    return sorted(found.values(), key=lambda i: (i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid))
