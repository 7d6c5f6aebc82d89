"""The engine every front end shares: its answers are the service's, and what a caller leaves out (threshold,
TTA, region rule) is resolved in it."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.engine import Engine
from app.engine.engine import FALLBACK_THRESHOLD
from app.node.spool import Spool
from app.node.worker import Deliverer, Segmenter
from tests.conftest import fixture_images, model_under_test
from tests.dicom_fixtures import make_cxr_dicom

COVID = fixture_images("Val", "COVID-19")
ANSWER_ONLY = ("request_id", "model", "timings_ms")  # the route's own, not the engine's


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_settings(Settings(model_path=model_under_test()))


@pytest.fixture(scope="module")
def cxr() -> bytes:
    return make_cxr_dicom(COVID[0], "DX", size=384, pixel_spacing=0.2)


def fields_of(engine: Engine, data: bytes, threshold: float | None = None, tta: str | None = None,
              include=frozenset()) -> dict:
    loaded = engine.read(data)  # load -> select -> decode
    return engine.results(engine.segment([loaded], threshold, tta)[0], loaded).fields(include)


@pytest.mark.parametrize("query, threshold, tta", [("", None, None), ("?threshold=0.3&tta=flip", 0.3, "flip")])
def test_the_json_fields_are_the_services(service_client, engine, cxr, query, threshold, tta):
    client, _ = service_client
    for name, data in (("cxr.png", COVID[1].read_bytes()), ("cxr.dcm", cxr)):
        body = client.post(f"/segment{query}", files={"file": (name, data)}).json()
        expected = {k: v for k, v in body.items() if k not in ANSWER_ONLY}
        got = {k: v for k, v in fields_of(engine, data, threshold, tta).items() if v is not None}
        assert got == expected, name


def test_pngs_and_dicom_results_are_the_services(service_client, engine, cxr):
    from app.engine import PngOutput

    client, _ = service_client
    loaded = engine.read(cxr)
    results = engine.results(engine.segment([loaded])[0], loaded)
    for kind in ("seg", "sc", "sr"):
        answer = client.post(f"/segment?format=dicom-{kind}", files={"file": ("a.dcm", cxr)})
        assert results.dicom(kind) == answer.content
        assert engine.dicom(kind, results.seg, loaded) == results.dicom(kind)
    for output in PngOutput:
        assert results.png(output) == client.post(f"/segment?format=png&output={output.value}",
                                                  files={"file": ("a.dcm", cxr)}).content


def test_the_cards_threshold_is_resolved_by_the_engine_for_every_front_end(service_client, engine, tmp_path):
    client, service = service_client
    assert engine.card is not None and engine.threshold(None) == engine.card.default_threshold
    assert engine.threshold(0.25) == 0.25
    assert client.get("/model").json()["default_threshold"] == service.engine.threshold(None) == engine.threshold(None)
    spool = Spool(tmp_path / "spool")
    node = Segmenter(spool, engine, ["seg"], None, Deliverer(spool, []))  # COVIDSEG_NODE_THRESHOLD unset
    assert node.threshold == engine.card.default_threshold
    assert Segmenter(spool, engine, ["seg"], 0.4, Deliverer(spool, [])).threshold == 0.4


def test_without_a_card_the_fallback_threshold_and_every_region(engine):
    bare = Engine(model=engine.model, card=None)
    assert bare.threshold(None) == FALLBACK_THRESHOLD and bare.region_peak_threshold == 0.0
    assert bare.tta(None) == "none" and Engine(model=engine.model, card=None, default_tta="flip").tta(None) == "flip"


def test_a_region_rule_override_reaches_the_masks(engine):
    """Evaluation's --region-peak-threshold: the engine's postprocess applies it instead of the card's."""
    assert engine.region_peak_threshold > 0.25  # the shipped card has a rule
    loaded = engine.read(COVID[0].read_bytes())
    every = Engine(model=engine.model, card=engine.card, region_peak_override=0.0)
    ruled, kept = engine.segment([loaded], 0.25)[0], every.segment([loaded], 0.25)[0]
    assert kept.region_peak_threshold == 0.0 and ruled.region_peak_threshold == engine.card.region_peak_threshold
    assert kept.infection_pixels >= ruled.infection_pixels
    assert not (ruled.infection_mask & ~kept.infection_mask).any()  # the rule only removes regions


def test_a_dicom_is_selected_from_its_header_before_its_pixels_are_decoded(engine):
    """load gives the parsed header (the pixel data still encoded), select judges it, decode decodes it: a
    mammogram whose pixel data no decoder reads is refused by the rules, and only decoding it fails."""
    from app.pipeline.errors import PipelineError
    from app.pipeline.inputs import ParsedInput
    from tests.dicom_fixtures import mammogram, with_garbage_frame

    parsed = engine.load(with_garbage_frame(mammogram(COVID[0], compress="jpeg-baseline")))
    assert isinstance(parsed, ParsedInput) and parsed.is_dicom and parsed.dataset.Modality == "MG"
    with pytest.raises(PipelineError) as refused:
        engine.select(parsed)
    assert refused.value.code == "not_selected"
    with pytest.raises(PipelineError) as corrupt:
        engine.decode(parsed)
    assert corrupt.value.code == "corrupt_dicom"
    with pytest.raises(PipelineError) as read:
        engine.read(with_garbage_frame(mammogram(COVID[0], compress="jpeg-baseline")))
    assert read.value.code == "not_selected"
    png = engine.load(COVID[0].read_bytes())
    engine.select(png)  # PNG and JPEG carry no attributes to judge
    assert not png.is_dicom and engine.decode(png).format == "PNG"
