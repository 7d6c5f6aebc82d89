"""What a batch job segments: the items of a folder, a manifest or a PACS, as light records (a path or a
PACS id, never pixels), so that a 100,000-image archive is listed in a few MB."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.pacs.instance import Pacs


class SourceError(ValueError):
    """A source the job cannot list (no such folder, a manifest without a ``path`` column...)."""


@dataclass(frozen=True)
class Item:
    """One input. ``source`` is what the results table calls it: the path as listed, or for a PACS the
    SOP Instance UID. ``told`` is what the PACS listing said of its selection attributes (JSON), for
    the worker to judge before it downloads anything."""

    source: str
    path: str = ""
    pacs_id: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    told: str = ""


def folder_items(root: Path) -> Iterator[Item]:
    """Every file under ``root``, recursively and in a stable order; hidden files and folders are left
    out. What a file is (DICOM, PNG, JPEG or nothing usable) is decided from its content when read."""
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder")
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = os.path.join(folder, name)
                yield Item(source=path, path=path)


def manifest_items(manifest: Path) -> Iterator[Item]:
    """The ``path`` column of a CSV or Parquet file; relative paths are relative to the manifest's folder."""
    paths = _parquet_paths(manifest) if manifest.suffix.lower() == ".parquet" else _csv_paths(manifest)
    for listed in paths:
        if listed:
            path = listed if os.path.isabs(listed) else str(manifest.parent / listed)
            yield Item(source=listed, path=path)


def _csv_paths(manifest: Path) -> Iterable[str]:
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise SourceError(f"{manifest.name}: a manifest needs a 'path' column (found {reader.fieldnames})")
        yield from ((row["path"] or "").strip() for row in reader)


def _parquet_paths(manifest: Path) -> Iterable[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(manifest).names
    if "path" not in names:
        raise SourceError(f"{manifest.name}: a manifest needs a 'path' column (found {names})")
    for batch in pq.ParquetFile(manifest).iter_batches(columns=["path"]):
        yield from (str(p or "").strip() for p in batch.column(0).to_pylist())


def pacs_items(pacs: Pacs, modalities: tuple[str, ...], study: str | None = None, date_from: str | None = None,
               date_to: str | None = None) -> Iterator[Item]:
    """The instances of the selected modalities (one listing; the selection rules are applied by the
    workers, on what the PACS tells before any download and on the file after)."""
    for instance in pacs.find_instances(study, date_from, date_to, modalities=modalities):
        yield Item(source=instance.sop_instance_uid, pacs_id=instance.pacs_id,
                   study_instance_uid=instance.study_instance_uid,
                   series_instance_uid=instance.series_instance_uid,
                   told=json.dumps(dict(instance.attributes)) if instance.attributes else "")


def pending(items: Iterable[Item], done: set[str]) -> list[Item]:
    """The items not yet in the results table, each source once (a manifest may list a file twice)."""
    seen = set(done)
    left = []
    for item in items:
        if item.source not in seen:
            seen.add(item.source)
            left.append(item)
    return left
