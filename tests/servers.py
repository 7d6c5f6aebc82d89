"""Real servers on loopback for the tests: Orthanc (Debian's package), the service, the DICOM node."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import ROOT, model_under_test

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, proc: subprocess.Popen, seconds: float = 120, what: str = "server") -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        if check():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready within {seconds}s")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running(args: list[str], ready, what: str, **popen) -> Iterator[subprocess.Popen]:
    """A server process for the duration of the block, once ``ready()`` is true."""
    proc = subprocess.Popen(args, **popen)
    try:
        wait_until(ready, proc, what=what)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@contextlib.contextmanager
def orthanc(work: Path, http_port: int | None = None, dicom_port: int | None = None,
            dicomweb: bool = False, extra: dict | None = None) -> Iterator[str]:
    """An Orthanc with its storage in ``work`` (kept across restarts); yields its REST URL."""
    assert os.path.exists(ORTHANC), "Orthanc is not installed: apt-get install orthanc (see README)"
    http_port = http_port or free_port()
    config = {"Name": "covidseg-test", "HttpPort": http_port, "DicomServerEnabled": dicom_port is not None,
              "DicomPort": dicom_port or 4242, "DicomAet": "ORTHANC", "StorageDirectory": str(work / "storage"),
              "IndexDirectory": str(work / "index"), "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "Plugins": [], "StorageCompression": False}
    if dicomweb:
        assert DICOMWEB_PLUGIN.exists(), "apt-get install orthanc-dicomweb (see README)"
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    config.update(extra or {})
    work.mkdir(parents=True, exist_ok=True)
    (work / "orthanc.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{http_port}"
    with running([ORTHANC, str(work / "orthanc.json")], lambda: answers(f"{url}/system"), "Orthanc",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield url


@contextlib.contextmanager
def service(log: Path | None = None, module: str = "app", **env: str) -> Iterator[str]:
    """The HTTP service on the model under test (its output, stdout and stderr, in ``log`` when given);
    yields its URL. ``module``: what ``python -m`` runs (``python -m app``, or a test's variant of it)."""
    with service_process(log, module, **env) as (url, _):
        yield url


@contextlib.contextmanager
def service_process(log: Path | None = None, module: str = "app",
                    **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """:func:`service`, with its process (to signal it)."""
    port = free_port()
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "COVIDSEG_LOG_LEVEL": "warning", **env}
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a")) if log is not None else None
        proc = stack.enter_context(running([sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
                                           lambda: answers(f"{url}/ready"), "service", env=env, cwd=ROOT,
                                           stdout=out, stderr=subprocess.STDOUT if out else None))
        yield url, proc


def echo(port: int, calling: str, called: str = "COVIDSEG") -> subprocess.CompletedProcess:
    """dcmtk's C-ECHO SCU."""
    return subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


#: storescu's option proposing a file's compressed transfer syntax (it proposes one family per run).
PROPOSE = {"1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.5": "-xr",
           "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy"}


def store(port: int, calling: str, files: list[Path], called: str = "COVIDSEG") -> subprocess.CompletedProcess:
    """dcmtk's C-STORE SCU, one run per file (each proposing the file's own transfer syntax);
    returns the first failed run, else the last one."""
    import pydicom

    done = None
    for path in files:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        propose = [PROPOSE[syntax]] if syntax in PROPOSE else []
        args = ["storescu", *propose, "-aet", calling, "-aec", called, "127.0.0.1", str(port), str(path)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return done
    return done


@contextlib.contextmanager
def node(spool: Path, port: int, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """``python -m app.node`` at info level, its log in ``log``; ready once a C-ECHO succeeds."""
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "COVIDSEG_LOG_LEVEL": "info",
           "COVIDSEG_NODE_SPOOL_DIR": str(spool), "COVIDSEG_NODE_PORT": str(port),
           "COVIDSEG_NODE_ALLOWED_CALLERS": "MODALITY", "COVIDSEG_NODE_RETRY_MAX_WAIT": "1",
           "COVIDSEG_NODE_METRICS_PORT": "0", **env}  # metrics only when a test asks: nodes run side by side
    caller = env["COVIDSEG_NODE_ALLOWED_CALLERS"].split(",")[0].split("@")[0]  # AE or AE@host: its AE title
    with open(log, "a") as out, running([sys.executable, "-m", "app.node"],
                                        lambda: echo(port, caller).returncode == 0, "node",
                                        env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT) as proc:
        yield proc
