"""Training, evaluation and ONNX export of the ResNet-34 U-Net (COVID+Normal recipe)."""
