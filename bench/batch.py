"""The batch job on Ray against a plain in-process loop over the same engine, same worker count: images/s
for fp32 and int8, 1 and 2 workers, on Val PNGs and on the same images as 2048 px DICOM; and the peak memory
of the whole process tree (driver, Ray, workers) as the input count grows. Prints a table and writes it to
bench/RESULTS.md.

    python -m bench.batch                       # the full table (about 25 minutes on 2 cores)
    python -m bench.batch --images 40 --no-write  # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.results import publish
from app.core.config import DEFAULT_MODEL_PATH, Settings

INT8_MODEL = DEFAULT_MODEL_PATH.with_name(DEFAULT_MODEL_PATH.stem + "-int8.onnx")
VAL = DEFAULT_MODEL_PATH.parents[1].parent / "shared" / "data" / "covid-qu-ex" / "Infection Segmentation Data" / "Val"


def val_images(n: int) -> list[Path]:
    folders = [VAL / c / "images" for c in ("COVID-19", "Normal", "Non-COVID")]
    found = sorted(p for f in folders if f.is_dir() for p in f.iterdir())
    if not found:  # no dataset on this machine: the test fixtures
        found = sorted((Path(__file__).parents[1] / "tests" / "fixtures").rglob("images/*.png"))
    return [found[i % len(found)] for i in range(n)]


def make_inputs(folder: Path, images: list[Path], dicom_side: int | None) -> Path:
    """``images`` as files (copies, or 12-bit MONOCHROME1 JPEG-LS CR DICOMs of ``dicom_side`` px)."""
    folder.mkdir(parents=True)
    if dicom_side:
        from tests.dicom_fixtures import make_cxr_dicom

    for i, src in enumerate(images):
        if dicom_side:
            (folder / f"{i:05d}.dcm").write_bytes(make_cxr_dicom(src, photometric="MONOCHROME1", size=dicom_side,
                                                                 compress="1.2.840.10008.1.2.4.80"))
        else:
            shutil.copy(src, folder / f"{i:05d}.png")
    return folder


class PeakMemory:
    """Peak resident memory of this process and every descendant (Ray's raylet and workers included)."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self.every)

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def tree_rss(root: int) -> int:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        grown = tree | {p for p, parent in parents.items() if parent in tree}
        grew, tree = grown != tree, grown
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def plain_loop(folder: Path, model: Path, workers: int, batch_size: int) -> tuple[float, float]:
    """(steady images/s, whole images/s) of ``workers`` threads, each loading its own engine, over the files
    in blocks of ``batch_size`` (no Ray), writing the same table parts as the job."""
    from app.batch.sources import folder_items
    from app.batch.table import ResultsTable
    from app.batch.worker import EngineWorker, WorkerConfig

    items = list(folder_items(folder))
    config = WorkerConfig(settings=Settings(model_path=model).model_dump(mode="json"),
                          threads=max(1, (os.cpu_count() or 1) // workers))
    blocks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    table = ResultsTable(Path(tempfile.mkdtemp(prefix="loop", dir=folder.parent)))
    own = threading.local()

    def rows(block):
        if not hasattr(own, "engine"):
            own.engine = EngineWorker(config)
        return own.engine.rows(block)

    start, first = time.perf_counter(), None
    with ThreadPoolExecutor(workers) as pool:
        for done in pool.map(rows, blocks):
            table.append(done)
            first = first or (len(done), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return (len(items) - first[0]) / (seconds - first[1]), len(items) / seconds


def ray_job(folder: Path, model: Path, workers: int, batch_size: int) -> tuple[float, float]:
    """(steady images/s, whole images/s including Ray's own start) of the batch job."""
    from app.batch.job import RayOptions, run_on_ray
    from app.batch.sources import folder_items
    from app.batch.table import ResultsTable
    from app.batch.worker import WorkerConfig

    items = list(folder_items(folder))
    config = WorkerConfig(settings=Settings(model_path=model).model_dump(mode="json"), threads=1)
    table = ResultsTable(Path(tempfile.mkdtemp(prefix="ray", dir=folder.parent)))
    start = time.perf_counter()
    report = run_on_ray(items, table, config, RayOptions(workers=workers, batch_size=batch_size), progress=False)
    return report.steady_images_per_second, len(items) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="PNG inputs per throughput run")
    p.add_argument("--dicom-images", type=int, default=60, help="2048 px DICOM inputs per throughput run")
    p.add_argument("--memory-counts", default="200,2000", help="input counts for the peak-memory rows")
    p.add_argument("--batch-size", type=int, default=16, help="PNG blocks (the job's default)")
    p.add_argument("--dicom-batch-size", type=int, default=4,
                   help="DICOM blocks: 4 images of 2048 px are one model run (the worker's pixel bound)")
    p.add_argument("--sets", default="png,dicom", help="which inputs: png (256 px PNG), dicom (2048 px DICOM)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="covidseg-bench-batch-"))
    try:
        chosen = args.sets.split(",")
        sets = {**({"256 px PNG": make_inputs(work / "png", val_images(args.images), None)} if "png" in chosen else {}),
                **({"2048 px DICOM": make_inputs(work / "dicom", val_images(args.dicom_images), 2048)}
                   if "dicom" in chosen else {})}
        lines = ["| inputs | model | workers | plain loop img/s | Ray job img/s | ratio | plain loop, whole | "
                 "Ray job, whole |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, folder in sets.items():
            for label, model in (("fp32", DEFAULT_MODEL_PATH), ("int8", INT8_MODEL)):
                size = args.dicom_batch_size if "DICOM" in name else args.batch_size
                for workers in (1, 2):
                    loop, loop_whole = plain_loop(folder, model, workers, size)
                    steady, whole = ray_job(folder, model, workers, size)
                    lines.append(f"| {name} | {label} | {workers} | {loop:.2f} | {steady:.2f} | {steady / loop:.2f} "
                                 f"| {loop_whole:.2f} | {whole:.2f} |")
                    print(lines[-1], flush=True)
        memory = ["", "| inputs (256 px PNG, int8, 2 workers) | peak memory of the process tree, MB |", "|---:|---:|"]
        for count in (int(c) for c in args.memory_counts.split(",") if c):
            folder = make_inputs(work / f"mem{count}", val_images(count), None)
            with PeakMemory() as peak:
                ray_job(folder, INT8_MODEL, 2, args.batch_size)
            memory.append(f"| {count} | {peak.mb:.0f} |")
            print(memory[-1], flush=True)
        command = "python -m bench.batch" + (f" --images {args.images} --dicom-images {args.dicom_images}"
                                             f" --memory-counts {args.memory_counts}")
        publish("batch", "## Batch job (Ray) against a plain loop over the engine\n\n"
                f"`{command}`, blocks of {args.batch_size} PNGs or {args.dicom_batch_size} DICOMs. img/s is the steady throughput, the rows after the first "
                "block over the time from it to the last row written (the same table parts on both sides); ratio = "
                "Ray job / plain loop. The whole columns divide every input by the whole time: for the plain "
                "loop its engines' model loads, for the Ray job also the embedded Ray's start and the workers' "
                "start (a fixed cost of a few seconds, which an archive amortises).\n\n"
                + "\n".join(lines + memory), write=not args.no_write)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
