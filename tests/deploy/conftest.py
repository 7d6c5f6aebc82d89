"""The deployment tests: images built FROM the site base image and run with Docker Compose.

They skip where no Docker engine runs, and fail instead in CI (COVIDSEG_REQUIRE_DOCKER=1, set by .ci/run)."""

from __future__ import annotations

import pytest

from tests.deploy.compose import require_docker, site_base_image


@pytest.fixture(scope="session")
def site_base() -> str:
    require_docker()
    return site_base_image()
