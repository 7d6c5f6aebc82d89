"""``python -m app.pacs``: segment the CR/DX X-rays of an Orthanc PACS and store SEG + SC back.

    python -m app.pacs --orthanc-url http://pacs:8042 --service-url http://localhost:8000
    python -m app.pacs --study 1.2.840...          # one study
    python -m app.pacs --from 20260101 --to 20260131 # a study-date range

Instances already processed (the state file) are skipped, so re-runs add nothing.
Every flag has an environment variable: COVIDSEG_PACS_<FLAG> (e.g. COVIDSEG_PACS_ORTHANC_URL).
Exit status: 0 done, 3 instances left pending (service or Orthanc unreachable), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.pacs.bridge import Bridge
from app.pacs.orthanc import OrthancClient
from app.pacs.state import BridgeState


class PacsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COVIDSEG_PACS_", extra="ignore")

    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_user: str | None = None
    orthanc_password: str | None = None
    service_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    threshold: float | None = Field(None, ge=0, le=1)
    state_file: Path = Path("covidseg-pacs-state.json")
    retries: int = Field(5, ge=1)
    retry_wait: float = Field(1.0, ge=0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    s = PacsSettings()
    p = argparse.ArgumentParser(prog="python -m app.pacs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orthanc-url", default=s.orthanc_url)
    p.add_argument("--orthanc-user", default=s.orthanc_user)
    p.add_argument("--orthanc-password", default=s.orthanc_password)
    p.add_argument("--service-url", default=s.service_url)
    p.add_argument("--api-key", default=s.api_key, help="X-API-Key for the service")
    p.add_argument("--threshold", type=float, default=s.threshold, help="default: the model card's")
    p.add_argument("--state-file", type=Path, default=s.state_file)
    p.add_argument("--study", help="only this StudyInstanceUID")
    p.add_argument("--from", dest="date_from", help="study date from (YYYYMMDD)")
    p.add_argument("--to", dest="date_to", help="study date to (YYYYMMDD)")
    p.add_argument("--retries", type=int, default=s.retries, help="attempts per call before leaving work pending")
    p.add_argument("--retry-wait", type=float, default=s.retry_wait, help="first backoff wait, seconds")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        p.error("--threshold must be in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    orthanc = OrthancClient(args.orthanc_url, args.orthanc_user, args.orthanc_password)
    bridge = Bridge(orthanc, args.service_url, BridgeState(args.state_file), args.threshold, args.api_key,
                    args.retries, args.retry_wait)
    try:
        try:
            instances = bridge.retry(orthanc.find_instances, args.study, args.date_from, args.date_to)
        except Exception as exc:  # noqa: BLE001 - reported, nothing started
            print(f"cannot list instances in Orthanc at {args.orthanc_url}: {exc}", file=sys.stderr)
            return 3
        summary = bridge.run(instances, progress=not args.no_progress)
    finally:
        bridge.close()
        orthanc.close()
    print(summary.table())
    if summary.interrupted:
        return 130
    return 3 if summary.pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
