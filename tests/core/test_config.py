"""A misconfigured service, node or bridge stops at once with one line naming each bad variable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("program", [["app"], ["app.node"], ["app.pacs", "--orthanc-url", "http://127.0.0.1:1"]])
def test_bad_variables_are_named_on_one_line_without_a_traceback(program):
    env = {**os.environ, "COVIDSEG_TTA": "rotate", "COVIDSEG_PORT": "99999"}
    proc = subprocess.run([sys.executable, "-m", *program], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("configuration error:")
    assert "COVIDSEG_TTA: Input should be 'none' or 'flip'" in proc.stderr and "COVIDSEG_PORT" in proc.stderr


def test_the_node_spool_defaults_to_the_users_state_folder_outside_the_checkout(monkeypatch, tmp_path):
    """The spool holds patient data: by default it is never inside the source tree, whatever the
    working directory (a checkout is one ``git add -A`` from a commit)."""
    from app.core.config import Settings

    monkeypatch.delenv("COVIDSEG_NODE_SPOOL_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    spool = Settings().node_spool_dir
    assert spool.is_absolute() and not spool.resolve().is_relative_to(ROOT.resolve())
    assert spool == tmp_path / "home" / ".local" / "state" / "covidseg" / "spool"

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert Settings().node_spool_dir == tmp_path / "state" / "covidseg" / "spool"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # the XDG spec: ignored unless absolute
    assert Settings().node_spool_dir == tmp_path / "home" / ".local" / "state" / "covidseg" / "spool"
    monkeypatch.setenv("COVIDSEG_NODE_SPOOL_DIR", str(tmp_path / "mine"))
    assert Settings().node_spool_dir == tmp_path / "mine"


def test_a_checkout_ignores_a_spool_made_in_it(tmp_path):
    """Set to a relative ``spool`` and run from the checkout, the node's patient data stays out of git."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = ROOT / "spool" / "incoming" / f"{tmp_path.name}.dcm"
    made = [d for d in (probe.parent.parent, probe.parent) if not d.exists()]
    probe.parent.mkdir(parents=True, exist_ok=True)
    try:
        probe.write_bytes(b"DICM")
        proc = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT, timeout=60)
        assert proc.returncode == 0, "spool/ is not git-ignored"
    finally:
        probe.unlink(missing_ok=True)
        for folder in reversed(made):  # only the folders this test made
            folder.rmdir()


def test_client_deadlines_connection_cap_and_docs_access_from_the_environment(monkeypatch):
    from app.core.config import Settings

    defaults = Settings()
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keepalive_timeout) == (30, 30, 5)
    assert defaults.max_connections == 256 and defaults.docs_public is False
    for name, value in {"HEADER_TIMEOUT": "2.5", "BODY_TIMEOUT": "120", "KEEPALIVE_TIMEOUT": "1",
                        "MAX_CONNECTIONS": "10", "DOCS_PUBLIC": "true"}.items():
        monkeypatch.setenv(f"COVIDSEG_{name}", value)
    s = Settings()
    assert (s.header_timeout, s.body_timeout, s.keepalive_timeout, s.max_connections, s.docs_public) == (
        2.5, 120, 1, 10, True)


@pytest.mark.parametrize(("variable", "value"), [("COVIDSEG_HEADER_TIMEOUT", "0"), ("COVIDSEG_BODY_TIMEOUT", "-1"),
                                                 ("COVIDSEG_KEEPALIVE_TIMEOUT", "0"),
                                                 ("COVIDSEG_MAX_CONNECTIONS", "0")])
def test_a_deadline_or_cap_that_would_refuse_everything_is_a_configuration_error(monkeypatch, variable, value):
    from app.core.config import settings_from_environment

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit, match=f"configuration error: {variable}: Input should be greater"):
        settings_from_environment()


def test_microbatching_defaults_on_for_cuda_and_off_for_cpu():
    from app.core.config import Settings

    assert Settings().microbatch_wait_s("CUDAExecutionProvider") > 0
    assert Settings().microbatch_wait_s("CPUExecutionProvider") == 0
    assert Settings(microbatch_wait_ms=0).microbatch_wait_s("CUDAExecutionProvider") == 0
    assert Settings(microbatch_wait_ms=5).microbatch_wait_s("CPUExecutionProvider") == 0.005


def test_without_a_model_path_the_cpu_serves_the_int8_model_and_cuda_the_fp32_one():
    from app.core.config import DEFAULT_MODEL_PATH, INT8_MODEL_PATH, Settings

    settings = Settings(model_path=None)
    assert settings.model_for(["CPUExecutionProvider"])[0] == INT8_MODEL_PATH
    assert settings.model_for(["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == DEFAULT_MODEL_PATH
    assert INT8_MODEL_PATH.is_file() and INT8_MODEL_PATH.with_suffix(".card.json").is_file()
    chosen = Settings(model_path=DEFAULT_MODEL_PATH).model_for(["CPUExecutionProvider"])
    assert chosen == (DEFAULT_MODEL_PATH, "COVIDSEG_MODEL_PATH")  # an explicit path wins
