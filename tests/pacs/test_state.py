"""The bridge's state file on its own (fast): what it keys results by, and what a crash or a cut
file leaves. The bridge with it against a real Orthanc: tests/pacs/test_bridge.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from app.pacs.state import BridgeState
from app.pipeline.dicom.common import result_uid
from tests.conftest import ROOT

SOURCE, MODEL_A, MODEL_B = "1.2.3.4.5", "a" * 64, "b" * 64


def uid(kind: str = "seg", model: str = MODEL_A, threshold: float = 0.5) -> str:
    return result_uid(kind, SOURCE, model, threshold)


def record(state: BridgeState, kind: str = "seg", model: str = MODEL_A, threshold: float = 0.5) -> None:
    state.record_result(SOURCE, uid(kind, model, threshold), kind, model, threshold)


def test_a_result_is_done_only_for_its_own_model_threshold_and_kind(tmp_path: Path):
    state = BridgeState(tmp_path / "state.json")
    record(state, "seg", MODEL_A, 0.5)
    record(state, "sr", MODEL_A, 0.5)
    again = BridgeState(tmp_path / "state.json")  # as the next run reads it
    assert again.is_done(SOURCE, [uid("seg"), uid("sr")])
    assert not again.is_done(SOURCE, [uid("seg", threshold=0.25)])
    assert not again.is_done(SOURCE, [uid("seg", model=MODEL_B)])
    assert not again.is_done(SOURCE, [uid("seg"), uid("sc")])  # one kind still to make
    assert again.is_done(SOURCE, [uid("seg", threshold=0.5000000001)])  # the same threshold, as UIDs round it
    kept = json.loads((tmp_path / "state.json").read_text())["results"][SOURCE][uid("seg")]
    assert (kept["kind"], kept["model_sha256"], kept["threshold"]) == ("seg", MODEL_A, 0.5)


def test_skipped_by_the_rules_is_done_whatever_the_job(tmp_path: Path):
    state = BridgeState(tmp_path / "state.json")
    state.mark_skipped(SOURCE, "body part KNEE")
    assert BridgeState(tmp_path / "state.json").is_done(SOURCE, [uid(threshold=0.3)])


def test_a_failure_stands_until_every_result_is_in(tmp_path: Path):
    state = BridgeState(tmp_path / "state.json")
    state.mark_failed(SOURCE, "503")
    record(state)
    assert SOURCE in BridgeState(tmp_path / "state.json").data["failed"]
    state.mark_done(SOURCE)
    assert SOURCE not in BridgeState(tmp_path / "state.json").data["failed"]


def test_a_state_of_the_previous_version_keeps_its_results_under_their_uids(tmp_path: Path):
    """Version 1 kept {source: {kind: uid}} without the threshold: the UIDs carry it."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"processed": {SOURCE: {"seg": uid("seg"), "sc": uid("sc"), "at": "2026-01-01"}},
                                "partial": {"9.9": {"seg": "9.9.1"}}, "failed": {}, "skipped": {"8.8": "KNEE"}}))
    state = BridgeState(path)
    assert state.is_done(SOURCE, [uid("seg"), uid("sc")])
    assert not state.is_done(SOURCE, [uid("seg", threshold=0.25)])
    assert state.has_result("9.9", "9.9.1") and state.is_skipped("8.8")


def test_a_state_file_cut_short_is_set_aside_and_the_run_starts_afresh(tmp_path: Path, caplog):
    path = tmp_path / "state.json"
    BridgeState(path).mark_skipped(SOURCE, "body part KNEE")
    whole = path.read_text()
    path.write_text(whole[: len(whole) // 2])  # cut mid-write, by something other than the bridge
    with caplog.at_level(logging.WARNING, logger="app.pacs"):
        state = BridgeState(path)
    assert not state.data["skipped"]
    assert f"state file {path} cannot be read (JSONDecodeError)" in caplog.text
    assert (tmp_path / "state.json.damaged").read_text() == whole[: len(whole) // 2]  # kept for a look
    state.mark_skipped(SOURCE, "body part KNEE")
    assert BridgeState(path).data["skipped"] == {SOURCE: "body part KNEE"}


def test_json_that_is_not_a_state_is_set_aside_too(tmp_path: Path, caplog):
    path = tmp_path / "state.json"
    for text in ("[]", '{"version": 2, "results": []}', '{"version": 7}'):
        path.write_text(text)
        with caplog.at_level(logging.WARNING, logger="app.pacs"):
            assert BridgeState(path).data["results"] == {}
        assert "DamagedState" in caplog.text and not path.exists()
        caplog.clear()


def run_saving(path: Path, prelude: str) -> subprocess.CompletedProcess:
    """A bridge process that records one more instance after ``prelude`` (which breaks the save)."""
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        from app.pacs.state import BridgeState
        state = BridgeState({str(path)!r})
        {prelude}
        state.mark_skipped("1.2.3.4.6", "body part KNEE")
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_bridge_killed_while_saving_leaves_the_previous_state_and_no_debris(tmp_path: Path):
    path = tmp_path / "state.json"
    BridgeState(path).mark_skipped(SOURCE, "body part KNEE")
    before = path.read_text()
    # killed after the new state is written to its temporary file, before it replaces the old one
    killed = run_saving(path, "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -9, killed.stderr
    assert path.read_text() == before
    assert BridgeState(path).data["skipped"] == {SOURCE: "body part KNEE"}  # not the killed run's record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # the killed run's temporary file gone


def test_a_full_disk_while_saving_leaves_the_previous_state_whole(tmp_path: Path):
    path = tmp_path / "state.json"
    BridgeState(path).mark_skipped(SOURCE, "body part KNEE")
    before = path.read_text()
    # files this process writes may not exceed the current state's size: the new one does (EFBIG)
    full = run_saving(path, f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before)}, {len(before)}))")
    assert full.returncode == 1 and "File too large" in full.stderr, full.stderr
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_instance_the_judgement_refused_is_done_for_that_model_only(tmp_path: Path):
    path = tmp_path / "state.json"
    BridgeState(path).mark_not_judged(SOURCE, "no_contrast: 0.0 grey levels", "a" * 64)
    state = BridgeState(path)  # as written to disk
    assert state.is_done(SOURCE, ["2.25.1"], "a" * 64)
    assert not state.is_done(SOURCE, ["2.25.1"], "b" * 64)  # another model asks again
    assert not state.is_done(SOURCE, ["2.25.1"])
