"""The images themselves: built where PyPI is out of reach (a wheelhouse and no network at all, with BuildKit and
with the classic builder), the GPU target among them; what a runtime image leaves out; the sizes the README gives."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.compose import build, project, run

pytestmark = pytest.mark.docker

#: What the Dockerfile reads from its context (the rest is left out by .dockerignore).
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "app", "models",
           "wheelhouse/README.md")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "covidseg"
#: The gpu extra's wheels: .ci/run fills COVIDSEG_WHEEL_CACHE with them for tests/test_gpu_extra.py too.
GPU_WHEELS = Path(os.environ.get("COVIDSEG_WHEEL_CACHE") or CACHE / "wheels")


def wheelhouse(extras: str, folder: Path) -> Path:
    """``pip download`` of the project's extras and the build backend, as a site does where PyPI is reachable:
    into a cache kept between runs (only what is missing is fetched)."""
    folder.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), f".[{extras}]", "setuptools"],
        cwd=ROOT, timeout=1800)
    return folder


def offline_context(name: str, wheels: Path) -> Path:
    """The checkout's build context with ``wheels`` in wheelhouse/, hard-linked (the GPU's are 1.6 GB). Always at
    the same place, outside the checkout: BuildKit then sends only what changed since the last build from it,
    and keeps one copy of it in its cache, not one per run."""
    context = CACHE / "docker-context" / name
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for name in CONTEXT:
        source, target = ROOT / name, context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    for wheel in wheels.glob("*.whl"):
        os.link(wheel, context / "wheelhouse" / wheel.name)
    return context


@pytest.fixture(scope="module")
def gpu_image(site_base: str) -> str:
    """The GPU target built with BuildKit (compose) from a wheelhouse, with no index and no network in its steps."""
    context = offline_context("gpu", wheelhouse("gpu", GPU_WHEELS))
    (context / "compose.yml").write_text(
        "services:\n  gpu:\n    image: covidseg:gpu\n"
        "    build: {context: ., target: gpu, network: none, args: {PIP_NO_INDEX: '1'}}\n")
    # network: none, so pip in the builder can reach no index at all: the wheelhouse is all it has
    run(["docker", "compose", "-p", "covidseg-test-gpu", "-f", str(context / "compose.yml"), "build",
         "--build-arg", f"PYTHON_IMAGE={site_base}", "gpu"], timeout=2400)
    return "covidseg:gpu"


def in_image(image: str, script: str) -> subprocess.CompletedProcess:
    return run(["docker", "run", "--rm", "--network", "none", "--read-only", "--entrypoint", "sh", image, "-c", script],
               check=False, timeout=300)


def test_the_gpu_target_builds_from_a_wheelhouse_without_an_index(gpu_image: str):
    # it cannot run here (no GPU): its ONNX Runtime is the CUDA build, and its labels name the fp32 model
    providers = in_image(gpu_image, "python -c 'import onnxruntime; print(onnxruntime.get_available_providers())'")
    assert "CUDAExecutionProvider" in providers.stdout, providers.stderr
    assert in_image(gpu_image, "python -c 'import app.main'").returncode == 0
    labels = inspect(gpu_image)["Config"]["Labels"]
    assert labels["covidseg.model.name"] == "covidseg-unet-r34"


def test_the_classic_builder_builds_the_cpu_image_from_a_wheelhouse_with_no_network(site_base: str):
    """``docker build`` without BuildKit (this docker CLI has no buildx), the air-gapped way the README gives."""
    context = offline_context("cpu", wheelhouse("cpu", CACHE / "wheels-cpu"))
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    run(["docker", "build", "--network", "none", "--target", "cpu", "--build-arg", f"PYTHON_IMAGE={site_base}",
         "--build-arg", "PIP_NO_INDEX=1", "-t", "covidseg:cpu-offline", str(context)], env=env, timeout=1800)
    # (the tag stays: its classic-builder layers are the cache of the next run's build)
    served = in_image("covidseg:cpu-offline", "python -c 'import app.main, onnxruntime; "
                                              "print(onnxruntime.get_available_providers())'")
    assert served.returncode == 0 and "CPUExecutionProvider" in served.stdout, served.stderr


def inspect(image: str) -> dict:
    import json

    return json.loads(run(["docker", "image", "inspect", image]).stdout)[0]


@pytest.fixture(scope="module")
def images(site_base: str, gpu_image: str) -> dict[str, str]:
    with project("covidseg-test-images") as compose:
        build(compose, "covidseg", PYTHON_IMAGE=site_base)
        build(compose, "batch", profile="batch", PYTHON_IMAGE=site_base)
    return {"cpu": "covidseg:cpu", "batch": "covidseg:batch", "gpu": gpu_image}


def test_runtime_images_hold_no_compiler_wheelhouse_pip_cache_or_pip_settings(images: dict[str, str]):
    for target, image in images.items():
        found = in_image(image, "ls -d /wheelhouse /root/.cache /srv/.cache /srv/pyproject.toml "
                                "/srv/covidseg.egg-info 2>/dev/null; command -v gcc cc c++ make; true")
        assert found.stdout.strip() == "", f"{target}: {found.stdout}"
        config = inspect(image)["Config"]
        assert not [e for e in config["Env"] if e.startswith(("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX",
                                                                "PIP_TRUSTED_HOST", "PIP_FIND_LINKS"))], target
        history = run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image]).stdout
        assert "PIP_NO_INDEX" not in history and "wheelhouse" not in history, target
        assert config["User"] == "covidseg"


def readme_sizes() -> dict[str, float]:
    """The README's table of image sizes: target -> MB."""
    text = (ROOT / "README.md").read_text()
    return {m.group(1): float(m.group(2)) * (1000 if m.group(3) == "GB" else 1)
            for m in re.finditer(r"^\| `(cpu|batch|gpu)` \| ([\d.]+) (MB|GB) \|", text, re.M)}


def test_the_readme_gives_each_images_size(images: dict[str, str]):
    sizes = readme_sizes()
    assert set(sizes) == set(images)
    for target, image in images.items():
        measured = inspect(image)["Size"] / 1e6  # what docker image ls shows, in MB
        assert abs(measured - sizes[target]) <= 0.1 * sizes[target], f"{target}: {measured:.0f} MB"
