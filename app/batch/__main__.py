"""``python -m app.batch``: segment a whole archive on Ray and write one results row per input.

    python -m app.batch /archive/cxr --out runs/archive               # a folder (recursive)
    python -m app.batch manifest.csv --out runs/m                     # a CSV or Parquet with a 'path' column
    python -m app.batch --dicomweb-url http://pacs/dicom-web --from 20200101 --to 20201231 --out runs/2020
    python -m app.batch /archive --out runs/a --ray-address ray://head:10001 --workers 8

Results: DIR/results/ (Parquet: pyarrow.parquet.read_table("DIR/results")), a summary on stdout,
DIR/ppar_distribution.png and DIR/severity_histogram.png. A rerun with the same --out does only what
is not in the table yet. Settings (model, selection rules COVIDSEG_SELECT_*, PACS credentials
COVIDSEG_PACS_USER/_PASSWORD) come from the environment as for the service and the bridge.
Exit status: 0 done, 2 bad arguments or source, 3 inputs left pending (the PACS did not answer: rerun).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from app.batch.job import RayOptions
from app.batch.report import plot, summary
from app.batch.sources import Item, SourceError, folder_items, manifest_items, pacs_items, pending
from app.batch.table import ResultsTable
from app.batch.worker import PacsSpec, WorkerConfig
from app.core.config import Settings, settings_from_environment
from app.core.logs import configure_logging
from app.pipeline.dicom.common import KINDS
from app.pipeline.select import SelectionRules

log = logging.getLogger("app.batch")
RAY_DEFAULTS = RayOptions()


def parse_args(argv: list[str] | None, s: Settings) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", type=Path, help="a folder, or a manifest (.csv or .parquet, column 'path')")
    p.add_argument("--out", type=Path, required=True, help="where results/, dicom/ and the plots go")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dicomweb-url", help="a DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS)")
    where.add_argument("--orthanc-url", help="an Orthanc PACS (REST API)")
    p.add_argument("--user", default=s.pacs_user, help="PACS user (default COVIDSEG_PACS_USER)")
    p.add_argument("--password", default=s.pacs_password, help="PACS password (default COVIDSEG_PACS_PASSWORD)")
    p.add_argument("--study", help="PACS: only this StudyInstanceUID")
    p.add_argument("--from", dest="date_from", help="PACS: study date from (YYYYMMDD)")
    p.add_argument("--to", dest="date_to", help="PACS: study date to (YYYYMMDD)")
    p.add_argument("--threshold", type=float, help="infection threshold (default: the model card's)")
    p.add_argument("--tta", choices=["none", "flip"], help="test-time augmentation (default COVIDSEG_TTA)")
    p.add_argument("--outputs", default="", help=f"DICOM results for DICOM inputs: a comma list of {','.join(KINDS)}")
    p.add_argument("--stow", action="store_true", help="store the DICOM results back to the PACS, not in DIR/dicom")
    p.add_argument("--ignore-selection", action="store_true",
                   help="segment DICOM inputs the COVIDSEG_SELECT_* rules leave out (research use)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: an embedded local Ray)")
    p.add_argument("--workers", type=int, default=RAY_DEFAULTS.workers, help="engines in the actor pool")
    p.add_argument("--cpus-per-worker", type=float, help="default: the cluster's CPUs / workers")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 0.5 for two engines per GPU")
    p.add_argument("--batch-size", type=int, default=RAY_DEFAULTS.batch_size, help="inputs per block given to a worker (it segments "
                   "them in model runs of at most 4 images of 2048 px: memory stays bounded for large images)")
    p.add_argument("--object-store-mb", type=int, default=RAY_DEFAULTS.object_store_mb,
                   help="local Ray: object store cap")
    p.add_argument("--local-cpus", type=int, help="local Ray: CPUs it may use (default: all)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.outputs = tuple(k.strip() for k in args.outputs.split(",") if k.strip())
    problems = [f"--outputs takes {', '.join(KINDS)}" for k in args.outputs if k not in KINDS][:1]
    if (args.source is None) == (args.dicomweb_url is None and args.orthanc_url is None):
        problems.append("give a SOURCE folder or manifest, or --dicomweb-url / --orthanc-url")
    if args.stow and not (args.dicomweb_url or args.orthanc_url):
        problems.append("--stow stores back to the PACS the inputs came from: it needs a PACS source")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        problems.append("--threshold must be in [0, 1]")
    if args.workers < 1 or args.batch_size < 1:
        problems.append("--workers and --batch-size must be at least 1")
    if problems:
        p.error("; ".join(problems))
    return args


def pacs_spec(args: argparse.Namespace) -> PacsSpec | None:
    if args.dicomweb_url:
        return PacsSpec("dicomweb", args.dicomweb_url, args.user, args.password)
    if args.orthanc_url:
        return PacsSpec("orthanc", args.orthanc_url, args.user, args.password)
    return None


def list_items(args: argparse.Namespace, settings: Settings, pacs: PacsSpec | None) -> list[Item]:
    if pacs is not None:
        client = pacs.connect()
        try:
            return list(pacs_items(client, SelectionRules.from_settings(settings).modalities, args.study,
                                   args.date_from, args.date_to))
        finally:
            client.close()
    if args.source.is_dir():
        return list(folder_items(args.source))
    if args.source.is_file():
        return list(manifest_items(args.source))
    raise SourceError(f"{args.source} is neither a folder nor a manifest file")


def main(argv: list[str] | None = None) -> int:
    from app.batch.job import run_on_ray

    settings = settings_from_environment()
    args = parse_args(argv, settings)
    configure_logging(settings.log_level)
    pacs = pacs_spec(args)
    table = ResultsTable(args.out)
    try:
        todo = pending(list_items(args, settings, pacs), table.done_sources())
    except (SourceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%d inputs to segment (%d already in the table)", len(todo), table.read(["source"]).num_rows)
    config = WorkerConfig(settings=settings.model_dump(mode="json"), threads=1, threshold=args.threshold,
                          tta=args.tta, outputs=args.outputs, dicom_dir=str(args.out / "dicom"), stow=args.stow,
                          pacs=pacs, selection=not args.ignore_selection)
    options = RayOptions(address=args.ray_address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                         gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size,
                         object_store_mb=args.object_store_mb, local_cpus=args.local_cpus)
    start = time.perf_counter()
    report = run_on_ray(todo, table, config, options, progress=not args.no_progress)
    everything = table.read()
    print(summary(everything, report.written, report.images_per_second))
    left = report.counts.get("pending", 0)
    if left:
        print(f"{left} inputs pending (the PACS did not answer): run the same command again for them")
    for path in plot(everything, args.out):
        print(f"wrote {path}")
    log.info("done in %.1f s", time.perf_counter() - start)
    return 3 if left else 0


if __name__ == "__main__":
    sys.exit(main())
