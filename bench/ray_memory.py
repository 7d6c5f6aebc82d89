"""Memory of the batch overlay's Ray pods, for the RayJob's memory requests: each pod's processes in a memory
cgroup of their own, as a pod's are, so the figure is what the kernel charges the pod.

On this machine, with the pinned Ray and the RayJob's ``rayStartParams``:

1. the head pod: ``ray start --head`` (no CPUs for tasks, dashboard on): GCS, raylet, dashboard and its
   agents, log monitor, autoscaler monitor;
2. the worker pod: ``ray start --address`` (2 CPUs): raylet, agents, log monitor;
3. the RayJob's entrypoint submitted as KubeRay's submitter does (``ray job submit -- python -m app.batch``,
   one engine, ``--batch-size 4``, the int8 model) on 2048 px DICOMs: each pod's peak while it runs (the head's
   with the job supervisor and the driver, the worker's with the engine). The submitter is outside both.

The page cache is dropped before each pod starts, so that the files it maps are charged to it (a file page is
charged to the cgroup that reads it first; the worker still shares, uncharged, what the head has mapped, as pods
of one image on one node do). Needs root and the cgroup v1 memory controller. Writes the table to
bench/RESULTS.md.

    python -m bench.ray_memory
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.batch import INT8_MODEL, make_inputs, val_images
from bench.results import publish
from bench.serve import ROOT, free_port

MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")
#: The RayJob's rayStartParams (deploy/kubernetes/overlays/batch/rayjob.yaml) that shape Ray's processes.
OBJECT_STORE_BYTES = 256 * 2**20
WORKER_CPUS = 2
#: The RayJob's --batch-size, and inputs shaped like what modalities send (12-bit MONOCHROME1 JPEG-LS CR).
BATCH_SIZE = 4
DICOM_SIDE = 2048
#: Ray's processes start their agents after ``ray start`` returns: memory is read once it has settled.
SETTLE_S = 15.0
RAY_CLI = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class Charge:
    """What a pod's cgroup holds, MiB: all of it, and of it the shared memory (the object store's pages)."""

    processes: int
    total: float
    shmem: float


class PodCgroup:
    """A memory cgroup standing for one pod: processes started through :meth:`command` and their children."""

    def __init__(self, name: str):
        self.path = MEMORY_CGROUPS / f"covidseg-bench-{name}-{os.getpid()}"
        self.path.mkdir()

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this cgroup."""
        return ["sh", "-c", f'echo $$ > {shlex.quote(str(self.path / "cgroup.procs"))} && exec "$@"', "sh", *argv]

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def charge(self, peak: bool = False) -> Charge:
        stat = dict(line.split() for line in self._read("memory.stat").splitlines())
        used = int(self._read("memory.max_usage_in_bytes" if peak else "memory.usage_in_bytes"))
        return Charge(len(self._read("cgroup.procs").split()), used / 2**20, int(stat["shmem"]) / 2**20)

    def reset_peak(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def remove(self) -> None:
        for _ in range(50):  # the processes ray stop ended leave it
            if not self._read("cgroup.procs").split():
                break
            time.sleep(0.1)
        self.path.rmdir()


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def ray(*args: str, env: dict[str, str], cgroup: PodCgroup | None = None, check: bool = True) -> None:
    argv = [RAY_CLI, *args]
    subprocess.run(cgroup.command(argv) if cgroup else argv, check=check, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=180)


def measure(images: int) -> dict[str, Charge]:
    if not os.access(MEMORY_CGROUPS, os.W_OK):
        raise SystemExit(f"needs root and the cgroup v1 memory controller at {MEMORY_CGROUPS}")
    # Token authentication: this machine's Ray starts its head with the token in ~/.ray, and a node joining
    # without it is refused (it changes nothing measured here).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORT_DISABLE_TELEMETRY": "1", "RAY_AUTH_MODE": "token",
           "COVIDSEG_MODEL_PATH": str(INT8_MODEL)}  # the batch image's model
    gcs, dashboard, temp = free_port(), free_port(), Path(tempfile.mkdtemp(prefix="ray-memory-"))
    common = ["--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", "--node-ip-address",
              "127.0.0.1"]
    rows: dict[str, Charge] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, temp, ignore_errors=True)
        head, worker = PodCgroup("head"), PodCgroup("worker")
        stack.callback(worker.remove)
        stack.callback(head.remove)
        stack.callback(ray, "stop", "--force", env=env, check=False)
        inputs = make_inputs(temp / "inputs", val_images(images), DICOM_SIDE)
        print("head pod: ray start --head", flush=True)
        drop_page_cache()
        ray("start", "--head", "--port", str(gcs), "--num-cpus", "0", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard), "--temp-dir", str(temp), *common, env=env, cgroup=head)
        time.sleep(SETTLE_S)
        print("worker pod: ray start --address", flush=True)
        drop_page_cache()
        ray("start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", str(WORKER_CPUS), *common, env=env,
            cgroup=worker)
        time.sleep(SETTLE_S)
        rows["head pod: Ray's processes"] = head.charge()
        rows["worker pod: Ray's processes"] = worker.charge()
        print(f"job: ray job submit -- python -m app.batch ({images} DICOMs of {DICOM_SIDE} px)", flush=True)
        head.reset_peak()
        worker.reset_peak()
        entrypoint = (f"cd {shlex.quote(str(ROOT))} && exec {sys.executable} -m app.batch {inputs} --out "
                      f"{temp / 'out'} --workers 1 --batch-size {BATCH_SIZE} --no-progress")
        subprocess.run([RAY_CLI, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", "sh", "-c",
                        entrypoint],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        rows["head pod during the job: with the supervisor and the driver (peak)"] = head.charge(peak=True)
        rows["worker pod during the job: with the engine (peak)"] = worker.charge(peak=True)
    return rows


def table(rows: dict[str, Charge], images: int) -> str:
    import ray as ray_module

    body = "".join(f"| {name} | {c.processes} | {c.total:.0f} | {c.shmem:.0f} |\n" for name, c in rows.items())
    return ("## Ray's pods (`python -m bench.ray_memory`)\n\n"
            f"Ray {ray_module.__version__} with the RayJob's start parameters (the head without CPUs for tasks, "
            f"dashboard on; a worker of {WORKER_CPUS} CPUs; {OBJECT_STORE_BYTES // 2**20} MiB object store each), "
            "each pod's processes in a memory cgroup of their own, the page cache dropped before each starts: "
            f"memory {SETTLE_S:g} s after both started, then the peak while the RayJob's entrypoint (`python -m "
            f"app.batch`, one engine, int8, `--batch-size {BATCH_SIZE}`) segmented {images} {DICOM_SIDE} px "
            "JPEG-LS DICOMs, submitted with `ray job submit` from outside both. MiB as charged to the cgroup "
            "(the shared memory column: the object store's pages, in /dev/shm, which the pods' limits add; "
            "read at the end for the peak rows).\n\n"
            "| pod, step | processes | charged MiB | of it shared memory MiB |\n|---|---:|---:|---:|\n" + body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="DICOMs the measured batch job segments")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    publish("ray-memory", table(measure(args.images), args.images), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
