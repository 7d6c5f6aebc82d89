"""``python -m app.pacs``: segment the chest X-rays of a PACS and store SEG, SC and SR back.

    python -m app.pacs --orthanc-url http://pacs:8042                      # Orthanc's REST API
    python -m app.pacs --dicomweb-url http://pacs:8042/dicom-web           # any DICOMweb PACS
    python -m app.pacs --dicomweb-url ... --study 1.2.840...               # one study
    python -m app.pacs --dicomweb-url ... --from 20260101 --to 20260131    # a study-date range
    python -m app.pacs --dicomweb-url ... --watch --from 20260101          # keep polling until stopped

Before making a result it asks the PACS whether that result of this model version already
exists, so re-runs (even with the state file lost) add nothing. Every flag has an environment
variable COVIDSEG_PACS_<FLAG> (e.g. COVIDSEG_PACS_DICOMWEB_URL); selection rules are COVIDSEG_SELECT_*
(the PACS is asked for COVIDSEG_SELECT_MODALITIES only: CR and DX by default).
Exit status: 0 done, 3 instances left pending (service or PACS unreachable), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from functools import partial
from pathlib import Path

from app.core.logs import configure_logging
from app.core.config import Settings, get_settings
from app.pacs.bridge import Bridge, Job, Summary, describe_failure
from app.pacs.dicomweb import DicomWebClient
from app.pacs.instance import Pacs
from app.pacs.orthanc import OrthancClient
from app.pacs.service_client import ServiceClient
from app.pacs.state import BridgeState
from app.pipeline.dicom.common import KINDS
from app.pipeline.select import SelectionRules


def parse_args(argv: list[str] | None, s: Settings) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.pacs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--orthanc-url", default=s.pacs_orthanc_url, help="Orthanc REST API base URL")
    where.add_argument("--dicomweb-url", default=s.pacs_dicomweb_url, help="DICOMweb base URL (QIDO/WADO/STOW-RS)")
    p.add_argument("--user", default=s.pacs_user, help="PACS user (HTTP basic auth)")
    p.add_argument("--password", default=s.pacs_password)
    p.add_argument("--service-url", default=s.pacs_service_url)
    p.add_argument("--api-key", default=s.pacs_api_key, help="X-API-Key for the service")
    p.add_argument("--threshold", type=float, default=s.pacs_threshold, help="default: the model card's")
    p.add_argument("--outputs", default=",".join(s.pacs_outputs), help=f"results per image: {','.join(KINDS)}")
    p.add_argument("--state-file", type=Path, default=s.pacs_state_file)
    p.add_argument("--study", help="only this StudyInstanceUID")
    p.add_argument("--from", dest="date_from", help="study date from (YYYYMMDD)")
    p.add_argument("--to", dest="date_to", help="study date to (YYYYMMDD)")
    p.add_argument("--retries", type=int, default=s.pacs_retries, help="attempts per call before leaving work pending")
    p.add_argument("--retry-wait", type=float, default=s.pacs_retry_wait, help="first backoff wait, seconds")
    p.add_argument("--watch", action="store_true", help="keep polling the PACS until stopped (Ctrl-C, SIGTERM)")
    p.add_argument("--interval", type=float, default=s.pacs_watch_interval, help="--watch: seconds between polls")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        p.error("--threshold must be in [0, 1]")
    if not (args.orthanc_url or args.dicomweb_url):
        args.orthanc_url = "http://127.0.0.1:8042"
    args.outputs = [k.strip() for k in args.outputs.split(",") if k.strip()]
    if not args.outputs or set(args.outputs) - set(KINDS):
        p.error(f"--outputs takes one or more of {', '.join(KINDS)}")
    return args


def connect(args: argparse.Namespace) -> Pacs:
    if args.dicomweb_url:
        return DicomWebClient(args.dicomweb_url, args.user, args.password)
    return OrthancClient(args.orthanc_url, args.user, args.password)


def one_pass(bridge: Bridge, pacs: Pacs, args: argparse.Namespace) -> Summary | None:
    # Ask the PACS only for the modalities the selection admits (COVIDSEG_SELECT_MODALITIES).
    find = partial(pacs.find_instances, modalities=bridge.job.rules.modalities)
    try:
        instances = bridge.retry(find, args.study, args.date_from, args.date_to)
    except Exception as exc:  # noqa: BLE001 - reported, nothing started
        print(f"cannot list instances in {pacs.describe()}: {describe_failure(exc)}", file=sys.stderr)
        return None
    return bridge.run(instances, progress=not args.no_progress)


def watch(bridge: Bridge, pacs: Pacs, args: argparse.Namespace) -> int:
    """Poll until SIGINT/SIGTERM; each pass that did something prints its table."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("app.pacs").info("watching %s every %.0f s", pacs.describe(), args.interval)
    while not stop.is_set():
        summary = one_pass(bridge, pacs, args)
        if summary is not None and (summary.processed or summary.failed or summary.pending or summary.skipped):
            print(summary.table(), flush=True)
        stop.wait(args.interval)
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    args = parse_args(argv, settings)
    pacs, service = connect(args), ServiceClient(args.service_url, args.api_key)
    try:
        try:
            model, default_threshold, tta = service.model()
        except Exception as exc:  # noqa: BLE001 - reported, nothing started
            print(f"cannot reach the service at {args.service_url}: {describe_failure(exc)}", file=sys.stderr)
            return 3
        threshold = default_threshold if args.threshold is None else args.threshold
        job = Job(model, threshold, args.outputs, SelectionRules.from_settings(settings), tta)
        bridge = Bridge(pacs, service, BridgeState(args.state_file), job, args.retries, args.retry_wait)
        if args.watch:
            return watch(bridge, pacs, args)
        summary = one_pass(bridge, pacs, args)
    finally:
        service.close()
        pacs.close()
    if summary is None:
        return 3
    print(summary.table())
    if summary.interrupted:
        return 130
    return 3 if summary.pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
