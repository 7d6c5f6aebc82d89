"""The standard DICOM validators (Debian's dicom3tools) as test helpers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
DCENTVFY = shutil.which("dcentvfy") or "/usr/bin/dcentvfy"


def _run(args: list[str]) -> str:
    assert Path(args[0]).exists(), f"{args[0]} is not installed: apt-get install dicom3tools (see README)"
    # dicom3tools echoes attribute values in their own character set (Latin-1 names...): not UTF-8
    done = subprocess.run(args, check=False, capture_output=True, text=True, errors="replace", timeout=120)
    return done.stdout + done.stderr


def iod_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for one file."""
    return [line for line in _run([DCIODVFY, "-new", str(path)]).splitlines() if line.startswith("Error")]


def entity_problems(paths: list[Path]) -> list[str]:
    """The lines dcentvfy prints when patient/study/series attributes disagree across files."""
    return [line for line in _run([DCENTVFY, *map(str, paths)]).splitlines()
            if line.startswith(("Error", "Warning"))]
