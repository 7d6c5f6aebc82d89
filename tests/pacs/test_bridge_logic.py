"""The bridge loop with an in-memory PACS and service (fast): what it stores, finds, counts and
retries. The same against a real Orthanc and the real service: tests/pacs/test_bridge.py."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from app.pacs.bridge import Bridge, Job, told_header
from app.pacs.instance import SELECTION_ATTRIBUTES, Instance
from app.pacs.state import BridgeState
from app.pipeline.dicom.common import ModelRef, ResultIdentity
from app.pipeline.select import SelectionRules
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read

COVID = fixture_images("Val", "COVID-19")
MODEL = ModelRef("covidseg-unet-r34", "2.1.0", "5" * 64)
KINDS = ["seg", "sc", "sr"]


class MemoryPacs:
    """Sources and stored results by SOP Instance UID; ``down`` calls of ``upload`` fail first. It tells
    the selection attributes of each source as its file has them, unless ``told`` (SOP Instance UID ->
    attributes) says otherwise."""

    def __init__(self, sources: list[bytes], down: int = 0, told: dict[str, dict[str, str]] | None = None):
        self.files = {read(data).SOPInstanceUID: data for data in sources}
        self.instances = [Instance(ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)
                          for ds in map(read, sources)]
        self.told = {ds.SOPInstanceUID: {k: str(ds.get(k, "")) for k in SELECTION_ATTRIBUTES}
                     for ds in map(read, sources)} | (told or {})
        self.down, self.uploads = down, 0
        self.downloads: list[str] = []

    def selection_attributes(self, instance: Instance) -> dict[str, str]:
        return dict(self.told[instance.sop_instance_uid])

    def download(self, instance: Instance) -> bytes:
        self.downloads.append(instance.sop_instance_uid)
        return self.files[instance.sop_instance_uid]

    def upload(self, dicom: bytes) -> None:
        self.uploads += 1
        if self.down:
            self.down -= 1
            raise httpx.ConnectError("PACS down")
        self.files[pydicom.dcmread(io.BytesIO(dicom), force=True).SOPInstanceUID] = dicom

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool:
        return sop_instance_uid in self.files


class MemoryService:
    """Makes a stand-in result with the UID the real service gives it."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []
        self.requests: list[list[str]] = []  # the kinds asked for, one entry per request

    def segment(self, dicom: bytes, kind: str, threshold: float, tta: str = "none") -> bytes:
        self.calls.append((kind, threshold))
        source = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True)
        result = Dataset()
        result.SOPInstanceUID = ResultIdentity.of(kind, source, MODEL, threshold, tta).sop_instance_uid
        result.StudyInstanceUID = source.StudyInstanceUID
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, result, implicit_vr=False, little_endian=True)
        return buf.getvalue()

    def results(self, dicom: bytes, kinds: list[str], threshold: float, tta: str = "none") -> dict[str, bytes]:
        """Several results of one instance in one request, as ServiceClient.results asks for them."""
        self.requests.append(list(kinds))
        return {kind: self.segment(dicom, kind, threshold, tta) for kind in kinds}


@pytest.fixture(scope="module")
def sources() -> list[bytes]:
    return [make_cxr_dicom(COVID[0], "CR", size=128), make_cxr_dicom(COVID[1], "DX", size=128)]


def bridge(pacs: MemoryPacs, service: MemoryService, state: Path, threshold: float = 0.5,
           retries: int = 3) -> Bridge:
    job = Job(MODEL, threshold, KINDS, SelectionRules())
    return Bridge(pacs, service, BridgeState(state), job, retries=retries, retry_wait=0.001)


def test_another_threshold_makes_its_own_results(tmp_path: Path, sources):
    pacs, service, state = MemoryPacs(sources), MemoryService(), tmp_path / "state.json"
    first = bridge(pacs, service, state, 0.5).run(pacs.instances, progress=False)
    assert (first.stored, first.already_done) == (6, 0)
    second = bridge(pacs, service, state, 0.25).run(pacs.instances, progress=False)
    assert (second.stored, second.already_done, second.already_in_pacs) == (6, 0, 0)
    assert sorted(set(service.calls)) == [(k, t) for k in sorted(KINDS) for t in (0.25, 0.5)]
    assert len(pacs.files) == 2 + 12  # each source's three results at each threshold
    third = bridge(pacs, service, state, 0.25).run(pacs.instances, progress=False)
    assert (third.stored, third.already_done) == (0, 2) and len(service.calls) == 12  # not asked again


def test_a_lost_state_counts_what_the_pacs_holds_not_as_stored(tmp_path: Path, sources):
    pacs, service = MemoryPacs(sources), MemoryService()
    bridge(pacs, service, tmp_path / "first.json").run(pacs.instances, progress=False)
    again = bridge(pacs, service, tmp_path / "lost.json").run(pacs.instances, progress=False)
    assert (again.stored, again.already_in_pacs, again.already_done) == (0, 6, 0)
    assert len(service.calls) == 6  # nothing made twice
    rows = (line.rsplit(None, 1) for line in again.table().splitlines())
    assert {name.strip(): int(count) for name, count in rows} == {
        "instances found (selected modalities)": 2, "already done (state file)": 0, "results stored now": 0,
        "results already in the PACS": 6, "skipped (selection rules, judgement)": 0, "images downloaded": 0,
        "failed (skipped)": 0, "pending (retry next run)": 0}
    assert len(pacs.downloads) == 2  # by the first run only: the PACS held every result the second wanted


