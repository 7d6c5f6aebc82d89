"""What can be checked of the deployment files without a Docker engine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def readme_commands() -> list[str]:
    """The fresh-machine commands: the lines of the README's quick-start block."""
    block = re.search(r"<!-- quickstart -->\s*```(?:bash|sh)?\n(.*?)```", README, re.S)
    assert block, "README has no quickstart block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def ci_commands() -> list[str]:
    """The lines of .ci/run that run something: no shebang, comments or blank lines."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one():
    serve, test = readme_commands()
    assert serve.endswith("python -m app") and "pytest" in test
    commands = ci_commands()
    # the last command's status is the script's: CI passes exactly when the README's test command does
    assert commands[-1] == test, "the README's test command must be the last line of .ci/run"
    # and anything before it that fails stops the script first (as its first command)
    assert commands[0] == "set -euo pipefail"


def stage(name: str) -> str:
    """The Dockerfile text of one build stage."""
    return re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S).group(1)


def image(name: str) -> str:
    """What makes one image: its runtime stage and the builder stage whose environment it copies."""
    (builder,) = re.findall(r"^COPY --from=(\S+) /srv/\.venv /srv/\.venv$", stage(name), re.M)
    return stage(builder) + stage(name)


def test_dockerfile_installs_like_the_readme():
    serve, _ = readme_commands()
    install = re.search(r"\.venv/bin/pip install [^&]+", serve).group(0).strip()
    assert install == '.venv/bin/pip install -e ".[cpu]"'
    assert install in image("cpu")  # the CPU image installs the project exactly as the README does
    assert '.venv/bin/pip install -e ".[gpu]"' in image("gpu") and "[cpu]" not in image("gpu")


def test_runtime_stages_copy_only_the_environment_from_their_builders():
    """pip's settings and the wheelhouse stay in the builder stages: a runtime image holds none of them."""
    for name in ("cpu", "gpu", "batch"):
        assert re.search(rf"^FROM base AS {name}$", DOCKERFILE, re.M)
        assert "pip install" not in stage(name) and "ARG PIP_" not in stage(name) and "wheelhouse" not in stage(name)
        builder = re.search(r"^COPY --from=(\S+) ", stage(name), re.M).group(1)
        for setting in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_NO_INDEX", "PIP_FIND_LINKS"):
            assert re.search(rf"^ARG {setting}\b", stage(builder), re.M), (builder, setting)
    assert (ROOT / "wheelhouse").is_dir()  # COPY wheelhouse needs it, wheels or not


def test_labels_name_the_version_and_each_images_default_model():
    import json

    from app.core.config import Settings
    from app.pipeline.providers import CPU_PROVIDER

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f'org.opencontainers.image.version="{version}"' in stage("base")
    for name, provider in (("cpu", CPU_PROVIDER), ("batch", CPU_PROVIDER), ("gpu", "CUDAExecutionProvider")):
        model, _ = Settings().model_for([provider])
        card = json.loads(model.with_suffix(".card.json").read_text())
        labels = dict(re.findall(r'(covidseg\.model\.\w+)="([^"]*)"', stage(name)))
        assert labels == {"covidseg.model.name": card["name"], "covidseg.model.version": card["version"],
                          "covidseg.model.sha256": card["sha256"]}, name


def test_gpu_stage_pins_agree_with_the_gpu_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (gpu,) = extras["gpu"]
    assert re.fullmatch(r"onnxruntime-gpu\[cuda,cudnn\]==\d+\.\d+\.\d+", gpu)  # pinned, CUDA libraries from pip
    assert extras["cpu"] == ["onnxruntime>=1.18"]
    # the image gets onnxruntime-gpu only through the extra, so its pin is the extra's
    assert "onnxruntime" not in image("gpu").replace('".[gpu]"', "")
    # one Python base for both images (CUDA comes from the extra, not from a CUDA base image)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS base$", DOCKERFILE, re.M)
    assert re.search(r"^FROM base AS gpu$", DOCKERFILE, re.M) and re.search(r"^FROM base AS cpu$", DOCKERFILE, re.M)


def test_dockerfile_copies_what_exists_and_serves_safely():
    for src in re.findall(r"^COPY\s+(?!--from=)(?:--\S+\s+)*(.+?)\s+\S+$", DOCKERFILE, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"COPY source {part} missing"
    assert "models/covidseg-unet-r34.onnx" in [p.relative_to(ROOT).as_posix() for p in (ROOT / "models").iterdir()]
    for name in ("cpu", "gpu"):  # each image ends as the unprivileged service user
        assert re.search(r"^USER (?!root)\S+", stage(name), re.M)
    assert "EXPOSE 8000" in DOCKERFILE
    assert re.search(r"HEALTHCHECK .*\n?.*/ready", DOCKERFILE)
    # the images run the Python the README's quick start names
    python = re.search(r"^## Quick start \(fresh machine, Python (3\.\d+)\)$", README, re.M).group(1)
    assert re.search(rf"^ARG PYTHON_IMAGE=python:{re.escape(python)}-slim$", DOCKERFILE, re.M)


def test_service_install_has_no_torch_and_leaves_the_runtime_to_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("torch", "segmentation-models", "onnxruntime"))]
    assert "torch==2.14.1" in project["optional-dependencies"]["train"]


