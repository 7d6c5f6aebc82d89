"""The end of a batch job: a summary table (by status, by severity, images/s) and plots of the whole
results table (the PPAR distribution and the severity histogram)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from app.batch.table import STATUSES
from app.pipeline.postprocess import severity_ranges


def summary(table: pa.Table, written_now: int, images_per_second: float) -> str:
    status = Counter(table.column("status").to_pylist())
    ok = table.filter(pa.compute.equal(table.column("status"), "ok"))
    severity = Counter(ok.column("severity").to_pylist())
    codes = Counter(c for c in table.column("error_code").to_pylist() if c)
    rows = [("inputs in the table", table.num_rows), ("added by this run", written_now)]
    rows += [(s, status.get(s, 0)) for s in STATUSES]
    rows += [(f"  severity {grade}", severity.get(grade, 0)) for grade, _ in severity_ranges()]
    rows += [(f"  code {code}", n) for code, n in sorted(codes.items())]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {count:>8}" for name, count in rows]
    lines.append(f"{'images/s (this run)':<{width}}  {images_per_second:>8.2f}")
    return "\n".join(lines)


def plot(table: pa.Table, out: Path) -> list[Path]:
    """``ppar_distribution.png`` and ``severity_histogram.png`` in ``out``, over every ok row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table.filter(pa.compute.equal(table.column("status"), "ok"))
    ppar = [100 * v for v in ok.column("ppar").to_pylist()]
    grades = [g for g, _ in severity_ranges()]
    counts = Counter(ok.column("severity").to_pylist())
    threshold = sorted(set(ok.column("threshold").to_pylist())) or ["-"]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ppar, bins=50, range=(0, 100), color="#c0392b")
    ax.set(xlabel=f"PPAR % (threshold {', '.join(map(str, threshold))})", ylabel="images",
           title=f"PPAR distribution, {len(ppar)} images")
    fig.tight_layout()
    written.append(out / "ppar_distribution.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(grades, [counts.get(g, 0) for g in grades], color="#2980b9")
    ax.set(xlabel="severity", ylabel="images", title=f"Severity, {len(ppar)} images")
    fig.tight_layout()
    written.append(out / "severity_histogram.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
