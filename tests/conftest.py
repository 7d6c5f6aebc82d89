from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_ROOT = ROOT / "tests" / "fixtures" / "covid-qu-ex-mini"
SUBSET = FIXTURE_ROOT / "Infection Segmentation Data"
SHIPPED_MODEL = ROOT / "models" / "covidseg-unet-r34.onnx"


def fixture_images(split: str, cls: str) -> list[Path]:
    return sorted((SUBSET / split / cls / "images").iterdir())


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """A writable copy of the mini dataset, for tests that break it."""
    dst = tmp_path / "data"
    shutil.copytree(FIXTURE_ROOT, dst)
    return dst


def read_gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))
