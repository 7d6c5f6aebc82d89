"""The bridge's PACS look-ups on their own (fast), answered by httpx's in-process transport with what
Orthanc and DICOMweb servers answer. Against a real Orthanc: tests/pacs/test_bridge.py."""

from __future__ import annotations

import json

import httpx
import pytest

from app.pacs.dicomweb import SERIES, SOP, STUDY, DicomWebClient, multipart_parts, multipart_related
from app.pacs.instance import Instance
from app.pacs.orthanc import OrthancClient

XRAY = ("CR", "DX")


def answering(client, handler) -> list[httpx.Request]:
    """Route ``client``'s requests to ``handler``; returns the list the requests are recorded in."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(record))
    return seen


def qido_item(**tags: str) -> dict:
    return {tag: {"vr": "UI", "Value": [value]} for tag, value in tags.items()}


@pytest.mark.parametrize("payloads", [[b"DICM\r\n--not-a-boundary\r\n\r\n"], [b"a", b"\r\n", b""]])
def test_multipart_round_trips_payloads_that_look_like_its_own_framing(payloads):
    body, content_type = multipart_related(payloads)
    assert multipart_parts(body, content_type) == payloads
    quoted = content_type.replace("boundary=", 'boundary="') + '"'
    assert multipart_parts(body, quoted) == payloads
    with pytest.raises(ValueError, match="without a boundary"):
        multipart_parts(body, "multipart/related")


@pytest.mark.parametrize("status, body, expected", [(204, b"", False), (200, b"[]", False),
                                                    (200, json.dumps([qido_item(**{SOP: "9.9"})]).encode(), True)])
def test_dicomweb_has_instance_asks_the_study_for_the_uid(status, body, expected):
    client = DicomWebClient("http://pacs/dicom-web")
    seen = answering(client, lambda r: httpx.Response(status, content=body,
                                                      headers={"Content-Type": "application/dicom+json"}))
    assert client.has_instance("1.2", "9.9") is expected
    (request,) = seen
    assert request.url.path == "/dicom-web/studies/1.2/instances" and request.url.params["SOPInstanceUID"] == "9.9"


def test_dicomweb_find_lists_each_instance_once_in_uid_order_whatever_the_modality_queries_return():
    series = {"CR": [qido_item(**{STUDY: "1.2", SERIES: "1.2.2"})],
              "DX": [qido_item(**{STUDY: "1.2", SERIES: "1.2.2"}), qido_item(**{STUDY: "1.1", SERIES: "1.1.1"})]}
    instances = {"1.2.2": [qido_item(**{SOP: "1.2.2.2"}), qido_item(**{SOP: "1.2.2.1"})],
                 "1.1.1": [qido_item(**{SOP: "1.1.1.1"}), {SOP: {"vr": "UI"}}]}  # one with no value

    def handler(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")
        found = series[request.url.params["Modality"]] if parts[-1] == "series" else instances[parts[-2]]
        return httpx.Response(200, json=found)

    client = DicomWebClient("http://pacs/dicom-web")
    answering(client, handler)
    found = client.find_instances(date_from="20260101", modalities=XRAY)
    assert [(i.study_instance_uid, i.sop_instance_uid) for i in found] == [
        ("1.1", ""), ("1.1", "1.1.1.1"), ("1.2", "1.2.2.1"), ("1.2", "1.2.2.2")]


@pytest.mark.parametrize("hits, expected", [([], False), ([{"Type": "Study", "ID": "s"}], False),
                                            ([{"Type": "Instance", "ID": "i"}], True)])
def test_orthanc_has_instance_counts_only_an_instance_with_that_uid(hits, expected):
    client = OrthancClient("http://pacs:8042")
    seen = answering(client, lambda r: httpx.Response(200, json=hits))
    assert client.has_instance("1.2", "9.9") is expected
    assert seen[0].url.path == "/tools/lookup" and seen[0].content == b"9.9"


def test_orthanc_find_reads_each_study_once_and_keeps_orthancs_ids_for_download():
    series = [{"ID": f"se{n}", "ParentStudy": "st1", "MainDicomTags": {"SeriesInstanceUID": f"1.1.{n}"}}
              for n in (2, 1)]
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path == "/tools/find":
            query = json.loads(request.content)["Query"]
            assert query["StudyDate"] == "-20261231"
            return httpx.Response(200, json=series if query["Modality"] == "CR" else [])
        if request.url.path == "/studies/st1":
            return httpx.Response(200, json={"MainDicomTags": {"StudyInstanceUID": "1.1"}})
        number = request.url.path.split("/")[2][2:]
        return httpx.Response(200, json=[{"ID": f"in{number}", "MainDicomTags": {"SOPInstanceUID": f"1.1.{number}.1"}}])

    client = OrthancClient("http://pacs:8042")
    answering(client, handler)
    found = client.find_instances(date_to="20261231", modalities=XRAY)
    assert found == [Instance("1.1.1.1", "1.1.1", "1.1", "in1"), Instance("1.1.2.1", "1.1.2", "1.1", "in2")]
    assert calls.count("GET /studies/st1") == 1


def test_dicomweb_find_asks_for_the_selection_attributes_and_keeps_what_is_answered():
    """One includefield per attribute (Orthanc 1.10's plugin ignores a comma list); an attribute left out of
    the answer stays unknown, one present without a value is told empty."""
    seen_params: list[list[tuple[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/series"):
            return httpx.Response(200, json=[qido_item(**{STUDY: "1.1", SERIES: "1.1.1"})])
        seen_params.append(request.url.params.multi_items())
        item = qido_item(**{SOP: "1.1.1.1"}) | {"00180015": {"vr": "CS", "Value": ["KNEE"]}, "00185101": {"vr": "CS"}}
        return httpx.Response(200, json=[item])

    client = DicomWebClient("http://pacs/dicom-web")
    answering(client, handler)
    (found,) = client.find_instances(modalities=("CR",))
    assert seen_params == [[("includefield", "00080060"), ("includefield", "00180015"),
                            ("includefield", "00185101"), ("includefield", "00080068")]]
    assert client.selection_attributes(found) == {"BodyPartExamined": "KNEE", "ViewPosition": ""}
