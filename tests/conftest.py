from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_ROOT = ROOT / "tests" / "fixtures" / "covid-qu-ex-mini"
SUBSET = FIXTURE_ROOT / "Infection Segmentation Data"
from app.core.config import DEFAULT_MODEL_PATH as SHIPPED_MODEL  # noqa: E402


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


import os  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402


def model_under_test() -> Path:
    """The shipped model; COVIDSEG_TEST_MODEL only for developing before a model ships."""
    return Path(os.environ.get("COVIDSEG_TEST_MODEL", SHIPPED_MODEL))


def make_client(**overrides) -> TestClient:
    from app.core.config import Settings
    from app.main import create_app

    settings = Settings(**{"model_path": model_under_test(), **overrides})
    return TestClient(create_app(settings))


@pytest.fixture(scope="session")
def service_client():
    """A started app on the shipped model, shared by the tests that only read from it."""
    with make_client() as client:
        yield client, client.app.state.service
