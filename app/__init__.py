"""COVID-19 lung-infection segmentation service for chest X-rays."""

import os

# ONNX Runtime's official builds send usage telemetry over HTTPS and keep a device identifier unless
# this is set before it initialises; a hospital service calls no one (set before any onnxruntime import).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
