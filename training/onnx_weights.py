"""Weights back from an exported ONNX model, so a shipped model can be fine-tuned without its checkpoint.

Export folds each BatchNorm into the convolution before it, so the graph holds one weight and one
bias per convolution. Loading them back, each convolution takes the folded weight and its
BatchNorm becomes the identity plus the folded bias (mean 0, variance 1 - eps, scale 1). Such a
network computes exactly what the graph computes only while its BatchNorms use those stored
statistics, so training from it keeps BatchNorm statistics frozen (``freeze_batchnorm_statistics``);
the BatchNorm scale and shift still learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from app.pipeline.infer import OnnxSegmenter
from training.model import ProbabilityModel

#: Largest difference allowed between the graph and the recovered network on the same input.
RECOVERY_TOLERANCE = 1e-4


class OnnxWeightsError(ValueError):
    """The graph does not fit the network (another architecture or encoder)."""


def conv_weights(graph: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of every Conv node, in graph order."""
    tensors = {t.name: numpy_helper.to_array(t).copy() for t in graph.graph.initializer}
    found = []
    for node in graph.graph.node:
        if node.op_type == "Conv":
            if node.input[1] not in tensors:
                raise OnnxWeightsError("the graph's convolution weights are not stored as plain tensors "
                                       "(a quantized model?): fine-tune from the fp32 model")
            bias = tensors.get(node.input[2]) if len(node.input) > 2 else None
            found.append((tensors[node.input[1]], bias))
    return found


def call_order(net: nn.Module, size: int) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each convolution in the order a forward pass runs it (the order export writes the graph
    in), with the BatchNorm that runs right after it, if any."""
    calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, *_: calls.append(m)) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    pairs = []
    for i, module in enumerate(calls):
        if isinstance(module, nn.Conv2d):
            after = calls[i + 1] if i + 1 < len(calls) else None
            pairs.append((module, after if isinstance(after, nn.BatchNorm2d) else None))
    return pairs


def load_onnx_weights(net: nn.Module, model_path: Path) -> float:
    """Put the graph's weights into ``net`` (built with the same architecture); returns the largest
    difference between the two on a test image, after checking it is below the tolerance."""
    graph = OnnxSegmenter(model_path, providers="CPUExecutionProvider")
    weights = conv_weights(onnx.load(str(model_path)))
    pairs = call_order(net, graph.info.input_size)
    if len(weights) != len(pairs):
        raise OnnxWeightsError(f"{model_path.name} has {len(weights)} convolutions, the network {len(pairs)}")
    with torch.no_grad():
        for (weight, bias), (conv, norm) in zip(weights, pairs):
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise OnnxWeightsError(f"convolution shape {weight.shape} in the graph, {tuple(conv.weight.shape)} "
                                       "in the network")
            conv.weight.copy_(torch.from_numpy(weight))
            folded_bias = torch.from_numpy(bias) if bias is not None else torch.zeros(weight.shape[0])
            if norm is None:
                conv.bias.copy_(folded_bias)
            else:
                _set_identity(norm, folded_bias)
    return _check_recovery(net, graph, model_path.name)


def _set_identity(norm: nn.BatchNorm2d, shift: torch.Tensor) -> None:
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)  # so sqrt(var + eps) is exactly 1
    norm.weight.fill_(1.0)
    norm.bias.copy_(shift)


def _check_recovery(net: nn.Module, graph: OnnxSegmenter, name: str) -> float:
    size = graph.info.input_size
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        got = ProbabilityModel(net).eval()(torch.from_numpy(x)).numpy()
    diff = float(np.abs(graph.predict(x) - got).max())
    if diff >= RECOVERY_TOLERANCE:
        raise OnnxWeightsError(f"network from {name} differs from the graph by {diff:.2e}")
    return diff


def freeze_batchnorm_statistics(net: nn.Module) -> None:
    """BatchNorms normalise with their stored statistics, also in training mode (call after ``train()``)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
