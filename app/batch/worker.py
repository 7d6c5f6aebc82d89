"""A batch worker: one engine (one ONNX Runtime session) that turns a block of items into table rows.

Ray Data runs a pool of these as actors; each reads its own inputs (so pixels never pass through the
object store), segments the block in one model run, writes or stores the DICOM results it was asked
for, and returns only small rows. A bad input is a ``failed`` row with its code, never an exception.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.batch.sources import Item
from app.batch.table import PENDING
from app.engine import Engine, Measurements
from app.pacs.service_client import is_transient
from app.pipeline.dicom.common import result_uid
from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import LoadedImage
from app.pipeline.select import NOT_SELECTED

log = logging.getLogger("app.batch")


@dataclass(frozen=True)
class PacsSpec:
    """How a worker reaches the PACS (it makes its own client)."""

    kind: str  # "dicomweb" or "orthanc"
    url: str
    user: str | None = None
    password: str | None = None

    def connect(self):
        from app.pacs.dicomweb import DicomWebClient
        from app.pacs.orthanc import OrthancClient

        client = DicomWebClient if self.kind == "dicomweb" else OrthancClient
        return client(self.url, self.user, self.password)


@dataclass(frozen=True)
class WorkerConfig:
    settings: dict[str, Any]  # Settings as JSON: the workers of a cluster do not share the driver's environment
    threads: int  # ONNX Runtime intra-op threads: this worker's share of the cores
    threshold: float | None = None
    tta: str | None = None
    outputs: tuple[str, ...] = ()
    dicom_dir: str | None = None  # write DICOM results here, or
    stow: bool = False  # store them back to the PACS
    pacs: PacsSpec | None = None
    selection: bool = True  # apply the COVIDSEG_SELECT_* rules to DICOM inputs
    #: Most image pixels in one model run: 4 images of 2048 px (about 350 MB at full size, bench memory
    #: table), 64 of 256 px.
    run_pixels: int = 4 * 2048 * 2048


def row(item: Item, status: str, error_code: str | None = None, **figures: Any) -> dict[str, Any]:
    base = {"source": item.source, "status": status, "error_code": error_code,
            "study_instance_uid": item.study_instance_uid or None,
            "series_instance_uid": item.series_instance_uid or None,
            "sop_instance_uid": item.source if item.pacs_id else None}
    return {**base, **figures}


class EngineWorker:
    """The callable class Ray Data's ``map_batches`` builds once per actor."""

    def __init__(self, config: WorkerConfig):
        from app.core.config import Settings

        self.config = config
        self.engine = Engine.from_settings(Settings(**config.settings), intra_op_threads=config.threads)
        self.pacs = config.pacs.connect() if config.pacs else None
        info = self.engine.model.info
        self.model_fields = {"model_version": info.version, "model_sha256": info.sha256}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        items = [Item(**{k: str(batch[k][i]) for k in batch}) for i in range(len(batch["source"]))]
        rows = self.rows(items)
        return {key: [r.get(key) for r in rows] for key in _COLUMNS}

    def rows(self, items: list[Item]) -> list[dict[str, Any]]:
        """Read and check each item and segment the readable ones, in model runs of at most
        ``run_pixels`` pixels of images: a block of small images is one run, large ones go a few at a time,
        so a worker holds a bounded amount of pixels whatever the block size."""
        done: dict[int, dict[str, Any]] = {}
        loaded: list[tuple[int, LoadedImage]] = []
        for i, item in enumerate(items):
            try:
                loaded.append((i, self.load(item)))
            except PipelineError as exc:
                done[i] = row(item, "skipped" if exc.code == NOT_SELECTED else "failed", exc.code, **self.model_fields)
            except Exception as exc:  # noqa: BLE001 - one bad input must not end the job; logged by type only
                if is_transient(exc):  # the PACS unreachable or busy: not the input's fault, left for a rerun
                    log.warning("the PACS did not answer for an input (%s): left pending", type(exc).__name__)
                    done[i] = row(item, PENDING, "pacs_unreachable")
                    continue
                log.warning("an input could not be read: %s", type(exc).__name__)
                done[i] = row(item, "failed", "internal_error", **self.model_fields)
            if sum(im.width * im.height for _, im in loaded) >= self.config.run_pixels or i == len(items) - 1:
                done.update(self.segmented(items, loaded))
                loaded = []
        return [done[i] for i in range(len(items))]

    def segmented(self, items: list[Item], loaded: list[tuple[int, LoadedImage]]) -> dict[int, dict[str, Any]]:
        """One model run for ``loaded``; each image's finished row by its place in the block."""
        if not loaded:
            return {}
        try:
            segs = self.engine.segment_each([im for _, im in loaded], self.config.threshold, self.config.tta)
        except Exception as exc:  # noqa: BLE001 - a failed run fails its inputs, not the job; logged by type only
            log.warning("a model run failed: %s", type(exc).__name__)
            return {i: row(items[i], "failed", "inference_failed", **self.model_fields) for i, _ in loaded}
        return {i: self.refused(items[i], im, seg) if isinstance(seg, PipelineError) else self.finished(items[i], im, seg)
                for (i, im), seg in zip(loaded, segs)}

    def refused(self, item: Item, loaded: LoadedImage, refusal: PipelineError) -> dict[str, Any]:
        """An image the model cannot judge: a row with the judgement's code, no figures, no DICOM result."""
        uids = loaded.dicom.uids() if loaded.dicom is not None else {}
        return {**row(item, "refused", refusal.code, **self.model_fields), **uids}

    def load(self, item: Item) -> LoadedImage:
        """The item read: a PACS instance judged by what the PACS tells before it is fetched, every DICOM by
        its header before its pixels are decoded (a skipped one costs no decoding)."""
        if item.pacs_id or item.told:
            self.judge_before_download(item)
        data = self.pacs.download(_instance(item)) if self.pacs else _read_file(item.path)
        return self.engine.read(data, filename=item.path or None, selection=self.config.selection)

    def judge_before_download(self, item: Item) -> None:
        """A PACS instance the rules leave out by what the PACS says of it is not fetched."""
        from app.pacs.bridge import told_header

        if not self.config.selection:
            return
        told = json.loads(item.told) if item.told else self.pacs.selection_attributes(_instance(item))
        reason = self.engine.selection.reason_to_skip(told_header(self.engine.selection, told))
        if reason is not None:
            raise PipelineError(Problem.INVALID, NOT_SELECTED, f"not segmented: {reason}")

    def finished(self, item: Item, loaded: LoadedImage, seg) -> dict[str, Any]:
        figures = Measurements.of(seg).as_dict()
        figures.update(self.model_fields, width=loaded.width, height=loaded.height)
        uids = loaded.dicom.uids() if loaded.dicom is not None else {}
        try:
            outputs = self.write_outputs(loaded, seg) if uids else []
        except PipelineError as exc:
            return row(item, "failed", exc.code, **self.model_fields, **uids)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):  # storing back failed for a while: the input is done again on a rerun
                log.warning("the PACS did not take a result (%s): left pending", type(exc).__name__)
                return row(item, PENDING, "pacs_unreachable")
            log.warning("a DICOM result could not be written or stored: %s", type(exc).__name__)
            return row(item, "failed", "output_failed", **self.model_fields, **uids)
        return {**row(item, "ok", None, **figures), **uids, "outputs": ",".join(outputs) or None}

    def write_outputs(self, loaded: LoadedImage, seg) -> list[str]:
        written = []
        for kind in self.config.outputs:
            data = self.engine.dicom(kind, seg, loaded)
            if self.config.stow:
                self.pacs.upload(data)
            else:
                uid = result_uid(kind, loaded.dicom.sop_instance_uid, self.engine.model.info.sha256, seg.threshold,
                                 seg.tta)
                _write_private(Path(self.config.dicom_dir), Path(kind) / f"{uid}.dcm", data)
            written.append(kind)
        return written


_COLUMNS = ("source", "status", "error_code", "ppar", "infected_lung_share", "lung_fraction", "severity",
            "infection_pixels", "lung_pixels", "width", "height", "threshold", "region_peak_threshold",
            "model_version", "model_sha256", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
            "outputs")


def _instance(item: Item):
    from app.pacs.instance import Instance

    return Instance(item.source, item.series_instance_uid, item.study_instance_uid, item.pacs_id)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise PipelineError(Problem.EMPTY, "unreadable_file", f"cannot read the file: {exc.strerror}") from None


def _write_private(root: Path, relative: Path, data: bytes) -> None:
    """Patient data: owner-only folders (``root`` and those below it) and files, written whole or not at all."""
    folder = root
    for part in (None, *relative.parent.parts):
        folder = folder / part if part else folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
    path = root / relative
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
