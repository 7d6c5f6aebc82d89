"""Docker Engine and Docker Compose as the deployment tests drive them: the CLI commands the README gives, in
compose projects of their own, with every published port on 127.0.0.1 (the network rule of these tests)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: CI sets it (.ci/run): there a missing engine fails the Docker tests instead of skipping them.
REQUIRE = os.environ.get("COVIDSEG_REQUIRE_DOCKER") == "1"
SITE_BASE_SCRIPT = ROOT / "deploy" / "docker" / "site-base-image.sh"
#: Each published port of the shipped compose file, as its variable: "127.0.0.1:" makes "127.0.0.1::8000",
#: a free port on loopback chosen by the engine (read back with Compose.port).
LOOPBACK_PORTS = {name: "127.0.0.1:" for name in ("COVIDSEG_PORT", "COVIDSEG_GPU_PORT", "COVIDSEG_NODE_PORT",
                                                   "ORTHANC_HTTP_PORT", "ORTHANC_DICOM_PORT")}


def run(args: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def engine_problem() -> str | None:
    """Why the Docker tests cannot run on this machine, or None."""
    for tool in ("docker", "mmdebstrap"):
        if not shutil.which(tool):
            return f"{tool} is not installed (.ci/run installs docker.io and mmdebstrap)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine answers (start dockerd, as .ci/run does)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return "the Docker Compose v2 plugin is missing (.ci/run installs it)"
    return None


def require_docker() -> None:
    problem = engine_problem()
    if problem:
        if REQUIRE:
            pytest.fail(f"COVIDSEG_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(problem)


@dataclass
class Compose:
    """``docker compose -p PROJECT -f docker-compose.yml -f OVERRIDE...`` in the checkout, with ``env``."""

    project: str
    files: tuple[Path, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def args(self, *args: str) -> list[str]:
        files = [a for f in (ROOT / "docker-compose.yml", *self.files) for a in ("-f", str(f))]
        return ["docker", "compose", "-p", self.project, *files, *args]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run(self.args(*args), timeout=timeout, check=check, cwd=ROOT,
                   env={**os.environ, **LOOPBACK_PORTS, **self.env})

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", "--all", service).stdout.split()

    def container(self, service: str) -> str:
        ids = self.containers(service)
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(run(["docker", "inspect", self.container(service)]).stdout)[0]

    def port(self, service: str, port: int) -> int:
        """The host port publishing ``port`` of ``service``, checked to be on loopback."""
        host, _, number = self("port", service, str(port)).stdout.strip().rpartition(":")
        assert host == "127.0.0.1", f"{service}:{port} is published on {host}, not on loopback only"
        return int(number)

    def logs(self, *services: str) -> str:
        done = self("logs", "--no-color", *services)
        return done.stdout + done.stderr

    def health(self, service: str) -> str:
        return self.inspect(service)["State"].get("Health", {}).get("Status", "none")

    def wait_healthy(self, service: str, seconds: float = 180) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            state = self.inspect(service)["State"]
            if state.get("Health", {}).get("Status") == "healthy":
                return
            assert state["Status"] in ("created", "running", "restarting"), f"{service} {state['Status']}: " \
                                                                             f"{self.logs(service)[-3000:]}"
            time.sleep(0.5)
        raise AssertionError(f"{service} not healthy within {seconds}s: {self.logs(service)[-3000:]}")


@contextlib.contextmanager
def project(name: str, *files: Path, **env: str) -> Iterator[Compose]:
    """A compose project for one test module, taken down with its volumes afterwards."""
    compose = Compose(name, tuple(files), env)
    compose("--profile", "*", "down", "-v", "--remove-orphans", "--timeout", "5", check=False)  # what a run left
    try:
        yield compose
    finally:
        compose("--profile", "*", "down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def checkout_model(sha256: str) -> Path:
    """The checkout's model file whose card gives ``sha256``: what a container serves, to serve it here too."""
    found = [ROOT / "models" / card["file"] for card in map(json.loads, map(Path.read_text,
                                                                             (ROOT / "models").glob("*.card.json")))
             if card["sha256"] == sha256]
    assert len(found) == 1, f"no model of the checkout has sha256 {sha256}"
    return found[0]


def site_base_image() -> str:
    """The site base image (deploy/docker/site-base-image.sh: reused while its script and CAs are unchanged)."""
    return run(["bash", str(SITE_BASE_SCRIPT)], timeout=900).stdout.strip().splitlines()[-1]


def build(compose: Compose, *services: str, profile: str | None = None, **args: str) -> float:
    """``docker compose build --build-arg NAME=VALUE...`` of ``services``, one at a time (the machine's two cores);
    returns the seconds it took (cached layers make an unchanged build a few seconds)."""
    start = time.perf_counter()
    profiles = ["--profile", profile] if profile else []
    build_args = [a for name, value in args.items() for a in ("--build-arg", f"{name}={value}")]
    for service in services:
        compose(*profiles, "build", *build_args, service, timeout=1800)
    return time.perf_counter() - start
