"""End to end at toy scale on real fixture images: train (and resume), export with parity, evaluate."""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.pipeline.infer import JUDGEMENT_SCORES, OnnxSegmenter, file_sha256
from tests.conftest import FIXTURE_ROOT, SHIPPED_MODEL
from training import evaluate, export, train
from app.card import ModelCard

SMOKE = ["--data-root", str(FIXTURE_ROOT), "--image-size", "64", "--batch-size", "2", "--num-workers", "0",
         "--no-progress", "--normal-ratio", "0.5", "--precision", "fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert train.main([*SMOKE, "--out", str(out), "--epochs", "1"]) == 0
    return out


def test_smoke_run_writes_checkpoints_history_and_curves(trained: Path):
    for name in ("last.pt", "best.pt", "history.csv", "history.json", "curves.png", "config.json"):
        assert (trained / name).is_file(), name
    history = json.loads((trained / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    row = history[0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    assert 0.0 <= row["covid_dice"] <= 1.0 and 0.0 <= row["normal_ppar_p95"] <= 1.0
    config = json.loads((trained / "config.json").read_text())
    # 2 COVID-19 + round(0.5 * 2) Normal per epoch; Non-COVID never
    assert config["images_per_epoch"] == 3 and config["normal_per_epoch"] == 1
    assert set(config["train_counts"]) == {"COVID-19", "Normal"}


def test_resume_continues_from_the_last_epoch(trained: Path, tmp_path: Path):
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("last.pt", "best.pt", "history.json"):
        (out / name).write_bytes((trained / name).read_bytes())
    before = torch.load(out / "last.pt", weights_only=False)["model"]
    assert train.main([*SMOKE, "--out", str(out), "--epochs", "2", "--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    after = torch.load(out / "last.pt", weights_only=False)["model"]
    key = next(k for k in after if k.endswith("weight"))
    assert not torch.equal(before[key], after[key])


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        train.main([*SMOKE, "--out", str(tmp_path / "empty"), "--epochs", "1", "--resume"])


def test_init_from_starts_from_the_parent_weights_and_records_the_parent(trained: Path, tmp_path: Path):
    out = tmp_path / "phase2"
    # lr 0: the weights can only equal the parent's if they were loaded from it
    assert train.main([*SMOKE, "--out", str(out), "--epochs", "1", "--init-from", str(trained / "best.pt"),
                       "--lr", "0", "--negative-weight", "3"]) == 0
    parent = torch.load(trained / "best.pt", weights_only=False)
    child = torch.load(out / "best.pt", weights_only=False)
    key = next(k for k in parent["model"] if k.endswith("conv1.weight"))
    assert torch.equal(parent["model"][key], child["model"][key])
    config = json.loads((out / "config.json").read_text())
    assert config["parent"]["checkpoint"] == str(trained / "best.pt")
    assert config["parent"]["epoch"] == 1
    assert config["parent"]["config"]["command"] == parent["config"]["command"]
    assert config["negative_weight"] == 3

    model = tmp_path / "phase2.onnx"
    assert export.main(["--checkpoint", str(out / "best.pt"), "--output", str(model), "--name", "toy",
                        "--data-root", str(FIXTURE_ROOT), "--parity-images", "1"]) == 0
    phases = [p.model_dump() for p in ModelCard.load(model).training.phases]
    assert [p["command"] for p in phases] == [parent["config"]["command"], config["command"]]
    assert "Normal-image BCE weight 3" in phases[1]["recipe"] and "Normal-image BCE weight 1" in phases[0]["recipe"]
    assert "Phase 2 of 2" in model.with_suffix(".card.md").read_text()


def test_init_from_an_exported_model_fine_tunes_it_with_frozen_batchnorm(exported: Path, tmp_path: Path):
    out = tmp_path / "from-onnx"
    # lr 0: the weights and the BatchNorm statistics stay the graph's only if the statistics are frozen
    assert train.main([*SMOKE, "--out", str(out), "--epochs", "1", "--init-from", str(exported), "--lr", "0"]) == 0
    model = tmp_path / "from-onnx.onnx"
    assert export.main(["--checkpoint", str(out / "best.pt"), "--output", str(model), "--name", "toy",
                        "--data-root", str(FIXTURE_ROOT), "--parity-images", "1"]) == 0
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    assert np.abs(OnnxSegmenter(model).predict(x) - OnnxSegmenter(exported).predict(x)).max() < 1e-4
    parent, card = ModelCard.load(exported), ModelCard.load(model)
    config = json.loads((out / "config.json").read_text())
    assert config["parent"]["sha256"] == parent.sha256 and config["parent"]["version"] == "0.0.1"
    assert [p.command for p in card.training.phases] == [*[p.command for p in parent.training.phases],
                                                         config["command"]]
    assert "from toy 0.0.1 with BatchNorm statistics frozen" in card.training.phases[-1].recipe


def test_export_keeps_the_attempts_of_the_model_it_replaces(exported: Path, tmp_path: Path, trained: Path):
    old = ModelCard.load(exported).model_dump(mode="json")
    old["attempts"] = ["run 1: what it gave"]
    old_card = tmp_path / "old.card.json"
    old_card.write_text(json.dumps(old))
    model = tmp_path / "new.onnx"
    assert export.main(["--checkpoint", str(trained / "best.pt"), "--output", str(model), "--name", "toy",
                        "--version", "0.0.2", "--data-root", str(FIXTURE_ROOT), "--parity-images", "1",
                        "--replaces", str(old_card), "--attempt", "run 2: what it gave"]) == 0
    card = ModelCard.load(model).model_dump(mode="json")
    assert card["attempts"] == ["run 1: what it gave", "run 2: what it gave"]
    assert card["replaces"] == {"version": old["version"], "sha256": old["sha256"]}
    assert f"Replaces: toy {old['version']}" in model.with_suffix(".card.md").read_text()


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "toy.onnx"
    assert export.main(["--checkpoint", str(trained / "best.pt"), "--output", str(out), "--name", "toy",
                        "--version", "0.0.1", "--data-root", str(FIXTURE_ROOT), "--parity-images", "2"]) == 0
    return out


def test_export_matches_pytorch_and_writes_a_card(exported: Path, trained: Path):
    card = ModelCard.load(exported).model_dump(mode="json")
    assert card["export"]["parity_max_abs_diff"] < export.PARITY_TOLERANCE
    assert card["name"] == "toy" and card["training"]["selected_epoch"] == 1
    assert card["limitations"] == [export.FROM_SCRATCH, *export.LIMITATIONS]  # trained with no encoder weights
    model = OnnxSegmenter(exported)
    assert card["sha256"] == model.info.sha256
    assert (model.info.name, model.info.version, model.info.input_size) == ("toy", "0.0.1", 64)
    # dynamic batch axis: 3 images in one run
    net, _ = export.load_checkpoint_model(trained / "best.pt")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    got = model.predict(x)
    assert got.shape == (3, 2, 64, 64)
    assert np.abs(got - expected).max() < export.PARITY_TOLERANCE


def test_export_fails_when_parity_breaks(trained: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(export, "parity_check", lambda *a, **k: 1e-2)
    assert export.main(["--checkpoint", str(trained / "best.pt"), "--output", str(tmp_path / "bad.onnx"),
                        "--data-root", str(FIXTURE_ROOT), "--parity-images", "1"]) == 1
    assert not (tmp_path / "bad.card.json").exists() and not (tmp_path / "bad.onnx").exists()


def test_evaluate_reports_all_classes_and_updates_the_card(exported: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert evaluate.main(["--model", str(exported), "--data-root", str(FIXTURE_ROOT), "--out", str(out),
                          "--update-card", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"COVID-19": 2, "Non-COVID": 2, "Normal": 2}
    for t in ("0.5", "0.25"):
        m = report["covid"][t]
        assert m["tp"] + m["fn"] > 0
        assert m["dice"] == pytest.approx(2 * m["tp"] / (2 * m["tp"] + m["fp"] + m["fn"]))
        assert set(report["ppar"]["Normal"][t]) >= {"mean", "median", "p95", "any_positive_share"}
    assert len(report["sweep"]) == 19 and set(report["lung_dice"]) == {"COVID-19", "Non-COVID", "Normal"}
    errors = report["covid_errors"]
    assert sum(r["images"] for r in errors["by_extent"]) == 2 and 0 <= errors["near_outline_share"] <= 1
    wrong = report["covid"]["0.5"]["fp"] + report["covid"]["0.5"]["fn"]
    assert sum(r["error_share"] for r in errors["by_extent"]) == pytest.approx(1.0 if wrong else 0.0)
    for plot in ("ppar_distributions.png", "threshold_sweep.png", "overlays.png", "errors_by_extent.png"):
        assert (out / plot).stat().st_size > 1000
    card = ModelCard.load(exported).model_dump(mode="json")
    assert card["evaluation"]["covid"]["0.5"]["dice"] == report["covid"]["0.5"]["dice"]
    assert "training.evaluate" in card["evaluation"]["command"]
    assert "Val figures" in exported.with_suffix(".card.md").read_text()


def readme_training_commands() -> list[list[str]]:
    """The ``python -m training.*`` commands of the README's training section, as argument lists."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("## Train, evaluate, export")[1].split("```bash\n")[1].split("```")[0]
    lines = [line.split(" #")[0] for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.strip().startswith(".venv/bin/python -m training.")]


def test_the_readmes_training_commands_are_accepted_as_written():
    """Each flag of each command the README gives is one its program takes (parsing fails on any other)."""
    commands = readme_training_commands()
    assert {c[1] for c in commands} == {"training.train", "training.export", "training.evaluate", "training.quantize",
                                        "training.judge_limits"}
    for argv in commands:
        module = importlib.import_module(argv[1])
        args = module.parse_args(argv[2:])
        assert vars(args), argv
    train_args = train.parse_args(next(c for c in commands if c[1] == "training.train")[2:])
    assert (train_args.epochs, train_args.optimizer, train_args.ema_decay) == (32, "adamw", 0.999)
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "runs/x", "--learning-rate", "1e-3"])  # not one of its flags


def test_ema_weights_are_the_ones_validated_and_kept(tmp_path: Path):
    out = tmp_path / "ema"
    assert train.main([*SMOKE, "--out", str(out), "--epochs", "1", "--ema-decay", "0.5", "--augment", "strong",
                       "--batch-size", "1"]) == 0  # 3 steps: the average lags the weights
    last = torch.load(out / "last.pt", weights_only=False)
    best = torch.load(out / "best.pt", weights_only=False)["model"]
    key = next(k for k in best if k.endswith("weight"))
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items()}
    assert torch.equal(best[key], ema[key])  # best.pt holds the average ...
    assert not torch.equal(best[key], last["model"][key])  # ... not the raw weights
    # resuming restores the average too
    assert train.main([*SMOKE, "--out", str(out), "--epochs", "2", "--ema-decay", "0.5", "--resume",
                       "--batch-size", "1"]) == 0
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


def test_quantize_makes_an_int8_graph_with_its_own_card(exported: Path, tmp_path: Path):
    from training import quantize

    out = tmp_path / "toy-int8.onnx"
    assert quantize.main(["--model", str(exported), "--output", str(out), "--data-root", str(FIXTURE_ROOT),
                          "--calibration-images", "4"]) == 0
    card, source = ModelCard.load(out), ModelCard.load(exported)
    int8, fp32 = OnnxSegmenter(out), OnnxSegmenter(exported)
    assert card.sha256 == int8.info.sha256 and card.export["quantized_from"]["sha256"] == source.sha256
    assert int8.info.quantization and int8.info.name == "toy-int8" and card.evaluation is None
    assert out.stat().st_size < exported.stat().st_size / 2
    from app.pipeline.preprocess import preprocess_batch
    from tests.conftest import fixture_images, read_gray

    x = preprocess_batch([read_gray(p) for p in fixture_images("Val", "COVID-19")], 64)  # like calibration
    assert np.abs(int8.predict(x) - fp32.predict(x)).mean() < 0.05


def test_evaluate_with_flip_keeps_the_plain_figures_and_adds_its_own(exported: Path, tmp_path: Path):
    args = ["--model", str(exported), "--data-root", str(FIXTURE_ROOT), "--no-progress", "--update-card"]
    assert evaluate.main([*args, "--out", str(tmp_path / "plain")]) == 0
    plain = ModelCard.load(exported).evaluation
    assert evaluate.main([*args, "--out", str(tmp_path / "flip"), "--tta", "flip"]) == 0
    card = ModelCard.load(exported)
    assert card.evaluation.covid == plain.covid and set(card.evaluation.tta) == {"flip"}
    report = json.loads((tmp_path / "flip" / "report.json").read_text())
    assert report["tta"] == "flip" and card.evaluation.tta["flip"]["covid"] == report["covid"]
    assert "test-time augmentation `flip`" in exported.with_suffix(".card.md").read_text()


def test_resume_with_a_new_length_follows_the_new_schedule(tmp_path: Path):
    """Shortening or extending a run on resume continues the new schedule from the same step."""
    onecycle = [*SMOKE, "--schedule", "onecycle", "--lr", "1e-3"]
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    assert train.main([*onecycle, "--out", str(fresh), "--epochs", "3"]) == 0
    assert train.main([*onecycle, "--out", str(resumed), "--epochs", "1"]) == 0
    assert train.main([*onecycle, "--out", str(resumed), "--epochs", "3", "--resume"]) == 0
    rates = [[h["lr"] for h in json.loads((out / "history.json").read_text())] for out in (fresh, resumed)]
    assert rates[1][1:] == pytest.approx(rates[0][1:], rel=1e-6, abs=1e-12)
    state = torch.load(resumed / "last.pt", weights_only=False)
    assert state["scheduler"]["total_steps"] == torch.load(fresh / "last.pt", weights_only=False)["scheduler"]["total_steps"]
    assert state["config"]["rescheduled"] == {"after_epoch": 1, "from_epochs": 1}


def test_the_card_recipe_names_the_weight_average_and_a_re_planned_schedule():
    config = {"epochs": 25, "ema_decay": 0.999, "rescheduled": {"from_epochs": 30, "after_epoch": 11}}
    recipe = export.describe_recipe(config)
    assert "EMA of the weights (decay 0.999)" in recipe and "re-planned from 30 to 25 epochs after epoch 11" in recipe
    assert "EMA" not in export.describe_recipe({"epochs": 8, "ema_decay": 0.0})
    assert "re-planned" not in export.describe_recipe({})


def test_evaluate_applies_the_cards_region_rule_and_records_it(exported: Path, tmp_path: Path):
    model = tmp_path / "ruled.onnx"
    model.write_bytes(exported.read_bytes())
    card = ModelCard.load(exported)
    card.region_peak_threshold = 1.0  # no region of the toy model peaks at 1: every mask is empty
    card.save(model)
    args = ["--model", str(model), "--data-root", str(FIXTURE_ROOT), "--no-progress"]
    assert evaluate.main([*args, "--out", str(tmp_path / "plain"), "--region-peak-threshold", "0"]) == 0
    # the card's figures are what the service delivers: under the card's own rule only
    assert evaluate.main([*args, "--out", str(tmp_path / "plain"), "--region-peak-threshold", "0",
                          "--update-card"]) == 1
    assert evaluate.main([*args, "--out", str(tmp_path / "ruled"), "--update-card"]) == 0
    plain, ruled = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("plain", "ruled"))
    assert (plain["region_peak_threshold"], ruled["region_peak_threshold"]) == (0.0, 1.0)
    assert plain["covid"]["0.25"]["tp"] + plain["covid"]["0.25"]["fp"] > 0
    assert ruled["covid"]["0.25"]["tp"] + ruled["covid"]["0.25"]["fp"] == 0
    assert ruled["ppar"]["Normal"]["0.25"]["any_positive_share"] == 0
    assert ModelCard.load(model).evaluation.region_peak_threshold == 1.0
    assert "regions kept only when they peak at 1.0" in model.with_suffix(".card.md").read_text()


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """The shipped fp32 graph and its card, copied: a graph to export again over itself."""
    model = tmp_path / "m.onnx"
    shutil.copy(SHIPPED_MODEL, model)
    shutil.copy(ModelCard.json_path(SHIPPED_MODEL), ModelCard.json_path(model))
    return model


def again(model: Path, *extra: str) -> int:
    return export.main(["--from-onnx", str(model), "--judgement", "--output", str(model), "--version", "9.9.9",
                        "--data-root", str(FIXTURE_ROOT), "--parity-images", "1", *extra])


def test_exporting_again_adds_the_judgement_outputs_and_carries_the_card(shipped_copy: Path):
    before = ModelCard.load(shipped_copy)
    assert again(shipped_copy) == 0
    graph, card = OnnxSegmenter(shipped_copy, providers="CPUExecutionProvider"), ModelCard.load(shipped_copy)
    assert graph.judgement_scores == list(JUDGEMENT_SCORES) and card.sha256 == file_sha256(shipped_copy)
    assert (card.version, card.replaces.sha256, card.evaluation) == ("9.9.9", before.sha256, before.evaluation)
    x = np.zeros((2, 3, 256, 256), np.float32)
    assert {k: v.shape for k, v in graph.run(x).scores.items()} == {k: (2,) for k in JUDGEMENT_SCORES}


def test_a_failed_export_over_its_own_source_leaves_the_source_and_its_card(shipped_copy: Path, monkeypatch):
    before = file_sha256(shipped_copy)
    monkeypatch.setattr(export, "parity_check", lambda *a, **k: 1e-2)
    assert again(shipped_copy) == 1
    assert file_sha256(shipped_copy) == before == ModelCard.load(shipped_copy).sha256
    assert sorted(p.name for p in shipped_copy.parent.iterdir()) == ["m.card.json", "m.onnx"]
