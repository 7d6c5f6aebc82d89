"""The batch worker without Ray: a block is segmented in model runs bounded by pixels, and each row is
what the image gets alone."""

from __future__ import annotations

from pathlib import Path

from app.batch.sources import Item
from app.batch.worker import EngineWorker, WorkerConfig
from app.core.config import Settings
from tests.conftest import fixture_images, model_under_test

IMAGES = fixture_images("Val", "COVID-19") + fixture_images("Val", "Normal")


def worker(run_pixels: int) -> tuple[EngineWorker, list[int]]:
    settings = Settings(model_path=model_under_test()).model_dump(mode="json")
    w = EngineWorker(WorkerConfig(settings=settings, threads=1, run_pixels=run_pixels))
    runs: list[int] = []
    segment = w.engine.segment_each

    def counted(images, *args, **kwargs):
        runs.append(len(images))
        return segment(images, *args, **kwargs)

    w.engine.segment_each = counted
    return w, runs


def test_a_block_is_segmented_in_runs_bounded_by_pixels_with_the_same_rows(tmp_path: Path):
    cut = tmp_path / "cut.png"
    cut.write_bytes(IMAGES[0].read_bytes()[:300])
    items = [Item(source=str(p), path=str(p)) for p in [*IMAGES, cut]]
    bounded, runs = worker(run_pixels=2 * 256 * 256)  # two dataset images per run
    rows = bounded.rows(items)
    assert runs == [2, 2] and len(IMAGES) == 4
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"] and rows[-1]["error_code"] == "corrupt_image"
    alone, _ = worker(run_pixels=1)
    for item, r in zip(items[:4], rows):
        assert alone.rows([item])[0] == r  # a row does not depend on its company


def test_an_unreachable_pacs_leaves_inputs_pending_and_out_of_the_table(tmp_path: Path):
    from app.batch.table import ResultsTable
    from app.batch.worker import PacsSpec
    from tests.servers import free_port

    settings = Settings(model_path=model_under_test()).model_dump(mode="json")
    down = PacsSpec("dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web")  # nothing listens there
    w = EngineWorker(WorkerConfig(settings=settings, threads=1, pacs=down))
    items = [Item(source="2.25.1", pacs_id="x", study_instance_uid="2.25.2", series_instance_uid="2.25.3",
                  told='{"Modality": "CR"}')]
    rows = w.rows(items)
    assert [(r["status"], r["error_code"]) for r in rows] == [("pending", "pacs_unreachable")]
    table = ResultsTable(tmp_path)
    assert table.append(rows) == 0 and table.done_sources() == set()  # a rerun does it again


def test_a_dicom_without_file_meta_gets_the_row_of_the_file_and_a_skipped_one_is_not_decoded(tmp_path: Path):
    """A bare dataset (no preamble, no File Meta; no extension either, as archives name them) is read by
    its content; a mammogram whose pixel data no decoder reads is skipped by its header, and fails only
    when the rules are off and it must be decoded."""
    from tests.dicom_fixtures import make_cxr_dicom, mammogram, with_garbage_frame, without_file_meta

    part10 = make_cxr_dicom(IMAGES[0], photometric="MONOCHROME1")
    files = {"a.dcm": part10, "IM000001": without_file_meta(part10),
             "mammo.dcm": with_garbage_frame(mammogram(IMAGES[1], compress="jpeg-baseline"))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    items = [Item(source=str(tmp_path / name), path=str(tmp_path / name)) for name in files]
    w, _ = worker(run_pixels=10 ** 8)
    part10_row, bare_row, mammo_row = w.rows(items)
    assert bare_row["status"] == part10_row["status"] == "ok"
    del bare_row["source"], part10_row["source"]
    assert bare_row == part10_row  # the same figures, UIDs and model
    assert (mammo_row["status"], mammo_row["error_code"]) == ("skipped", "not_selected")
    settings = Settings(model_path=model_under_test()).model_dump(mode="json")
    unselected = EngineWorker(WorkerConfig(settings=settings, threads=1, selection=False))
    assert unselected.rows(items[2:])[0]["error_code"] == "corrupt_dicom"
