"""Infer: network input (N, 3, 256, 256) -> probabilities (N, 2, 256, 256) with ONNX Runtime.

The service, the evaluation command and the export check all run the model through
:class:`OnnxSegmenter`, so what is measured is what is served.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# CudaOptions lives apart so that the settings can build it without loading ONNX Runtime; re-exported here.
from app.pipeline.providers import CPU_PROVIDER, CUDA_PROVIDER, CudaOptions

try:
    import onnxruntime as ort
except ImportError as exc:  # the runtime is an extra, so that CPU and GPU builds never share a venv
    raise ImportError('no ONNX Runtime installed: pip install -e ".[cpu]" (or ".[gpu]" for NVIDIA GPUs)') from exc

log = logging.getLogger("app.infer")

#: Test-time augmentation: none, or the mean of the image's and its horizontal mirror's probabilities.
TTA_MODES = ("none", "flip")


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable or not the graph this product expects."""


def cuda_device_count() -> int:
    """NVIDIA GPUs the driver can use (0 without a driver or a device): what decides ``auto``,
    since onnxruntime-gpu lists its CUDA provider whether or not there is a GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_providers(requested: str | list[str] = "auto") -> list[str]:
    """``auto``: CUDA when this onnxruntime has it *and* a GPU is usable, else CPU; or an explicit list."""
    available = ort.get_available_providers()
    if requested == "auto":
        usable = CUDA_PROVIDER in available and cuda_device_count() > 0
        return [CUDA_PROVIDER, CPU_PROVIDER] if usable else [CPU_PROVIDER]
    names = [p.strip() for p in (requested.split(",") if isinstance(requested, str) else requested) if p.strip()]
    missing = [p for p in names if p not in available]
    if missing:
        raise ModelLoadError(f"execution provider(s) {missing} not available; this onnxruntime has {available}")
    return names


def provider_list(names: list[str], cuda: CudaOptions) -> list[str | tuple[str, dict[str, Any]]]:
    """ONNX Runtime's providers argument: CUDA with its options."""
    if CUDA_PROVIDER in names and hasattr(ort, "preload_dlls"):
        try:  # CUDA and cuDNN from the nvidia-* pip packages of the gpu extra
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - system libraries may serve instead
            log.warning("could not preload the CUDA libraries from pip packages: %s", exc)
    return [(n, cuda.as_provider_options()) if n == CUDA_PROVIDER else n for n in names]


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the loaded graph."""

    name: str
    version: str
    sha256: str
    input_size: int
    quantization: str | None
    providers: tuple[str, ...]


#: The graph's outputs: the segmentation, then (models from 2.1.1) the input judgement's scores, one per image.
PROBABILITIES = "probabilities"
FEATURE_DISTANCE = "feature_distance"
FRONTAL_SCORE = "frontal_score"
JUDGEMENT_SCORES = (FEATURE_DISTANCE, FRONTAL_SCORE)


@dataclass(frozen=True)
class ModelOutputs:
    """One model run's answers, row by row: probabilities (N, 2, S, S) and, when the graph gives them, the
    judge step's scores of each image (N,) by name (:data:`JUDGEMENT_SCORES`)."""

    probabilities: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, rows: slice) -> ModelOutputs:
        return ModelOutputs(self.probabilities[rows], {k: v[rows] for k, v in self.scores.items()})

    def score(self, name: str, row: int) -> float | None:
        """Image ``row``'s score ``name``, or None when the graph does not give it."""
        return float(self.scores[name][row]) if name in self.scores else None

    @staticmethod
    def concat(parts: list[ModelOutputs]) -> ModelOutputs:
        if len(parts) == 1:
            return parts[0]
        return ModelOutputs(np.concatenate([p.probabilities for p in parts]),
                            {k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores})


class OnnxSegmenter:
    """An ONNX Runtime session over the exported U-Net (input ``image``; outputs ``probabilities`` and, from
    2.1.1, the judgement's scores :data:`JUDGEMENT_SCORES`)."""

    def __init__(self, path: Path | str, providers: str | list[str] = "auto",
                 intra_op_threads: int = 0, inter_op_threads: int = 0, cuda: CudaOptions | None = None):
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=provider_list(
                resolve_providers(providers), cuda or CudaOptions()))
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [o.name for o in outputs]
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or not outputs or \
                (len(outputs) > 1 and (names[0] != PROBABILITIES or not set(names[1:]) <= set(JUDGEMENT_SCORES))):
            raise ModelLoadError(f"{path} is not a segmentation graph with one (N, 3, H, W) input and outputs "
                                 f"{PROBABILITIES} (and some of {', '.join(JUDGEMENT_SCORES)})")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.output_names = names
        size = inputs[0].shape[2]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo(
            name=meta.get("model_name", path.stem),
            version=meta.get("model_version", "unknown"),
            sha256=file_sha256(path),
            quantization=meta.get("quantization"),
            input_size=int(size) if isinstance(size, int) else int(meta.get("input_size", 256)),
            providers=tuple(self.session.get_providers()),
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 2, S, S) float32 for a preprocessed batch (N, 3, S, S)."""
        if batch.ndim != 4:
            raise ValueError(f"expected a batch (N, 3, H, W), got shape {batch.shape}")
        return self.session.run([self.output_name], {self.input_name: batch.astype(np.float32, copy=False)})[0]

    @property
    def judgement_scores(self) -> list[str]:
        """The judge step's scores this graph gives (none for graphs before 2.1.1)."""
        return self.output_names[1:]

    def run(self, batch: np.ndarray) -> ModelOutputs:
        """Every output of the graph for a preprocessed batch (N, 3, S, S)."""
        if batch.ndim != 4:
            raise ValueError(f"expected a batch (N, 3, H, W), got shape {batch.shape}")
        found = self.session.run(self.output_names, {self.input_name: batch.astype(np.float32, copy=False)})
        return ModelOutputs(found[0], dict(zip(self.output_names[1:], found[1:])))


def tta_expand(batch: np.ndarray, tta: str = "none") -> np.ndarray:
    """What the model runs on: the batch, or with ``flip`` the batch followed by its mirrors."""
    if tta == "none":
        return batch
    if tta != "flip":
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    return np.concatenate([batch, batch[..., ::-1]])


def tta_merge(probs: np.ndarray, tta: str = "none") -> np.ndarray:
    """Back to one answer per image: with ``flip``, the mean of each image's and its mirror's answers,
    mirrored back. Mirroring the input mirrors the answer exactly: the two terms trade places."""
    if tta == "none":
        return probs
    n = len(probs) // 2
    return (probs[:n] + probs[n:, ..., ::-1]) / 2


def tta_merge_outputs(outputs: ModelOutputs, tta: str = "none") -> ModelOutputs:
    """:func:`tta_merge` of every output: the judgement's scores are the image's own (not its mirror's), so
    an image is judged the same with or without TTA."""
    if tta == "none":
        return outputs
    n = len(outputs) // 2
    return ModelOutputs(tta_merge(outputs.probabilities, tta), {k: v[:n] for k, v in outputs.scores.items()})


def predict_with_tta(model: OnnxSegmenter, batch: np.ndarray, tta: str = "none") -> np.ndarray:
    """Probabilities of a batch, with test-time augmentation (one model run)."""
    return tta_merge(model.predict(tta_expand(batch, tta)), tta)
