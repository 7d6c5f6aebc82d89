"""Memory of Ray's own processes, as the batch overlay's pods start them, for the RayJob's memory requests.

On this machine, with the pinned Ray and the RayJob's ``rayStartParams``:

1. a head (``ray start --head``, no CPUs for tasks, dashboard on): GCS, raylet, dashboard and its agents,
   log monitor, autoscaler monitor;
2. a worker node joining it (``ray start --address``, 2 CPUs): raylet, agents, log monitor;
3. the RayJob's entrypoint submitted as KubeRay's submitter does (``ray job submit -- python -m app.batch``,
   one engine, ``--batch-size 4``, the int8 model) on 2048 px DICOMs: the peak of each pod's processes while
   it runs (on the head: Ray's, the job supervisor's and the driver's; on the worker: Ray's and the engine's).

Each row is what its step added, summed over its processes: the resident memory (RSS, which counts each
shared library in every process that maps it) and the proportional share (PSS: shared pages split between
their processes, so the sum is close to what the pod's cgroup is charged). tests/test_kubernetes.py holds
the head's memory request to its pod's peak PSS, and the worker's to its Ray processes' RSS plus the engine's
figures of the memory table, and to no less than its pod's peak. Then writes the table to bench/RESULTS.md.

    python -m bench.ray_memory
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.batch import INT8_MODEL, make_inputs, val_images
from bench.results import publish

ROOT = Path(__file__).resolve().parents[1]
#: The RayJob's rayStartParams (deploy/kubernetes/overlays/batch/rayjob.yaml) that shape Ray's processes.
OBJECT_STORE_BYTES = 256 * 2**20
WORKER_CPUS = 2
#: Ray's processes start their agents after ``ray start`` returns: memory is read once it has settled.
SETTLE_S = 15.0
#: The RayJob's --batch-size, and inputs shaped like what modalities send (12-bit MONOCHROME1 JPEG-LS CR).
BATCH_SIZE = 4
DICOM_SIDE = 2048


@dataclass(frozen=True)
class Usage:
    """Memory of a set of processes, MiB."""

    processes: int
    rss: float
    pss: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kib(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:  # the process ended meanwhile
        pass
    return 0


def running_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


def usage(pids: set[int]) -> Usage:
    """RSS and PSS of ``pids`` that are still running."""
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    rss = sum(_kib(Path(f"/proc/{pid}/status"), "VmRSS:") for pid in alive)
    pss = sum(_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") for pid in alive)
    return Usage(len(alive), rss / 1024, pss / 1024)


def settled(before: set[int], seconds: float = SETTLE_S) -> set[int]:
    """The processes started since ``before`` (this one's excepted), once they have had ``seconds`` to start."""
    time.sleep(seconds)
    return running_pids() - before - {os.getpid()}


RAY_CLI = str(Path(sys.executable).with_name("ray"))


def ray(*args: str, env: dict[str, str], check: bool = True) -> None:
    subprocess.run([RAY_CLI, *args], check=check, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=180)


def measure(images: int) -> dict[str, Usage]:
    # Token authentication: this machine's Ray starts its head with the token in ~/.ray, and a node joining
    # without it is refused (it changes nothing measured here).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORT_DISABLE_TELEMETRY": "1", "RAY_AUTH_MODE": "token",
           "COVIDSEG_MODEL_PATH": str(INT8_MODEL)}  # the batch image's model
    gcs, dashboard, temp = free_port(), free_port(), Path(tempfile.mkdtemp(prefix="ray-memory-"))
    common = ["--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    rows: dict[str, Usage] = {}
    try:
        before = running_pids()
        print("head: ray start --head", flush=True)
        ray("start", "--head", "--port", str(gcs), "--num-cpus", "0", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard), "--temp-dir", str(temp), *common, env=env)
        head = settled(before)
        rows["head: Ray's processes"] = usage(head)
        print("worker node: ray start --address", flush=True)
        ray("start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", str(WORKER_CPUS), *common, env=env)
        node = settled(before | head)
        rows["worker node: Ray's processes"] = usage(node)
        print(f"job: ray job submit -- python -m app.batch ({images} DICOMs of {DICOM_SIDE} px)", flush=True)
        inputs = make_inputs(temp / "inputs", val_images(images), DICOM_SIDE)
        job = subprocess.Popen([RAY_CLI, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
                                "sh", "-c", (f"cd {shlex.quote(str(ROOT))} && exec {sys.executable} -m app.batch "
                                             f"{inputs} --out {temp / 'out'} --workers 1 --batch-size {BATCH_SIZE} "
                                             "--no-progress")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peaks = sample_pods(job, {**dict.fromkeys(head, "head"), **dict.fromkeys(node, "worker")},
                            before | {job.pid})
        if job.wait() != 0:
            raise SystemExit(f"the batch job failed (exit {job.returncode})")
        rows["head pod during the job: Ray's, the supervisor's and the driver's processes (peak)"] = peaks["head"]
        rows["worker pod during the job: Ray's and the engine's processes (peak)"] = peaks["worker"]
    finally:
        ray("stop", "--force", env=env, check=False)
        shutil.rmtree(temp, ignore_errors=True)
    return rows


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    return _kib(Path(f"/proc/{pid}/status"), "PPid:")


def pod_of(pid: int, raylets: dict[int, str], known: dict[int, str]) -> str | None:
    """Which pod a process belongs to: its node's (the raylet it descends from, or the node that started it)."""
    seen = pid
    while seen > 1:
        if seen in known:
            return known[seen]
        if seen in raylets:
            return raylets[seen]
        seen = _parent(seen)
    return None


def sample_pods(job: subprocess.Popen, started: dict[int, str], outside: set[int],
                every_s: float = 0.5) -> dict[str, Usage]:
    """The peak memory of each pod's processes (PSS) while ``job`` runs, read every ``every_s``: the processes
    each node ``started`` and those that descend from its raylet since."""
    raylets = {pid: pod for pid, pod in started.items() if _command(pid).split(" ")[0].endswith("/raylet")}
    assert sorted(raylets.values()) == ["head", "worker"], raylets
    known = dict(started)
    peaks = {pod: Usage(0, 0.0, 0.0) for pod in raylets.values()}
    while job.poll() is None:
        for pid in running_pids() - outside - {os.getpid()}:
            if pid not in known and (pod := pod_of(pid, raylets, known)) is not None:
                known[pid] = pod
        for pod, peak in peaks.items():
            now = usage({pid for pid, p in known.items() if p == pod})
            if now.pss > peak.pss:
                peaks[pod] = now
        time.sleep(every_s)
    return peaks


def table(rows: dict[str, Usage]) -> str:
    import ray as ray_module

    body = "".join(f"| {name} | {u.processes} | {u.rss:.0f} | {u.pss:.0f} |\n" for name, u in rows.items())
    return ("## Ray's own processes (`python -m bench.ray_memory`)\n\n"
            f"Ray {ray_module.__version__}, the RayJob's start parameters (head without CPUs for tasks, "
            f"dashboard on; a worker node of {WORKER_CPUS} CPUs; {OBJECT_STORE_BYTES // 2**20} MiB object store, "
            f"not counted: it is in /dev/shm, the pod's limit adds it), memory {SETTLE_S:g} s after each "
            "step started; then the RayJob's entrypoint (`python -m app.batch`, one engine, int8, `--batch-size "
            f"{BATCH_SIZE}`) on {DICOM_SIDE} px JPEG-LS DICOMs submitted with `ray job submit`, each pod's processes "
            "read every 0.5 s. "
            "MiB, summed over the processes each step started.\n\n"
            "| step | processes | RSS MiB | PSS MiB |\n|---|---:|---:|---:|\n" + body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="DICOMs the measured batch job segments")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    publish("ray-memory", table(measure(args.images)), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
