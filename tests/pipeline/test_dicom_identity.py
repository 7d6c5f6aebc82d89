"""One UID, one object: result UIDs are UUID-derived (2.25.…) from what makes the result, and the same inputs
give byte-identical SEG, SC and SR (dates and times from the source, not the clock); the SR identifies its
private coding scheme. Checked through the real app on the shipped model and with dciodvfy (dicom3tools)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pydicom
import pytest

from app.engine.results import dicom_of
from app.pacs.bridge import Job
from app.pipeline.dicom.common import (KINDS, NO_DATETIME, ModelRef, ResultIdentity, ResultOptions, derived_uid,
                                       result_datetime, result_uid)
from app.pipeline.dicom.read import load_dicom_bytes
from app.pipeline.dicom.sr import SCHEME
from app.pipeline.select import SelectionRules
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.dicom_validate import iod_errors

COVID = fixture_images("Val", "COVID-19")[0]
FORMATS = ("dicom-seg", "dicom-sc", "dicom-sr")
SHA = "ab" * 32
UUID_UID = re.compile(r"2\.25\.(0|[1-9][0-9]*)")
#: The roots the results used to be made under: pydicom's (results) and highdicom's (the SEG's dimensions).
FOREIGN_ROOTS = ("1.2.826.0.1.3680043.8.498.", "1.2.826.0.1.3680043.10.511.")


def assert_uuid_uid(uid: str) -> None:
    assert len(uid) <= 64 and UUID_UID.fullmatch(uid), uid  # digits and dots, no leading zero
    assert int(uid.split(".")[2]) < 2 ** 128


def with_attributes(data: bytes, **attributes) -> bytes:
    ds = read(data)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def post(client, data: bytes, params: str) -> bytes:
    r = client.post(f"/segment?{params}", files={"file": ("x.dcm", data, "application/dicom")})
    assert r.status_code == 200, r.text
    return r.content


# ---------------------------------------------------------------- the UIDs


def test_result_uids_are_uuid_derived_and_deterministic():
    for args in (("seg", "1.2.3.4", SHA, 0.5), ("sr-series", "9" * 64, "f" * 64, 0.0), ("sc", "", "", 1.0)):
        uid = result_uid(*args)
        assert_uuid_uid(uid)
        assert uid == result_uid(*args)  # the same inputs, the same UID
    assert derived_uid("a", "b") != derived_uid("ab", "")  # the names are kept apart, not concatenated


def test_each_input_changes_the_uid():
    base = ("seg", "1.2.3.4", SHA, 0.5)
    changed = [("sc", *base[1:]), (base[0], "1.2.3.5", *base[2:]), (*base[:2], "cd" * 32, base[3]),
               (*base[:3], 0.25)]
    uids = {result_uid(*args) for args in [base, *changed]}
    assert len(uids) == 5


def test_series_and_instance_uids_of_every_kind_differ_and_follow_the_source_series():
    model = ModelRef("m", "1", SHA)
    source = pydicom.Dataset()
    source.SOPInstanceUID, source.SeriesInstanceUID = "1.2.3.4", "1.2.3"
    idents = [ResultIdentity.of(kind, source, model, 0.5) for kind in KINDS]
    uids = [u for ident in idents for u in (ident.series_instance_uid, ident.sop_instance_uid)]
    for uid in uids:
        assert_uuid_uid(uid)
    assert len(set(uids)) == 2 * len(KINDS)
    other = pydicom.Dataset()
    other.SOPInstanceUID, other.SeriesInstanceUID = "1.2.3.5", "1.2.3"  # same series, another image
    assert ResultIdentity.of("seg", other, model, 0.5).series_instance_uid == idents[0].series_instance_uid


@pytest.fixture(scope="module")
def made(service_client) -> tuple[bytes, dict[str, pydicom.Dataset], ModelRef]:
    """One source and its three results, made by the service's own output step on the shipped model."""
    _, service = service_client
    data = make_cxr_dicom(COVID, full_patient=True)
    loaded = load_dicom_bytes(data, 10 ** 8)
    seg = service.engine.segment([loaded], 0.4)[0]
    model = service.model_ref()
    return data, {kind: read(dicom_of(kind, seg, loaded, model, ResultOptions())) for kind in KINDS}, model


