"""The node's segmenter on a real spool and the shipped model, without the network: a spool item that is a
bare dataset (no preamble, no File Meta, as an archive keeps them and an administrator may queue them) is
read as its Part 10 file is, its UIDs found for the done record, and its results are the file's."""

from __future__ import annotations

import pydicom
import pytest

from app.core.config import Settings
from app.engine import Engine
from app.node.done import DoneRecord
from app.node.spool import Spool
from app.node.worker import Deliverer, Header, Segmenter
from tests.conftest import fixture_images, model_under_test
from tests.dicom_fixtures import make_cxr_dicom, read, without_file_meta

COVID = fixture_images("Val", "COVID-19")[0]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_settings(Settings(model_path=model_under_test()))


def results_of(engine: Engine, spool_root, data: bytes) -> tuple[dict[str, pydicom.Dataset], DoneRecord]:
    spool = Spool(spool_root)
    done = DoneRecord(spool_root / "done.sqlite", 100)
    segmenter = Segmenter(spool, engine, ["seg", "sr"], 0.4, Deliverer(spool, []), done=done)
    path = spool.incoming / "item.dcm"
    path.write_bytes(data)
    segmenter.segment(path)
    assert not list(spool.failed.iterdir()) and not path.exists()
    made = {p.stem.rsplit("-", 1)[1]: pydicom.dcmread(p) for p in spool.outgoing.glob("*.dcm")}
    return made, done


def test_a_bare_dataset_in_the_spool_is_segmented_as_its_file(engine, tmp_path):
    part10 = make_cxr_dicom(COVID, photometric="MONOCHROME1")
    bare = without_file_meta(part10)
    source = read(part10)
    assert Header.read(bare).sop_instance_uid == source.SOPInstanceUID  # the done record's key and the audit's
    from_bare, done = results_of(engine, tmp_path / "bare", bare)
    from_file, _ = results_of(engine, tmp_path / "file", part10)
    assert sorted(from_bare) == ["seg", "sr"]
    for kind in from_bare:
        assert from_bare[kind].SOPInstanceUID == from_file[kind].SOPInstanceUID  # the same object, by its UID
        assert from_bare[kind].StudyInstanceUID == source.StudyInstanceUID
    assert from_bare["seg"].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert (from_bare["seg"].pixel_array == from_file["seg"].pixel_array).all()
    assert len(done) == 1  # recorded under its SOP Instance UID: sent again, it is not segmented again
