"""The typed model card against the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.card import CardError, ModelCard
from tests.conftest import SHIPPED_MODEL


def test_the_shipped_card_loads_and_round_trips(tmp_path: Path):
    card = ModelCard.load(SHIPPED_MODEL)
    assert 0 <= card.default_threshold <= 1 and card.training.phases
    copy = tmp_path / SHIPPED_MODEL.name
    card.save(copy)
    # saving what was loaded gives the same files: nothing is lost or re-typed on the way
    assert json.loads(ModelCard.json_path(copy).read_text()) == json.loads(ModelCard.json_path(SHIPPED_MODEL).read_text())
    assert ModelCard.markdown_path(copy).read_text() == ModelCard.markdown_path(SHIPPED_MODEL).read_text()


def test_invalid_cards_say_what_is_wrong(tmp_path: Path):
    model = tmp_path / "m.onnx"
    card = json.loads(ModelCard.json_path(SHIPPED_MODEL).read_text())
    card["default_threshold"] = 1.5
    ModelCard.json_path(model).write_text(json.dumps(card))
    with pytest.raises(CardError, match="default_threshold"):
        ModelCard.load(model)
    with pytest.raises(CardError, match="cannot be read"):
        ModelCard.load(tmp_path / "absent.onnx")


def test_check_describes_compares_the_file_hash():
    card = ModelCard.load(SHIPPED_MODEL)
    card.check_describes(card.sha256)
    with pytest.raises(CardError, match="another file"):
        card.check_describes("f" * 64)


def test_the_readme_quotes_the_shipped_card():
    """The README's model figures are the card's, so replacing the model cannot leave them stale."""
    card = ModelCard.load(SHIPPED_MODEL)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("<!-- model-figures -->")[1].split("\n## ")[0]
    assert f"({card.version}, sha256 `{card.sha256[:16]}" in section
    assert f"region peak threshold {card.region_peak_threshold:g}" in section

    def pct(stats: dict) -> str:
        return f"{100 * stats['median']:.2f}% / {100 * stats['p95']:.2f}%"

    for th, m in card.evaluation.covid.items():
        normal = card.evaluation.ppar['Normal'][th]
        row = (f"| {th} | {m['precision']:.4f} | {m['recall']:.4f} | {m['dice']:.4f} | {m['iou']:.4f} | "
               f"{pct(normal)} | {100 * normal['any_positive_share']:.1f}% | "
               f"{pct(card.evaluation.ppar['Non-COVID'][th])} |")
        assert row in section, row


def test_the_readme_trains_the_shipped_model_as_its_card_says():
    """Every training phase of the shipped model is in the README's training commands (``--resume``
    aside: a phase continued across sessions records it), so they cannot fall behind the model."""
    card = ModelCard.load(SHIPPED_MODEL)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Train, evaluate, export")[1].split("\n## ")[0]
    commands = " ".join(section.replace("\\\n", " ").replace(".venv/bin/python", "python").split())
    for phase in card.training.phases:
        command = " ".join(arg for arg in phase.command.split() if arg != "--resume")
        assert command in commands, command


def judgement_rows(card: ModelCard) -> list[str]:
    """The README's rows for one model's input judgement figures, as its card has them."""
    rows = []
    for name, s in card.input_judgement.figures.items():
        codes = ", ".join(f"{code} {n}" for code, n in s["by_code"].items()) or "-"
        rows.append(f"| {card.name} {card.version} | {name} | {s['images']} | {s['refused']} | {codes} |")
    return rows


def test_the_readme_quotes_the_judgement_figures_of_both_shipped_models():
    """The README's judgement figures are the cards': the limits cannot change without them."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("<!-- judgement-figures -->")[1].split("\n### ")[0]
    for path in (SHIPPED_MODEL, SHIPPED_MODEL.with_name(f"{SHIPPED_MODEL.stem}-int8.onnx")):
        card = ModelCard.load(path)
        assert card.input_judgement is not None and card.input_judgement.figures["Val"]["refused"] == 0
        for row in judgement_rows(card):
            assert row in section, row
        for name in card.input_judgement.not_refused:
            assert name in section, name
