"""Training, evaluation and ONNX export of the ResNet-34 U-Net (COVID+Normal recipe)."""

import app  # noqa: F401  (first: it turns ONNX Runtime's telemetry off before any module here loads it)
