"""The PACS through Orthanc's REST API: find instances of the selected modalities, read their selection
attributes, download, upload, look up a UID."""

from __future__ import annotations

import httpx

from app.pacs.instance import SELECTION_ATTRIBUTES, Instance, sorted_instances


class OrthancClient:
    def __init__(self, url: str, username: str | None = None, password: str | None = None, timeout: float = 60.0):
        auth = (username, password or "") if username else None
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def describe(self) -> str:
        return f"Orthanc at {self.url}"

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, path: str, **kw):
        r = self.http.request(method, path, **kw)
        r.raise_for_status()
        return r.json()

    def find_instances(self, study_uid: str | None = None, date_from: str | None = None, date_to: str | None = None,
                       *, modalities: tuple[str, ...]) -> list[Instance]:
        """Instances of these modalities, optionally of one study or of studies in a date range (YYYYMMDD)."""
        found: dict[str, Instance] = {}
        study_uids: dict[str, str] = {}  # Orthanc study id -> StudyInstanceUID, fetched once per study
        for modality in modalities:
            query: dict[str, str] = {"Modality": modality}
            if study_uid:
                query["StudyInstanceUID"] = study_uid
            if date_from or date_to:
                query["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
            for series in self._json("POST", "/tools/find", json={"Level": "Series", "Query": query, "Expand": True}):
                study_id = series["ParentStudy"]
                if study_id not in study_uids:
                    study = self._json("GET", f"/studies/{study_id}")
                    study_uids[study_id] = study["MainDicomTags"].get("StudyInstanceUID", "")
                # one call lists the series' instances with their tags
                for inst in self._json("GET", f"/series/{series['ID']}/instances"):
                    found[inst["ID"]] = Instance(inst["MainDicomTags"].get("SOPInstanceUID", ""),
                                                 series["MainDicomTags"].get("SeriesInstanceUID", ""),
                                                 study_uids[study_id], pacs_id=inst["ID"])
        return sorted_instances(found)

    def selection_attributes(self, instance: Instance) -> dict[str, str]:
        """From the instance's simplified tags (about 1 kB: Orthanc reads the file on its side, so an
        attribute missing there is missing from the object)."""
        tags = self._json("GET", f"/instances/{instance.pacs_id}/simplified-tags")
        return {keyword: str(tags.get(keyword) or "") for keyword in SELECTION_ATTRIBUTES}

    def download(self, instance: Instance) -> bytes:
        r = self.http.get(f"/instances/{instance.pacs_id}/file")
        r.raise_for_status()
        return r.content

    def upload(self, dicom: bytes) -> None:
        self._json("POST", "/instances", content=dicom, headers={"Content-Type": "application/dicom"})

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool:
        hits = self._json("POST", "/tools/lookup", content=sop_instance_uid)
        return any(hit.get("Type") == "Instance" for hit in hits)
