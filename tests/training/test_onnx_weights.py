"""Weights recovered from an exported graph: the shipped model and its int8 copy."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from app.pipeline.infer import OnnxSegmenter
from app.pipeline.preprocess import preprocess_batch
from tests.conftest import SHIPPED_MODEL, fixture_images, read_gray
from training.model import ProbabilityModel, build_model
from training.onnx_weights import (RECOVERY_TOLERANCE, OnnxWeightsError, freeze_batchnorm_statistics,
                                   load_onnx_weights)


def test_the_shipped_graph_gives_back_a_network_that_computes_the_same_in_training_mode():
    net = build_model("resnet34", None)
    assert load_onnx_weights(net, SHIPPED_MODEL) < RECOVERY_TOLERANCE
    batch = preprocess_batch([read_gray(p) for p in fixture_images("Val", "COVID-19")], 256)
    net.train()
    freeze_batchnorm_statistics(net)  # as training runs it
    with torch.no_grad():
        got = ProbabilityModel(net)(torch.from_numpy(batch)).numpy()
    assert np.abs(got - OnnxSegmenter(SHIPPED_MODEL).predict(batch)).max() < RECOVERY_TOLERANCE
    net.train()  # without freezing, batch statistics replace the folded ones and the output changes
    with torch.no_grad():
        drifted = ProbabilityModel(net)(torch.from_numpy(batch)).numpy()
    assert np.abs(drifted - got).max() > 0.01


def test_a_quantized_graph_is_refused_clearly():
    with pytest.raises(OnnxWeightsError, match="quantized"):
        load_onnx_weights(build_model("resnet34", None), SHIPPED_MODEL.with_name(SHIPPED_MODEL.stem + "-int8.onnx"))


def test_another_architecture_is_refused_clearly():
    with pytest.raises(OnnxWeightsError, match="convolutions"):
        load_onnx_weights(build_model("resnet18", None), SHIPPED_MODEL)
