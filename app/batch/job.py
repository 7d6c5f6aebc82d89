"""Run a batch job on Ray Data: embedded local Ray by default, or an existing cluster.

The driver lists the pending items (paths or PACS ids), Ray streams them in small blocks through an
actor pool of engines, and the driver writes each block of rows to the results table as it comes
back. Memory stays flat: items are light, pixels live only inside the worker reading them, rows are
small, and the object store is capped.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from app.batch.sources import Item
from app.batch.table import ResultsTable
from app.batch.worker import EngineWorker, WorkerConfig

log = logging.getLogger("app.batch")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: an embedded local Ray, started and stopped by the job
    workers: int = 1  # engines in the actor pool
    cpus_per_worker: float | None = None  # default: the cluster's CPUs shared among the workers
    gpus_per_worker: float = 0.0  # fractional GPUs are fine: 0.5 puts two engines on one GPU
    batch_size: int = 16  # inputs per block; a worker segments them in runs of at most WorkerConfig.run_pixels
    object_store_mb: int = 512  # local Ray only: the cap of its shared-memory object store
    local_cpus: int | None = None  # local Ray only: CPUs it may use (default: all)


@dataclass
class RunReport:
    written: int = 0
    seconds: float = 0.0  # from the start of the work (workers' start and model loads included) to the last row
    counts: dict[str, int] = field(default_factory=dict)
    first_block: Block | None = None  # rows and time of the first block written

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """Throughput once the workers run: the rows after the first block over the time since it."""
        if self.first_block is None or self.seconds <= self.first_block.seconds:
            return 0.0
        return (self.written - self.first_block.rows) / (self.seconds - self.first_block.seconds)


@dataclass(frozen=True)
class Block:
    rows: int
    seconds: float


def start_ray(options: RayOptions):
    import ray

    address = options.address or os.environ.get("RAY_ADDRESS")  # KubeRay's RayJob sets RAY_ADDRESS
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded: it listens on this machine only
        # "local": always a new instance of its own, never a cluster another `ray start` left on this machine
        ray.init(address="local", num_cpus=options.local_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=options.object_store_mb * 1024 * 1024)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own progress bar counts images
    return ray


def worker_resources(ray, options: RayOptions) -> tuple[float, int]:
    """CPUs reserved per worker and ONNX Runtime threads to match, so that workers never oversubscribe."""
    cpus = options.cpus_per_worker
    if cpus is None:
        cpus = max(1.0, ray.cluster_resources().get("CPU", 1.0) / options.workers)
    return cpus, max(1, math.floor(cpus))


def run_on_ray(items: list[Item], table: ResultsTable, config: WorkerConfig, options: RayOptions,
               progress: bool = True) -> RunReport:
    """Segment ``items`` and append their rows to ``table`` block by block."""
    report = RunReport()
    if not items:
        return report
    ray = start_ray(options)
    try:
        cpus, threads = worker_resources(ray, options)
        config = WorkerConfig(**{**asdict(config), "pacs": config.pacs, "threads": threads})
        blocks = max(1, math.ceil(len(items) / options.batch_size))
        dataset = ray.data.from_items([asdict(i) for i in items], override_num_blocks=blocks)
        results = dataset.map_batches(EngineWorker, fn_constructor_args=(config,), batch_size=options.batch_size,
                                      compute=ray.data.ActorPoolStrategy(size=options.workers), num_cpus=cpus,
                                      num_gpus=options.gpus_per_worker or None, batch_format="numpy")
        start = time.perf_counter()
        with tqdm(total=len(items), unit="img", desc="segmenting", disable=not progress) as bar:
            for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = block.to_pylist()
                report.written += table.append(rows)
                if report.first_block is None:
                    report.first_block = Block(len(rows), time.perf_counter() - start)
                for r in rows:  # "pending" rows are counted here only (the table never holds them)
                    report.counts[r["status"]] = report.counts.get(r["status"], 0) + 1
                bar.update(len(rows))
        report.seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return report
