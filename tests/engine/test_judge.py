"""The engine's judge step on the shipped model: chest radiographs accepted, the non-chest set refused."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from app.engine import Engine
from app.engine.engine import load_card
from app.pipeline.errors import PipelineError
from app.pipeline.infer import JUDGEMENT_SCORES, OnnxSegmenter
from app.pipeline.judge import APPEARS_INVERTED, JUDGEMENT_CODES, NO_CONTRAST, NOT_A_CHEST
from app.pipeline.load import LoadedImage
from tests.conftest import SUBSET, model_under_test
from tests.dicom_fixtures import make_cxr_dicom
from tests.nonchest import cases, chest_images, derived
from training.judge_limits import REQUIRED_REFUSED



@pytest.fixture(scope="module", params=["fp32", "int8"])
def engine(request) -> Engine:
    """The shipped model and its int8 sibling, each with its own card's limits."""
    path = model_under_test()
    if request.param == "int8":
        path = path.with_name(f"{path.stem}-int8.onnx")
    model = OnnxSegmenter(path, providers="CPUExecutionProvider")
    return Engine(model=model, card=load_card(path, model.info.sha256))


def read(engine: Engine, data: bytes, filename: str) -> LoadedImage:
    """As the service reads an upload with selection=ignore: the judgement alone decides."""
    return engine.decode(engine.load(data, filename))


def test_the_shipped_graph_gives_the_judgements_scores_and_its_card_the_limits(engine: Engine):
    assert engine.model.judgement_scores == list(JUDGEMENT_SCORES)
    limits = engine.judge_limits
    assert limits.max_feature_distance is not None and limits.min_frontal_score is not None
    assert engine.card.input_judgement.figures["Val"]["refused"] == 0


def test_every_chest_fixture_is_accepted_as_png_and_as_a_2048_px_monochrome1_dicom(engine: Engine):
    images = [LoadedImage(gray, "PNG", "L") for _, gray in chest_images()]
    for path in sorted(SUBSET.glob("Val/*/images/*.png"))[:3]:
        images.append(read(engine, make_cxr_dicom(path, photometric="MONOCHROME1", size=2048, bits=14), "x.dcm"))
    found = engine.segment_each(images)
    refused = [(i, x.code, x.message) for i, x in enumerate(found) if isinstance(x, PipelineError)]
    assert not refused
    assert all(seg.judgement is not None and seg.judgement.accepted for seg in found)


def test_at_least_95_percent_of_the_non_chest_set_is_refused_with_a_judgement_code(engine: Engine):
    outcomes: dict[str, str] = {}
    for case in cases():
        try:
            image = read(engine, case.data, case.filename)
        except PipelineError as exc:  # a pydicom test file the read step refuses: not the judgement's doing
            outcomes[case.name] = f"read:{exc.code}"
            continue
        found = engine.segment_each([image])[0]
        outcomes[case.name] = found.code if isinstance(found, PipelineError) else "segmented"
    assert {n: c for n, c in outcomes.items() if c.startswith("read:")} == {"JPEG-lossy.dcm": "read:corrupt_dicom"}
    judged = {name: code for name, code in outcomes.items() if not code.startswith("read:")}
    assert set(judged.values()) <= {*JUDGEMENT_CODES, "segmented"}
    segmented = sorted(name for name, code in judged.items() if code == "segmented")
    assert segmented == sorted(engine.card.input_judgement.not_refused)  # what the card (and README) list
    assert 1 - len(segmented) / len(judged) >= REQUIRED_REFUSED, (segmented, Counter(judged.values()))


def test_a_negative_chest_is_refused_as_appearing_inverted_and_a_blank_one_as_without_contrast(engine: Engine):
    name, gray = chest_images()[0]
    found = engine.segment_each([LoadedImage(np.ascontiguousarray(derived(gray)["inverted"]), "PNG", "L"),
                                 LoadedImage(np.full((512, 512), 255, np.uint8), "PNG", "L")])
    assert [x.code for x in found] == [APPEARS_INVERTED, NO_CONTRAST]


def test_a_refused_image_costs_the_others_of_its_run_nothing(engine: Engine):
    chests = [LoadedImage(gray, "PNG", "L") for _, gray in chest_images()[:2]]
    turned = LoadedImage(np.ascontiguousarray(np.rot90(chests[0].gray, 1)), "PNG", "L")
    together = engine.segment_each([chests[0], turned, chests[1]])
    assert isinstance(together[1], PipelineError) and together[1].code in (NOT_A_CHEST, APPEARS_INVERTED)
    alone = engine.segment([chests[0], chests[1]])
    for a, b in zip([together[0], together[2]], alone):
        assert np.array_equal(a.infection_mask, b.infection_mask) and a.judgement == b.judgement
    with pytest.raises(PipelineError) as refused:
        engine.segment([chests[0], turned])
    assert refused.value.code == together[1].code


def test_tta_judges_the_image_itself_so_its_figures_are_those_without_tta(engine: Engine):
    chest = LoadedImage(chest_images()[3][1], "PNG", "L")
    plain, flipped = engine.segment([chest], tta="none")[0], engine.segment([chest], tta="flip")[0]
    assert plain.judgement.feature_distance == pytest.approx(flipped.judgement.feature_distance, rel=1e-4)
    assert plain.judgement.frontal_score == pytest.approx(flipped.judgement.frontal_score, rel=1e-4, abs=1e-4)
