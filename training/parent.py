"""A further training phase starts from a parent: a checkpoint or an exported ONNX model.

The parent's record goes into the run's config so the model card lists every phase."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from app.card import ModelCard
from training.onnx_weights import load_onnx_weights

log = logging.getLogger("training.parent")


def init_from_parent(model: torch.nn.Module, parent: Path, device: torch.device, config: dict[str, Any]) -> None:
    """Load the parent's weights into ``model`` and record the parent in ``config``.

    The parent is a checkpoint (``best.pt``) or an exported ONNX model such as the shipped one."""
    if parent.suffix == ".onnx":
        init_from_onnx(model, parent, device, config)
        return
    state = torch.load(parent, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    config["parent"] = {"checkpoint": str(parent), "epoch": state.get("epoch"), "config": state["config"]}
    log.info("initialised from %s (epoch %s)", parent, state.get("epoch"))


def init_from_onnx(model: torch.nn.Module, parent: Path, device: torch.device, config: dict[str, Any]) -> None:
    card = ModelCard.load(parent)
    diff = load_onnx_weights(model.to("cpu"), parent)
    model.to(device)
    config["parent"] = {"model": str(parent), "name": card.name, "version": card.version, "sha256": card.sha256,
                        "phases": [p.model_dump(mode="json") for p in card.training.phases]}
    log.info("initialised from %s %s (graph and network agree within %.1e)", card.name, card.version, diff)


def freezes_batchnorm(config: dict[str, Any]) -> bool:
    """Weights recovered from a graph (here or in an earlier phase) hold folded BatchNorms, whose
    statistics must stay as they are (see training.onnx_weights)."""
    while config is not None:
        parent = config.get("parent")
        if parent is None:
            return False
        if "model" in parent:
            return True
        config = parent.get("config")
    return False
