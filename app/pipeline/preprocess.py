"""The one preprocessing function of the product.

Training, evaluation, ONNX export checks and the service all call
:func:`preprocess_image` / :func:`preprocess_batch`; ``tests/pipeline/test_preprocess.py``
checks they agree.  It follows the recipe of the source report: scale 8-bit
grayscale to [0, 1], then to [-1, 1] with ``x' = 2 (x - 0.5)``, and replicate the
single channel to three (the encoder's stem expects RGB).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Side of the square image the network sees (the dataset's native size).
INPUT_SIZE = 256
#: Channels the encoder expects.
INPUT_CHANNELS = 3


def resize_gray(gray: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize an 8-bit grayscale image to ``size x size`` (bilinear); no-op when it already is."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray, mode="L").resize((size, size), Image.BILINEAR))


#: ``2 (v / 255 - 0.5)`` for each 8-bit value v, in the float32 operations an image's pixels would go
#: through: looking the pixels up gives the same bits in one pass instead of four.
SCALED = 2.0 * (np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0 - 0.5)


def scaled_plane(gray: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """One 8-bit grayscale image (H, W) resized and scaled: (size, size) float32 in [-1, 1]."""
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    if gray.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {gray.dtype}")
    return SCALED[resize_gray(gray, size)]


def preprocess_image(gray: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Turn one 8-bit grayscale image (H, W) into the network input (3, size, size), float32 in [-1, 1]."""
    return np.repeat(scaled_plane(gray, size)[None, :, :], INPUT_CHANNELS, axis=0)


def preprocess_batch(grays: list[np.ndarray], size: int = INPUT_SIZE) -> np.ndarray:
    """:func:`preprocess_image` over several images: (N, 3, size, size) float32, written in place."""
    batch = np.empty((len(grays), INPUT_CHANNELS, size, size), dtype=np.float32)
    for i, gray in enumerate(grays):
        batch[i] = scaled_plane(gray, size)  # the same plane in each channel
    return batch


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Ground-truth masks: any non-zero pixel is foreground (1), else 0; uint8."""
    return (mask > 0).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize a label mask to ``size x size`` with nearest neighbour so labels stay labels."""
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
