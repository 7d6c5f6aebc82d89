"""``python -m app.node.health``: exit 0 when both node workers marked themselves alive recently.

A listening port says nothing of the threads behind it: a segmenter that died or hangs leaves
the node accepting images it never processes. The node marks each worker alive in
``<spool>/.alive-<name>`` every ``COVIDSEG_NODE_HEARTBEAT_INTERVAL`` seconds (10) while its thread runs and
has made progress within ten minutes (idle, backing off from a destination that is down, or busy with one
long image alike: app.node.worker.Heartbeat); this check (the compose healthcheck, the Kubernetes probes)
fails when either mark is older than ``--max-age`` seconds (default: six beats, and at least a minute). So a
node killed, or a worker dead, reads unhealthy within about a minute; a hung worker within ten minutes and one.
"""

from __future__ import annotations

import argparse
import sys

from app.core.config import settings_from_environment
from app.node.spool import beat_age

WORKERS = ("segmenter", "deliverer")
#: Missed beats before a mark counts as stale: room for a busy machine to be late with a few.
BEATS_MISSED = 6
MIN_MAX_AGE_S = 60.0


def default_max_age(heartbeat_interval: float) -> float:
    """The default limit, seconds: ``BEATS_MISSED`` beats, at least a minute (60 s at the default 10 s beat)."""
    return max(MIN_MAX_AGE_S, BEATS_MISSED * heartbeat_interval)


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_environment()
    p = argparse.ArgumentParser(prog="python -m app.node.health", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spool-dir", default=settings.node_spool_dir)
    p.add_argument("--max-age", type=float, default=default_max_age(settings.node_heartbeat_interval))
    args = p.parse_args(argv)
    ages = {w: beat_age(args.spool_dir, w) for w in WORKERS}
    stale = [w for w, age in ages.items() if age is None or age > args.max_age]
    described = ", ".join(f"{w} {'never' if a is None else f'{a:.0f} s ago'}" for w, a in ages.items())
    print(f"{'unhealthy' if stale else 'healthy'}: last alive {described} (limit {args.max_age:.0f} s)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