def test_a_pacs_that_fails_twice_then_accepts_gets_everything(tmp_path: Path, sources):
    pacs, service = MemoryPacs(sources, down=2), MemoryService()
    summary = bridge(pacs, service, tmp_path / "state.json", retries=3).run(pacs.instances, progress=False)
    assert (summary.stored, summary.pending, summary.stop_reason) == (6, [], None)
    assert pacs.uploads == 8 and len(pacs.files) == 2 + 6


def test_a_pacs_down_longer_than_the_retries_leaves_the_rest_pending_for_the_next_run(tmp_path: Path, sources):
    pacs, service, state = MemoryPacs(sources, down=2), MemoryService(), tmp_path / "state.json"
    summary = bridge(pacs, service, state, retries=2).run(pacs.instances, progress=False)
    assert summary.pending == [i.sop_instance_uid for i in pacs.instances] and summary.stop_reason == "ConnectError"
    assert summary.stored == 0 and len(pacs.files) == 2
    after = bridge(pacs, service, state, retries=2).run(pacs.instances, progress=False)  # the PACS back
    assert (after.stored, after.pending, after.already_done) == (6, [], 0)


def test_what_the_pacs_says_skips_an_instance_before_its_file_is_downloaded(tmp_path: Path, sources):
    knee = make_cxr_dicom(COVID[0], "CR", size=128, body_part="KNEE")
    lateral = make_cxr_dicom(COVID[0], size=128, view="LL")
    pacs, service, path = MemoryPacs([*sources, knee, lateral]), MemoryService(), tmp_path / "state.json"
    summary = bridge(pacs, service, path).run(pacs.instances, progress=False)
    assert sorted(pacs.downloads) == sorted(read(d).SOPInstanceUID for d in sources) and summary.downloaded == 2
    knee_uid, lateral_uid = read(knee).SOPInstanceUID, read(lateral).SOPInstanceUID
    assert "KNEE" in summary.skipped[knee_uid] and "LL" in summary.skipped[lateral_uid]
    state = BridgeState(path)
    assert state.is_skipped(knee_uid) and state.is_skipped(lateral_uid)  # recorded: not asked again


def test_the_file_has_the_last_word_when_the_pacs_says_otherwise(tmp_path: Path):
    """The PACS says CHEST PA, the file says KNEE: downloaded, then skipped, nothing made."""
    knee = make_cxr_dicom(COVID[0], "CR", size=128, body_part="KNEE")
    uid = read(knee).SOPInstanceUID
    chest = {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PresentationIntentType": ""}
    pacs, service = MemoryPacs([knee], told={uid: chest}), MemoryService()
    summary = bridge(pacs, service, tmp_path / "state.json").run(pacs.instances, progress=False)
    assert pacs.downloads == [uid] and "KNEE" in summary.skipped[uid] and service.calls == []


@pytest.mark.parametrize("told, skipped", [
    ({}, False),  # a PACS that tells nothing: only the file can skip
    ({"ViewPosition": "LL"}, True),
    ({"BodyPartExamined": "KNEE"}, True),
    ({"BodyPartExamined": ""}, False),  # told absent: the default rules admit images without it
    ({"PresentationIntentType": "FOR PROCESSING", "Modality": "DX"}, True),
    ({"Modality": "MR"}, True),
])
def test_only_what_the_pacs_told_is_judged_before_download(told, skipped):
    rules = SelectionRules()
    assert (rules.reason_to_skip(told_header(rules, told)) is not None) is skipped


def test_an_attribute_the_pacs_did_not_tell_is_not_taken_for_absent():
    strict = SelectionRules(body_parts=("CHEST",), views=("PA",))  # images without the tags are not admitted
    assert strict.reason_to_skip(told_header(strict, {})) is None  # unknown is not absent
    assert strict.reason_to_skip(told_header(strict, {"ViewPosition": ""})) is not None  # told absent


def test_each_instance_is_one_request_for_the_kinds_the_pacs_lacks(tmp_path: Path, sources):
    """The model runs once per instance: one request asks for every result still to make, and only those;
    an upload retried does not ask the service again."""
    pacs, service = MemoryPacs(sources, down=1), MemoryService()
    held = read(sources[0])
    pacs.files[ResultIdentity.of("sc", held, MODEL, 0.5).sop_instance_uid] = b"held"  # the PACS has this one
    summary = bridge(pacs, service, tmp_path / "state.json").run(pacs.instances, progress=False)
    assert service.requests == [["seg", "sr"], KINDS]  # in the listing's order: sources[0] first
    assert (summary.stored, summary.already_in_pacs) == (5, 1) and pacs.uploads == 5 + 1
