"""The model card: one JSON file beside the ONNX graph (``<model>.card.json``), typed here, rendered
to Markdown (``<model>.card.md``) for people. Export writes it, evaluation adds its figures, the
service reads it (default threshold, ``GET /model``) and checks it describes the file it loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CardError(ValueError):
    """A card that is missing, unreadable, invalid or about another file."""


class TensorSpec(BaseModel):
    name: str
    shape: list[str | int]
    dtype: str | None = None
    channels: list[str] | None = None
    description: str


class Phase(BaseModel):
    """One training run of the chain that produced the weights."""

    command: str | None
    recipe: str
    epochs: int | None
    weights_from_epoch: int | None
    images_per_epoch: int | None


class Training(BaseModel):
    model_config = ConfigDict(extra="allow")

    phases: list[Phase]
    config: dict[str, Any] = Field(default_factory=dict)
    train_counts: dict[str, int] | None = None
    val_counts: dict[str, int] | None = None
    images_per_epoch: int | None = None
    normal_per_epoch: int | None = None
    epochs: int | None = None
    selected_epoch: int | None = None
    selection: str | None = None
    selected_epoch_val_metrics_pytorch: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)


class Replaced(BaseModel):
    version: str
    sha256: str


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="allow")

    split: str
    counts: dict[str, int]
    covid: dict[str, dict[str, int | float]]
    ppar: dict[str, dict[str, dict[str, int | float]]]
    lung_dice: dict[str, float]
    sweep: list[dict[str, float]] = Field(default_factory=list)
    command: str
    region_peak_threshold: float = Field(0.0, description="the region peak rule the figures were computed with")
    tta: dict[str, dict[str, Any]] | None = Field(None, description="the same figures with test-time augmentation, "
                                                                    "by mode (flip)")


class InputJudgement(BaseModel):
    """The input judgement's limits for this model (``app.pipeline.judge``), and the figures they rest on."""

    model_config = ConfigDict(extra="allow")

    limits: dict[str, float | None]
    command: str
    scores: dict[str, str] | None = Field(None, description="what each of the graph's judgement outputs measures")
    figures: dict[str, Any] = Field(default_factory=dict, description="per set: images, refused, each figure's range")
    not_refused: list[str] = Field(default_factory=list, description="non-chest cases the judgement let through")
    refused_chests: dict[str, dict[str, str]] = Field(default_factory=dict, description="per split, the data set's "
                                                      "images refused and their codes")


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: str
    description: str
    architecture: str
    input: TensorSpec
    output: TensorSpec
    default_threshold: float = Field(ge=0, le=1)
    threshold_guidance: str = ""
    region_peak_threshold: float = Field(0.0, ge=0, le=1, description="a predicted infection region is kept only "
                                         "when its highest probability reaches this (0: every region)")
    intended_use: str = ""
    training: Training
    export: dict[str, Any] = Field(default_factory=dict)
    attempts: list[str] = Field(default_factory=list)
    replaces: Replaced | None = None
    limitations: list[str] = Field(default_factory=list)
    citations: list[str] = Field(default_factory=list)
    evaluation: Evaluation | None = None
    input_judgement: InputJudgement | None = None

    @staticmethod
    def json_path(model_path: Path | str) -> Path:
        return Path(model_path).with_suffix(".card.json")

    @staticmethod
    def markdown_path(model_path: Path | str) -> Path:
        return Path(model_path).with_suffix(".card.md")

    @classmethod
    def load(cls, model_path: Path | str) -> "ModelCard":
        path = cls.json_path(model_path)
        try:
            return cls.model_validate_json(path.read_text())
        except OSError as exc:
            raise CardError(f"model card {path} cannot be read: {exc.strerror}") from exc
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise CardError(f"model card {path} is not valid: {problems}") from exc

    def save(self, model_path: Path | str) -> None:
        """The JSON card and its Markdown rendering, beside the model."""
        self.json_path(model_path).write_text(json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
        self.markdown_path(model_path).write_text(self.render_markdown())

    def check_describes(self, sha256: str) -> None:
        if sha256 != self.sha256:
            raise CardError(f"the model card describes another file: card sha256 {self.sha256[:16]}..., "
                            f"model file sha256 {sha256[:16]}...; export the model again with its card "
                            "(or set COVIDSEG_VERIFY_CARD=false while developing)")

    def public(self) -> dict[str, Any]:
        """What ``GET /model`` shows: the card without the bulky training config and history."""
        body = self.model_dump(mode="json", exclude_none=True)
        body["training"] = {k: v for k, v in body["training"].items() if k not in ("history", "config")}
        return body

    def render_markdown(self) -> str:
        return "\n".join([*self._header(), *self._training(), *self._attempts(), *self._evaluation(),
                          *self._judgement(), *self._closing()])

    def _header(self) -> list[str]:
        replaces = ([f"- Replaces: {self.name} {self.replaces.version} (sha256 `{self.replaces.sha256}`)"]
                    if self.replaces else [])
        return [f"# Model card: {self.name} {self.version}", "", self.description, "",
                f"- File: `{self.file}` (sha256 `{self.sha256}`)", *replaces,
                f"- Architecture: {self.architecture}", f"- Input: {self.input.description}",
                f"- Output: {self.output.description}",
                f"- Default threshold: {self.default_threshold} ({self.threshold_guidance})",
                *([f"- Region peak threshold: {self.region_peak_threshold} (at any threshold, a predicted infection "
                   "region is kept only when its highest probability reaches it)"] if self.region_peak_threshold else []),
                f"- Intended use: {self.intended_use}", ""]

    def _training(self) -> list[str]:
        lines = ["## Training", "",
                 f"- Data: COVID-QU-Ex infection subset, Train split: {self.training.train_counts} available; all "
                 "COVID-19 images every epoch plus Normal images drawn afresh each epoch. "
                 "Non-COVID is never used (its empty masks are unannotated, not healthy lungs)."]
        phases = self.training.phases
        for n, phase in enumerate(phases, 1):
            prefix = f"Phase {n} of {len(phases)}: " if len(phases) > 1 else "Recipe: "
            lines += [f"- {prefix}{phase.recipe}; {phase.images_per_epoch} images per epoch; "
                      f"weights from epoch {phase.weights_from_epoch} of {phase.epochs}",
                      f"  - Command: `{phase.command}`"]
        return lines + [""]

    def _attempts(self) -> list[str]:
        return ["## What was tried", "", *[f"- {a}" for a in self.attempts], ""] if self.attempts else []

    def _evaluation(self) -> list[str]:
        ev = self.evaluation
        if ev is None:
            return []
        rule = (f", regions kept only when they peak at {ev.region_peak_threshold} or more"
                if ev.region_peak_threshold else "")
        lines = [f"## {ev.split} figures (from `{ev.command}`{rule})", "", "COVID-19, pixel counts pooled over the split:",
                 "", "| threshold | precision | recall | Dice (F1) | IoU | mean per-image Dice |",
                 "|---:|---:|---:|---:|---:|---:|"]
        for th, m in ev.covid.items():
            lines.append(f"| {th} | {_f(m.get('precision'))} | {_f(m.get('recall'))} | {_f(m.get('dice'))} | "
                         f"{_f(m.get('iou'))} | {_f(m.get('mean_image_dice'))} |")
        lines += ["", "PPAR (share of image pixels predicted as infection) per image:", "",
                  "| class | threshold | mean | median | p95 | images with any positive |",
                  "|---|---:|---:|---:|---:|---:|"]
        for cls, per_th in ev.ppar.items():
            for th, s in per_th.items():
                lines.append(f"| {cls} | {th} | {_pct(s.get('mean'))} | {_pct(s.get('median'))} | "
                             f"{_pct(s.get('p95'))} | {_pct(s.get('any_positive_share'))} |")
        lines += ["", "Lung Dice (lung head, threshold 0.5): " +
                  ", ".join(f"{c} {_f(v)}" for c, v in ev.lung_dice.items()), ""]
        for mode, fig in (ev.tta or {}).items():
            lines += [f"With test-time augmentation `{mode}` (from `{fig['command']}`):", "",
                      "| threshold | COVID-19 Dice | IoU | Normal PPAR median | p95 | any positive |",
                      "|---:|---:|---:|---:|---:|---:|"]
            for th, m in fig["covid"].items():
                n = fig["ppar"].get("Normal", {}).get(th, {})
                lines.append(f"| {th} | {_f(m.get('dice'))} | {_f(m.get('iou'))} | {_pct(n.get('median'))} | "
                             f"{_pct(n.get('p95'))} | {_pct(n.get('any_positive_share'))} |")
            lines.append("")
        return lines

    def _judgement(self) -> list[str]:
        judgement = self.input_judgement
        if judgement is None:
            return []
        lines = [f"## Input judgement (from `{judgement.command}`)", "",
                 "An image is segmented only when it meets every limit; else 422 with `no_contrast`, "
                 "`not_a_chest_radiograph` or `appears_inverted`.", "",
                 "| limit | value |", "|---|---:|", *[f"| {k} | {v} |" for k, v in judgement.limits.items()], ""]
        if judgement.figures:
            lines += ["| set | images | refused | share refused |", "|---|---:|---:|---:|"]
            lines += [f"| {name} | {f['images']} | {f['refused']} | {_pct(f['refused'] / max(f['images'], 1))} |"
                      for name, f in judgement.figures.items()]
            lines.append("")
        if judgement.not_refused:
            lines += ["Non-chest cases not refused: " + ", ".join(judgement.not_refused), ""]
        for split, refused in judgement.refused_chests.items():
            if refused:
                lines += [f"{split} images refused: " + ", ".join(f"{n} ({c})" for n, c in refused.items()), ""]
        return lines

    def _closing(self) -> list[str]:
        lines = ["## Limitations", "", *[f"- {x}" for x in self.limitations], ""] if self.limitations else []
        return lines + ["## Data citation", "", *[f"- {c}" for c in self.citations], ""]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
