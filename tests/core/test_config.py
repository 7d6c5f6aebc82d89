"""A misconfigured service, node or bridge stops at once with one line naming each bad variable."""

from __future__ import annotations

import os
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