def test_compose_file():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["covidseg"]
    assert "8000" in svc["ports"][0] and svc["restart"] == "unless-stopped"
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert "/ready" in " ".join(svc["healthcheck"]["test"])
    assert "COVIDSEG_API_KEYS" in svc["environment"]
    # SIGTERM drains the requests in work for COVIDSEG_DRAIN_TIMEOUT: the engine's SIGKILL comes only after that
    from app.core.config import Settings

    assert int(svc["stop_grace_period"].removesuffix("s")) > Settings().drain_timeout
    assert svc["init"] is True  # a PID 1 that passes SIGTERM on and reaps children
    gpu = compose["services"]["covidseg-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_compose_pacs_profile_wires_orthanc_the_node_and_the_bridge():
    """Names, ports and AE titles agree across the services (the routing itself runs for real in
    tests/node/test_node.py with the same Orthanc settings and Lua script)."""
    import json

    from app.core.config import Settings

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    orthanc, node, bridge = services["orthanc"], services["covidseg-node"], services["pacs-bridge"]
    assert orthanc["profiles"] == node["profiles"] == bridge["profiles"] == ["pacs"]
    target = json.loads(orthanc["environment"]["ORTHANC__DICOM_MODALITIES"])["covidseg"]
    node_env = node["environment"]
    defaults = Settings()
    assert target["Host"] == "covidseg-node" and target["Port"] == defaults.node_port
    assert node["ports"][0].endswith(f":{defaults.node_port}")
    assert target["AET"] == node_env["COVIDSEG_NODE_AE_TITLE"].split(":-")[1].rstrip("}") == defaults.node_ae_title
    orthanc_aet = orthanc["environment"]["ORTHANC__DICOM_AET"]
    assert node_env["COVIDSEG_NODE_ALLOWED_CALLERS"] == "${COVIDSEG_NODE_ALLOWED_CALLERS:-" + orthanc_aet + "}"
    assert node_env["COVIDSEG_NODE_DESTINATION"].endswith(f"{orthanc_aet}@orthanc:4242}}")
    assert any(p.endswith(":4242") for p in orthanc["ports"])
    assert node["command"] == ["python", "-m", "app.node"] and "/spool" in node["volumes"][0]
    # healthy means both workers alive (app.node.health reads their heartbeats in the same spool)
    assert node["healthcheck"]["test"] == ["CMD", "python", "-m", "app.node.health"]
    assert node["environment"]["COVIDSEG_NODE_SPOOL_DIR"] == "/spool"
    assert bridge["command"][:3] == ["python", "-m", "app.pacs"]
    assert bridge["environment"]["COVIDSEG_PACS_DICOMWEB_URL"] == "http://orthanc:8042/dicom-web"
    assert orthanc["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert bridge["volumes"] and bridge["depends_on"]["covidseg"]["condition"] == "service_healthy"


def test_ray_stays_out_of_the_serving_images_and_the_batch_image_and_profile_have_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("ray[data,default]==") for d in project["optional-dependencies"]["batch"])  # pinned
    assert not [d for d in project["dependencies"] if d.startswith(("ray", "pyarrow"))]
    for name in ("cpu", "gpu"):
        assert not [line for line in re.findall(r"pip install.*", image(name)) if "batch" in line]
    assert '.venv/bin/pip install -e ".[cpu,batch]"' in image("batch")
    assert re.search(r"^USER (?!root)\S+", stage("batch"), re.M) and "HEALTHCHECK NONE" in stage("batch")
    batch = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["batch"]
    assert batch["profiles"] == ["batch"] and batch["build"]["target"] == "batch"
    assert batch["command"][:3] == ["python", "-m", "app.batch"] and "--out" in batch["command"]
    assert batch["read_only"] is True and "/tmp" in batch["tmpfs"]
    assert any(v.endswith(":/data:ro") for v in batch["volumes"])  # the archive is never written to
    out = batch["command"][batch["command"].index("--out") + 1]
    assert any(out.startswith(v.split(":")[1]) for v in batch["volumes"] if not v.endswith(":ro"))


def test_compose_overrides_name_only_services_they_extend():
    """deploy/docker's override files change what they say and nothing else (run for real in tests/deploy)."""
    shipped = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    docker = ROOT / "deploy" / "docker"
    engine25 = yaml.safe_load((docker / "engine-25.yml").read_text())["services"]
    assert set(engine25) == {name for name, svc in shipped.items() if "healthcheck" in svc}
    assert all(svc["healthcheck"] == {"interval": "30s", "start_interval": "1s"} for svc in engine25.values())
    # Debian's Orthanc reads the shipped service's ORTHANC__* settings: the override sets none of its own
    assert set(yaml.safe_load((docker / "orthanc-debian.yml").read_text())["services"]["orthanc"]) == {"image", "build"}
    cluster = yaml.safe_load((docker / "ray-cluster.yml").read_text())["services"]
    assert {svc["image"] for svc in cluster.values()} == {shipped["batch"]["image"]}
    assert set(yaml.safe_load((docker / "ray-hosts.yml").read_text())["services"]) == set(cluster)
