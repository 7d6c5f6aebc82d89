"""The PACS through DICOMweb (PS3.18): QIDO-RS to find, WADO-RS to fetch, STOW-RS to store."""

from __future__ import annotations

import httpx
from pydicom.datadict import tag_for_keyword

from app.pacs.instance import SELECTION_ATTRIBUTES, Instance, sorted_instances
from app.pipeline.dicom.multipart import multipart_parts, multipart_related

STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"
#: Keyword -> tag (as QIDO-RS JSON spells it) of the attributes the selection rules read.
SELECTION_TAGS = {keyword: f"{tag_for_keyword(keyword):08X}" for keyword in SELECTION_ATTRIBUTES}
#: QIDO-RS asks for them with one includefield each: servers differ on comma lists (Orthanc 1.10's
#: DICOMweb plugin ignores one).
INCLUDE_SELECTION = [("includefield", tag) for tag in SELECTION_TAGS.values()]


def tag_value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def told_attributes(item: dict) -> dict[str, str]:
    """The selection attributes a QIDO-RS answer carries ("" for one present without a value); a server
    leaves out what it does not index and, some, what the object lacks: those stay unknown."""
    return {keyword: tag_value(item, tag) for keyword, tag in SELECTION_TAGS.items() if tag in item}


class DicomWebClient:
    def __init__(self, url: str, username: str | None = None, password: str | None = None, timeout: float = 60.0):
        auth = (username, password or "") if username else None
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def describe(self) -> str:
        return f"DICOMweb at {self.url}"

    def close(self) -> None:
        self.http.close()

    def qido(self, path: str, params: dict[str, str] | list[tuple[str, str]]) -> list[dict]:
        r = self.http.get(path, params=params, headers={"Accept": "application/dicom+json"})
        r.raise_for_status()
        return r.json() if r.status_code != 204 and r.content.strip() else []

    def find_instances(self, study_uid: str | None = None, date_from: str | None = None, date_to: str | None = None,
                       *, modalities: tuple[str, ...]) -> list[Instance]:
        found: dict[str, Instance] = {}
        for modality in modalities:
            query = {"Modality": modality}
            if study_uid:
                query["StudyInstanceUID"] = study_uid
            if date_from or date_to:
                query["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
            for series in self.qido("/series", query):
                study, series_uid = tag_value(series, STUDY), tag_value(series, SERIES)
                for inst in self.qido(f"/studies/{study}/series/{series_uid}/instances", INCLUDE_SELECTION):
                    sop = tag_value(inst, SOP)
                    found[sop] = Instance(sop, series_uid, study, attributes=told_attributes(inst))
        return sorted_instances(found)

    def selection_attributes(self, instance: Instance) -> dict[str, str]:
        """What the listing's QIDO-RS answer told: no request of its own."""
        return dict(instance.attributes)

    def download(self, instance: Instance) -> bytes:
        path = (f"/studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}"
                f"/instances/{instance.sop_instance_uid}")
        # transfer-syntax=* : the file as stored, no transcoding by the PACS
        r = self.http.get(path, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        r.raise_for_status()
        parts = multipart_parts(r.content, r.headers.get("content-type", ""))
        if len(parts) != 1:
            raise ValueError(f"WADO-RS answered {len(parts)} parts for one instance")
        return parts[0]

    def upload(self, dicom: bytes) -> None:
        body, content_type = multipart_related([dicom])
        r = self.http.post("/studies", content=body, headers={"Content-Type": content_type,
                                                              "Accept": "application/dicom+json"})
        r.raise_for_status()

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool:
        return bool(self.qido(f"/studies/{study_uid}/instances", {"SOPInstanceUID": sop_instance_uid}))