def test_every_uid_a_result_makes_is_uuid_derived(made):
    data, results, _ = made
    source = read(data)
    from_source = {str(e.value) for e in source.iterall() if e.VR == "UI"}
    for kind, ds in results.items():
        made_here = [str(e.value) for e in ds.iterall() if e.VR == "UI" and str(e.value) not in from_source
                     and not str(e.value).startswith("1.2.840.10008.")]  # standard SOP classes, syntaxes
        assert made_here, kind
        for uid in made_here:
            assert not uid.startswith(FOREIGN_ROOTS), (kind, uid)
            assert_uuid_uid(uid)


def test_the_bridge_looks_results_up_by_the_uids_the_writers_give(made):
    data, results, model = made
    job = Job(model, 0.4, list(KINDS), SelectionRules())
    assert job.result_uids(read(data).SOPInstanceUID) == {kind: ds.SOPInstanceUID for kind, ds in results.items()}


# ---------------------------------------------------------------- the same inputs, the same bytes


def test_two_requests_give_byte_identical_results(service_client):
    """The reported case: the same SOP Instance UID with another ContentTime/SeriesTime."""
    client, _ = service_client
    data = make_cxr_dicom(COVID)
    for fmt in FORMATS:
        first, again = (post(client, data, f"format={fmt}&threshold=0.4") for _ in range(2))
        assert first == again, fmt
        assert read(first).SOPInstanceUID == read(again).SOPInstanceUID


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the malformed values, on purpose
@pytest.mark.parametrize("attributes, expected", [
    ({"ContentDate": "20250102", "ContentTime": "083015.25", "AcquisitionDate": "20250101"}, ("20250102", "083015.25")),
    ({"AcquisitionDate": "20250103", "AcquisitionTime": "0700"}, ("20250103", "0700")),
    ({"ContentDate": "2025-01-02", "SeriesDate": "20250104", "SeriesTime": "bad"}, ("20250104", "000000")),
    ({"StudyDate": "20260101", "StudyTime": "120000"}, ("20260101", "120000")),
    ({"StudyDate": "", "StudyTime": "120000"}, NO_DATETIME),
])
def test_a_result_takes_the_sources_date_and_time(attributes, expected):
    source = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(source, keyword, value)
    assert result_datetime(source) == expected


@pytest.mark.parametrize("attributes, expected", [
    ({"ContentDate": "20250102", "ContentTime": "083015"}, ("20250102", "083015")),
    ({"StudyDate": "", "StudyTime": ""}, NO_DATETIME),  # no date anywhere
], ids=["content", "none"])
def test_results_carry_the_sources_times_and_pass_dciodvfy(service_client, tmp_path: Path, attributes, expected):
    client, _ = service_client
    data = with_attributes(make_cxr_dicom(COVID, full_patient=True), **attributes)
    for fmt in FORMATS:
        content = post(client, data, f"format={fmt}")
        ds = read(content)
        assert (ds.SeriesDate, ds.SeriesTime) == (ds.ContentDate, ds.ContentTime) == expected, fmt
        clock = ("InstanceCreationDate", "InstanceCreationTime", "DateOfSecondaryCapture", "TimeOfSecondaryCapture")
        assert not [k for k in clock if k in ds], fmt
        assert not [e for e in ds.iterall() if e.keyword == "ContributionDateTime"], fmt
        path = tmp_path / f"{fmt}.dcm"
        path.write_bytes(content)
        assert iod_errors(path) == [], fmt


# ---------------------------------------------------------------- the SR's private coding scheme


def test_the_sr_identifies_its_private_coding_scheme(made, tmp_path: Path):
    sr = made[1]["sr"]
    used = {str(e.value) for e in sr.iterall() if e.keyword == "CodingSchemeDesignator"}
    assert SCHEME in used
    items = {str(i.CodingSchemeDesignator): i for i in sr.CodingSchemeIdentificationSequence}
    private = {s for s in used if s.startswith("99")}
    assert private and private <= set(items)  # every local scheme used is identified
    item = items[SCHEME]
    assert item.CodingSchemeName and item.CodingSchemeResponsibleOrganization
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert iod_errors(path) == []
