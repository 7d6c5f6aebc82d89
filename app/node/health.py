"""``python -m app.node.health``: exit 0 when both node workers marked themselves alive recently.

A listening port says nothing of the threads behind it: a segmenter that died or hangs leaves
the node accepting images it never processes. Each worker touches ``<spool>/.alive-<name>`` at
every pass and every item; this check (the compose healthcheck) fails when either is older than
``--max-age`` seconds (default: the longest delivery backoff wait, twice, plus two minutes, and at
least ten minutes).
"""

from __future__ import annotations

import argparse
import sys

from app.core.config import settings_from_environment
from app.node.spool import beat_age

WORKERS = ("segmenter", "deliverer")


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_environment()
    p = argparse.ArgumentParser(prog="python -m app.node.health", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spool-dir", default=settings.node_spool_dir)
    p.add_argument("--max-age", type=float, default=max(600.0, 2 * settings.node_retry_max_wait + 120))
    args = p.parse_args(argv)
    ages = {w: beat_age(args.spool_dir, w) for w in WORKERS}
    stale = [w for w, age in ages.items() if age is None or age > args.max_age]
    described = ", ".join(f"{w} {'never' if a is None else f'{a:.0f} s ago'}" for w, a in ages.items())
    print(f"{'unhealthy' if stale else 'healthy'}: last alive {described} (limit {args.max_age:.0f} s)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
