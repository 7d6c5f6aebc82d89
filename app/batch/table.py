"""The results table of a batch job: ``DIR/results/`` as Parquet part files, one row per input.

A part is written to a hidden temporary name, flushed, then renamed: the rename is the commit, so a
job killed at any moment (SIGKILL included) leaves whole parts only, and Parquet readers skip the
hidden leftovers. A rerun reads the sources already there and does not do them again.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: One row per input. No patient name, ID or accession number is ever a column.
SCHEMA = pa.schema([
    ("source", pa.string()),  # the path as listed, or the SOP Instance UID of a PACS input
    ("status", pa.string()),  # ok, failed, skipped (left out by the selection rules) or refused (the judgement)
    ("error_code", pa.string()),  # the service's code (corrupt_image, not_selected, no_contrast...); null when ok
    ("ppar", pa.float64()),
    ("infected_lung_share", pa.float64()),
    ("lung_fraction", pa.float64()),
    ("severity", pa.string()),
    ("infection_pixels", pa.int64()),
    ("lung_pixels", pa.int64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("threshold", pa.float64()),
    ("region_peak_threshold", pa.float64()),
    ("model_version", pa.string()),
    ("model_sha256", pa.string()),
    ("study_instance_uid", pa.string()),
    ("series_instance_uid", pa.string()),
    ("sop_instance_uid", pa.string()),
    ("outputs", pa.string()),  # DICOM results written or stored (seg,sc,sr)
])
#: refused: an image the model cannot judge (no_contrast, not_a_chest_radiograph, appears_inverted).
STATUSES = ("ok", "failed", "skipped", "refused")
#: A worker's answer for an input the PACS did not deliver or take (unreachable, busy): never written to
#: the table, so a rerun does it again.
PENDING = "pending"


class ResultsTable:
    """``out/results``: what is done, and where new rows go."""

    def __init__(self, out: Path):
        self.dir = out / "results"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def parts(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith((".", "_")))

    def read(self, columns: list[str] | None = None) -> pa.Table:
        parts = self.parts()
        if not parts:
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        return pq.read_table(self.dir, columns=columns, schema=SCHEMA)

    def done_sources(self) -> set[str]:
        """Every source with a row (ok, failed or skipped): a rerun does none of them again."""
        return set(self.read(["source"]).column("source").to_pylist())

    def append(self, rows: Iterable[dict]) -> int:
        """Write ``rows`` as one new part (atomically); returns how many."""
        table = pa.Table.from_pylist([r for r in rows if r["status"] != PENDING], schema=SCHEMA)
        if table.num_rows == 0:
            return 0
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = self.dir / f".{name}.tmp"
        pq.write_table(table, temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.dir / name)
        _fsync_folder(self.dir)
        return table.num_rows


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
