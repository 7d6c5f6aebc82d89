"""The Kubernetes manifests (deploy/kubernetes): every overlay rendered with ``kubectl kustomize``, each
object validated against the Kubernetes API schemas offline (kubernetes-validate's bundled schemas), and
every value that also lives elsewhere checked against its one source: ``Settings`` (variable names and
values, ports), the Dockerfile (exposed ports, the service user's uid, the image's paths and targets), the
app (probe routes and modules), ``bench/RESULTS.md`` (memory), docker-compose.yml (image names) and, for the
batch overlay's KubeRay ``RayJob``, pyproject.toml's Ray pin and the installed Ray's own routes and ports. The
RayJob is validated against deploy/kubernetes/schemas/rayjob.ray.io-v1.schema.json (a subset of KubeRay's API
written here, not its CRD), and each of its pod templates as a core v1 PodTemplate.

No cluster runs here: this checks what ``kubectl apply -k`` would send, not a deployment. A new overlay
under deploy/kubernetes/overlays/ is picked up by every test below.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml
from pydantic import AliasChoices

from app.core.config import Settings
from app.core.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
# The oldest and the newest API the manifests are checked against (kubernetes-validate ships both).
KUBERNETES_VERSIONS = ("1.30", "1.37")
WORKLOADS = ("Deployment", "StatefulSet")
RAY_JOB = "RayJob"  # KubeRay's (ray.io/v1): its pod templates are checked like the workloads'
RAYJOB_SCHEMA = KUBE / "schemas" / "rayjob.ray.io-v1.schema.json"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SECRET = object()  # stands for a value taken from a Secret
CLIENT_LABEL = {"covidseg-client": "true"}  # README, Kubernetes: kubectl label namespace ... covidseg-client=true
API_KEY_SECRET = "covidseg-api-keys"
PACS_SECRET = "covidseg-pacs"  # README, Kubernetes: kubectl create secret generic covidseg-pacs
KUBERAY_LABEL = {"covidseg-kuberay": "true"}  # README: the KubeRay operator's namespace, for the dashboard port
# Overlays whose image is not docker-compose.yml's CPU one.
COMPOSE_SERVICE_OF = {"overlays/gpu": "covidseg-gpu", "overlays/batch": "batch"}
# Overlays without the service: the batch job runs its own engines (a test checks that only these lack it).
WITHOUT_SERVICE = {"overlays/batch"}
SERVICE_TARGETS = [t for t in TARGETS if t not in WITHOUT_SERVICE]


# ---------------------------------------------------------------------------------------------- rendering


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl (with kustomize) is needed to render deploy/kubernetes: apt-get install kubernetes-client")
    return path


@functools.cache
def _rendered(directory: str) -> tuple[dict, ...]:
    done = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(target: str | Path) -> list[dict]:
    """The objects ``kubectl apply -k`` would send for ``target`` (a path under deploy/kubernetes, or any folder)."""
    directory = KUBE / target if isinstance(target, str) else target
    return copy.deepcopy(list(_rendered(str(directory))))


def site(tmp_path: Path, resources: list[str], components: list[str]) -> Path:
    """An operator's own overlay over a copy of deploy/kubernetes (kustomize takes no absolute paths);
    the API-key file is made from its example, as the README says."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBE, tree, ignore=shutil.ignore_patterns("api-keys.env"))
    keys = tree / "components" / "api-keys-from-file"
    shutil.copy(keys / "api-keys.env.example", keys / "api-keys.env")
    (tree / "site").mkdir()
    (tree / "site" / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": [f"../{r}" for r in resources], "components": [f"../{c}" for c in components]}))
    return tree / "site"


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


@dataclass(frozen=True)
class Pod:
    """A pod template the cluster will run: a workload's, or one of a RayJob's (its head, each worker
    group, its submitter: ``ray`` says which)."""

    owner: dict
    template: dict
    name: str
    ray: str | None = None  # "head", "worker" or "submitter" for a RayJob's pods

    @property
    def labels(self) -> dict:
        return self.template["metadata"]["labels"]


def pods(docs: list[dict]) -> Iterator[Pod]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield Pod(doc, doc["spec"]["template"], doc["metadata"]["name"])
        elif doc["kind"] == RAY_JOB:
            name, spec = doc["metadata"]["name"], doc["spec"]
            cluster = spec["rayClusterSpec"]
            yield Pod(doc, cluster["headGroupSpec"]["template"], f"{name}-head", "head")
            for group in cluster.get("workerGroupSpecs", []):
                yield Pod(doc, group["template"], f"{name}-{group['groupName']}", "worker")
            if "submitterPodTemplate" in spec:
                yield Pod(doc, spec["submitterPodTemplate"], f"{name}-submitter", "submitter")


def containers(docs: list[dict]) -> Iterator[tuple[Pod, dict, dict]]:
    """(pod, pod spec, container) for every container of every pod template."""
    for pod in pods(docs):
        spec = pod.template["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            yield pod, spec, container


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def environment(docs: list[dict], container: dict) -> dict[str, object]:
    """The container's variables as Kubernetes sets them: envFrom in order, then env (SECRET for a Secret's)."""
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            env.update(dict.fromkeys(named(docs, "Secret", source["secretRef"]["name"]).get("data", {}), SECRET))
    for var in container.get("env", []):
        env[var["name"]] = SECRET if "secretKeyRef" in var.get("valueFrom", {}) else var["value"]
    return env


def settings_of(docs: list[dict], container: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings()`` as the container's program reads it (a Secret's value stands in as ``key1``)."""
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.upper().startswith("COVIDSEG_")]:
            m.delenv(name)
        for name, value in environment(docs, container).items():
            m.setenv(name, "key1" if value is SECRET else str(value))
        return Settings()


def program(container: dict) -> list[str]:
    """What the container runs: its command, or its image's CMD (the Dockerfile target its tag names)."""
    return container.get("command") or dockerfile_cmd(container["image"].rsplit(":", 1)[1])


def runs_node(container: dict) -> bool:
    return program(container)[:3] == ["python", "-m", "app.node"]


def container_port(container: dict, port: int | str) -> int:
    """A port as a container names or numbers it."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(number) * units.get(unit, 1 / 2**20)


def cores(quantity: str) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ------------------------------------------------------------------------------------------------ sources


def settings_variables() -> set[str]:
    """Every environment variable Settings reads: the prefixed field names and the fields' own aliases."""
    prefix = Settings.model_config["env_prefix"]
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str) and c.upper().startswith(prefix)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def dockerfile_exposed() -> set[int]:
    lines = re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILE, re.MULTILINE)
    return {int(port.split("/")[0]) for line in lines for port in line.split()}


def dockerfile_uid() -> int:
    (uid,) = re.findall(r"useradd\b[^\n]*--uid[ =](\d+)", DOCKERFILE)
    return int(uid)


def dockerfile_workdir() -> str:
    return re.findall(r"^WORKDIR\s+(\S+)$", DOCKERFILE, re.MULTILINE)[-1]


def dockerfile_stage_parents() -> dict[str, str]:
    return {name: parent for parent, name in re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.MULTILINE)}


def dockerfile_cmd(stage: str) -> list[str]:
    """The CMD of a build target: its own stage's last, or the one it inherits from its base stage."""
    text = re.search(rf"^FROM \S+ AS {re.escape(stage)}\n(.*?)(?=^FROM |\Z)", DOCKERFILE,
                     re.MULTILINE | re.DOTALL).group(1)
    commands = re.findall(r"^CMD\s+(\[.*\])$", text, re.MULTILINE)
    return yaml.safe_load(commands[-1]) if commands else dockerfile_cmd(dockerfile_stage_parents()[stage])


def dockerfile_stages() -> set[str]:
    return set(dockerfile_stage_parents())


@functools.cache
def route_status(path: str) -> int:
    """What the app answers a kubelet's GET on ``path`` before its model is loaded (404: no such route)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    return TestClient(create_app(Settings())).get(path).status_code  # no lifespan: the model is not loaded


def histograms() -> set[str]:
    return {m.name for m in ServiceMetrics().registry.collect() if m.type == "histogram"}


def memory_table() -> dict:
    """bench/RESULTS.md's memory figures (MiB): the largest baseline and single-image increase, each request's
    increase against the admission's estimate, and the bursts' largest peak."""
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    block = re.search(r"<!-- memory:start -->(.*?)<!-- memory:end -->", text, re.DOTALL).group(1)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
    rows = [r for r in cells if re.fullmatch(r"[\dx]+", r[0])]
    bursts = [r for r in cells if re.match(r"\d+ x /segment", r[0])]
    assert rows and bursts, "bench/RESULTS.md has no memory table (python -m bench.memory)"
    single = [r for r in rows if r[1] == "/segment" and r[0] == "3000"]
    return {"baseline": max(float(r[3]) for r in rows),
            "single": max(float(r[5].lstrip("+")) for r in single),
            "estimates": [(float(r[5].lstrip("+")), float(r[6]), f"{r[0]} {r[1]} {r[2]}") for r in rows],
            "burst_peak": max(float(r[4]) for r in bursts)}


# ------------------------------------------------------------------------------------ rendering, schemas


def validate(doc: dict) -> None:
    """``doc`` against the Kubernetes API schemas; a RayJob against its schema and its pods as PodTemplates."""
    if doc["kind"] == RAY_JOB:
        validate_rayjob(doc)
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {path}: {exc.message}")


@functools.cache
def rayjob_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(RAYJOB_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def pod_template(pod: Pod) -> dict:
    """A RayJob's pod template as the core object it is, for the Kubernetes API schemas."""
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": pod.name}, "template": pod.template}


def validate_rayjob(doc: dict) -> None:
    errors = sorted(rayjob_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        pytest.fail("; ".join(f"{doc['metadata']['name']}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                              for e in errors))
    for pod in pods([doc]):
        validate(pod_template(pod))


@pytest.mark.parametrize("target", TARGETS)
def test_every_overlay_renders_and_each_object_matches_the_kubernetes_api_schema(target):
    docs = render(target)
    assert bool(of_kind(docs, "Deployment")) == (target not in WITHOUT_SERVICE), "the service, or a job"
    assert list(containers(docs)), "every target runs something"
    for doc in docs:
        validate(doc)  # an unknown kind raises SchemaNotFoundError: nothing is left unchecked


def test_the_validator_rejects_what_the_api_would():
    docs = render("base")
    deployment = named(docs, "Deployment", "covidseg")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):  # a misspelt field, as the API server refuses it
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    probe = copy.deepcopy(named(docs, "Deployment", "covidseg"))
    probe["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["periodSeconds"] = "5s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(probe, KUBERNETES_VERSIONS[0], strict=True)


def rayjob() -> dict:
    (job,) = of_kind(render("overlays/batch"), RAY_JOB)
    return job


def test_the_rayjob_schema_refuses_what_kuberay_would_and_says_it_is_a_subset():
    job = rayjob()
    validate_rayjob(job)
    broken = []
    for path, field, value in [((), "spec", None), (("spec",), "shutdownAfterJobFinish", True),
                               (("spec", "rayClusterSpec"), "workerGroupSpec", []),
                               (("spec", "rayClusterSpec", "headGroupSpec"), "rayStartParam", {}),
                               (("spec", "rayClusterSpec", "workerGroupSpecs", 0), "replica", 1)]:
        doc = copy.deepcopy(job)
        parent = functools.reduce(lambda node, key: node[key], path, doc)
        parent[field] = value if value is not None else {**parent[field], "entrypoint": 1}
        broken.append(doc)
    worker = copy.deepcopy(job)
    worker["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 2  # strings only
    mode = copy.deepcopy(job)
    mode["spec"]["submissionMode"] = "K8sJob"
    for doc in [*broken, worker, mode]:
        assert list(rayjob_validator().iter_errors(doc)), doc
    # a pod template's own mistakes are the Kubernetes API schemas' to find
    head = copy.deepcopy(job)
    container = head["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True
    (head_pod,) = [p for p in pods([head]) if p.ray == "head"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod_template(head_pod), KUBERNETES_VERSIONS[0], strict=True)
    description = json.loads(RAYJOB_SCHEMA.read_text())["description"]
    assert "subset" in description and "NOT KubeRay's generated CRD" in description


def test_components_render_and_validate_over_an_overlay(tmp_path):
    docs = render(site(tmp_path, ["overlays/gpu"], ["components/api-keys-from-file", "components/scale-on-latency"]))
    for doc in docs:
        validate(doc)


# -------------------------------------------------------------------------------------- settings and Secret


def test_settings_variables_are_derived_from_the_fields_and_their_aliases():
    names = settings_variables()
    assert {"COVIDSEG_PORT", "COVIDSEG_API_KEYS", "COVIDSEG_NODE_SPOOL_DIR", "COVIDSEG_MODEL_PATH"} <= names
    assert {"COVIDSEG_PACS_USER", "COVIDSEG_PACS_ORTHANC_PASSWORD"} <= names  # aliases, not prefix + field name
    assert "COVIDSEG_NODE_SPOOL" not in names and "COVIDSEG_PACS_ORTHANC_USER_X" not in names


def manifest_variables(docs: list[dict]) -> set[str]:
    """The variable names a render sets: ConfigMap and Secret keys and every container's env."""
    names = set()
    for doc in of_kind(docs, "ConfigMap") + of_kind(docs, "Secret"):
        names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    for _, _, container in containers(docs):
        names |= {v["name"] for v in container.get("env", [])}
    for job in of_kind(docs, RAY_JOB):  # the job's own environment, if it is given one
        names |= set((yaml.safe_load(job["spec"].get("runtimeEnvYAML") or "{}") or {}).get("env_vars", {}))
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_every_covidseg_variable_a_manifest_names_is_a_setting(target):
    named_here = {n for n in manifest_variables(render(target)) if n.startswith("COVIDSEG_")}
    assert named_here, "the manifests set COVIDSEG_* settings"
    assert named_here <= settings_variables(), f"not settings: {sorted(named_here - settings_variables())}"


def test_every_covidseg_variable_in_the_kubernetes_files_is_a_setting():
    """Comments and examples included: a renamed setting leaves no stale name behind."""
    for path in (p for p in KUBE.rglob("*") if p.is_file()):
        unknown = set(re.findall(r"COVIDSEG_[A-Z0-9_]+(?![A-Z0-9_*])", path.read_text())) - settings_variables()
        assert not unknown, f"{path.relative_to(ROOT)} names {sorted(unknown)}, which Settings does not know"


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_environment_is_valid_settings(target, monkeypatch):
    docs = render(target)
    for _, _, container in containers(docs):
        settings_of(docs, container, monkeypatch)  # a bad value raises, as it would stop the pod


def secret_refs(container: dict) -> dict[str, dict]:
    return {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container.get("env", [])
            if "secretKeyRef" in v.get("valueFrom", {})}


def credentials_needed(pod: Pod, container: dict) -> dict[str, str]:
    """The credentials a container's program reads (variable: Secret): the service its API keys, the batch
    job's driver (on the Ray head) the PACS login; the node, the Ray workers and the submitter none (the
    driver hands the workers their PACS client's login)."""
    if pod.ray == "head":
        return {"COVIDSEG_PACS_USER": PACS_SECRET, "COVIDSEG_PACS_PASSWORD": PACS_SECRET}
    if pod.ray or runs_node(container):
        return {}
    return {"COVIDSEG_API_KEYS": API_KEY_SECRET}


def test_credentials_come_from_secrets_and_never_from_a_configmap():
    secret_fields = {n for n in settings_variables() if re.search(r"API_KEY|PASSWORD|_USER$", n)}
    assert {"COVIDSEG_API_KEYS", "COVIDSEG_PACS_PASSWORD", "COVIDSEG_PACS_USER"} <= secret_fields
    for target in TARGETS:
        docs = render(target)
        for config in of_kind(docs, "ConfigMap"):
            assert not set(config.get("data", {})) & secret_fields, f"{target}: a secret in a ConfigMap"
        for pod, _, container in containers(docs):
            # not optional: no credentials, no pod (an empty value turns a check off)
            expected = {name: {"name": secret, "key": name} for name, secret in credentials_needed(pod, container).items()}
            assert secret_refs(container) == expected, f"{target}: {pod.name}/{container['name']}"


def test_the_secret_generator_reads_the_ignored_key_file_and_the_service_uses_its_secret(tmp_path):
    docs = render(site(tmp_path, ["overlays/cpu"], ["components/api-keys-from-file"]))
    (secret,) = of_kind(docs, "Secret")
    assert secret["metadata"]["name"].startswith(f"{API_KEY_SECRET}-")  # hashed: a new key rolls the pods
    keys = base64.b64decode(secret["data"]["COVIDSEG_API_KEYS"]).decode()
    assert keys == "replace-with-a-long-random-key,a-second-key-while-rotating"
    (env,) = [v for v in named(docs, "Deployment", "covidseg")["spec"]["template"]["spec"]["containers"][0]["env"]
              if v["name"] == "COVIDSEG_API_KEYS"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    component = KUBE / "components" / "api-keys-from-file"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(component / "api-keys.env")], cwd=ROOT, check=False)
    shipped = subprocess.run(["git", "check-ignore", "-q", str(component / "api-keys.env.example")], cwd=ROOT,
                             check=False)
    assert ignored.returncode == 0 and shipped.returncode == 1  # the keys stay out of git, the example does not


# ------------------------------------------------------------------------------------ ports, user, image


def ray_source(relative: str) -> str:
    """A file of the installed Ray (the batch extra's pin), read without importing Ray."""
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations, "Ray (the batch extra) is needed: pip install -e '.[batch]'"
    return (Path(spec.submodule_search_locations[0]) / relative).read_text()


def ray_constant(name: str) -> int:
    return int(re.search(rf"^{name} = (\d+)$", ray_source("_private/ray_constants.py"), re.MULTILINE).group(1))


@functools.cache
def ray_routes() -> set[str]:
    """The HTTP routes Ray's dashboard and its per-node agent serve (aiohttp route decorators)."""
    spec = importlib.util.find_spec("ray")
    dashboard = Path(spec.submodule_search_locations[0]) / "dashboard"
    return {route for path in dashboard.rglob("*.py") if "tests" not in path.parts
            for route in re.findall(r"routes\.get\(\s*\"([^\"]+)\"", path.read_text())}


def ray_start_params(pod: Pod) -> dict[str, str]:
    cluster = pod.owner["spec"]["rayClusterSpec"]
    if pod.ray == "head":
        return cluster["headGroupSpec"].get("rayStartParams", {})
    (group,) = [g for g in cluster["workerGroupSpecs"] if g["template"] is pod.template]
    return group.get("rayStartParams", {})


@pytest.mark.parametrize("target", TARGETS)
def test_ports_are_the_ones_the_dockerfile_exposes_and_the_programs_listen_on(target, monkeypatch):
    docs = render(target)
    exposed = dockerfile_exposed()
    for pod, _, container in containers(docs):
        if pod.ray:  # Ray's own ports (KubeRay adds the ones not named); none of the service's
            declared = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert declared == ({"dashboard": ray_constant("DEFAULT_DASHBOARD_PORT")} if pod.ray == "head" else {})
            continue
        settings = settings_of(docs, container, monkeypatch)
        if runs_node(container):
            listens = [settings.node_port, settings.node_metrics_port]
        else:  # the service, and its probe port when set
            listens = [settings.port] + ([settings.probe_port] if settings.probe_port else [])
        assert [p["containerPort"] for p in container["ports"]] == listens
        for port in set(listens) - {settings.probe_port}:  # the probe port is the manifest's choice, not the image's
            assert port in exposed, f"port {port} is not EXPOSEd by the Dockerfile"
    for service in of_kind(docs, "Service"):
        backends = [c for p, _, c in containers(docs) if selects(service["spec"]["selector"], p.labels)]
        assert backends, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            assert port["port"] in exposed
            assert {container_port(c, port["targetPort"]) for c in backends} <= exposed


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_the_image_user_without_privileges(target):
    uid = dockerfile_uid()
    for owner, pod, container in containers(render(target)):
        pod_sc, sc = pod["securityContext"], container["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == uid
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", uid) == uid
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        # Writable: only volumes (an emptyDir /tmp at least), never the image's own files.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        if owner.ray in ("head", "worker"):  # Ray's object store: shared memory, at least as large as Ray's cap
            shm = volumes[mounts["/dev/shm"]]["emptyDir"]
            assert shm["medium"] == "Memory"
            assert mebibytes(shm["sizeLimit"]) >= int(ray_start_params(owner)["object-store-memory"]) / 2**20


def service_link_variables(service: dict) -> set[str]:
    """The variables Kubernetes puts into pods for a Service when service links are on (Docker-link style)."""
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    names = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for port in service["spec"]["ports"]:
        base = f"{prefix}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
        names |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
        if port.get("name"):
            names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_service_links_are_off_where_they_would_set_settings(target):
    """A Service named covidseg gives every pod of its namespace COVIDSEG_PORT=tcp://10.x.y.z:8000, which
    Settings would read as its port and refuse: no pod may get service links, whichever overlays share the
    namespace (the batch job's pods beside the service's)."""
    services = [s for t in TARGETS for s in of_kind(render(t), "Service")]
    links = set().union(*(service_link_variables(s) for s in services))
    assert links & settings_variables(), "the Services' names make variables Settings reads"
    for _, pod, _ in containers(render(target)):
        assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_the_dockerfile_targets_as_compose_tags_them(target):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    expected = compose[COMPOSE_SERVICE_OF.get(target, "covidseg")]
    for _, _, container in containers(render(target)):
        assert container["image"] == expected["image"]
        assert container["image"].rsplit(":", 1)[1] == expected["build"]["target"] in dockerfile_stages()


# ------------------------------------------------------------------------------------------------ probes


def check_ray_probes(pod: Pod, container: dict) -> None:
    """HTTP probes on Ray's own health routes (KubeRay's default probes run wget, which the image lacks):
    the GCS's through the head's dashboard, the raylet's through each node's dashboard agent."""
    if pod.ray == "submitter":  # a Job's pod: it ends, nothing to probe
        assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(container)
        return
    agent = int(ray_start_params(pod)["dashboard-agent-listen-port"])
    assert agent == ray_constant("DEFAULT_DASHBOARD_AGENT_LISTEN_PORT")  # KubeRay's default, said once here
    expected = {"readinessProbe": ("/api/gcs_healthz", ray_constant("DEFAULT_DASHBOARD_PORT")) if pod.ray == "head"
                else ("/api/local_raylet_healthz", agent),
                "livenessProbe": ("/api/local_raylet_healthz", agent)}
    for kind, (path, port) in expected.items():
        probe = container[kind]["httpGet"]
        assert probe["path"] == path and path in ray_routes(), f"{kind} {path}: not a route of this Ray"
        assert container_port(container, probe["port"]) == port
        assert container[kind]["timeoutSeconds"] < container[kind]["periodSeconds"]


@pytest.mark.parametrize("target", TARGETS)
def test_probes_exist_and_point_at_real_routes_and_modules(target):
    for pod, _, container in containers(render(target)):
        if pod.ray:
            check_ray_probes(pod, container)
            continue
        module = program(container)[2]
        assert program(container)[:2] == ["python", "-m"] and importlib.util.find_spec(module), module
        for kind in PROBES:
            probe = container[kind]
            if "httpGet" in probe:
                assert route_status(probe["httpGet"]["path"]) != 404, f"{kind} {probe['httpGet']['path']}: no route"
                port = container_port(container, probe["httpGet"]["port"])
                assert port in {p["containerPort"] for p in container["ports"]}, f"{kind}: port {port} undeclared"
            else:
                command = probe["exec"]["command"]
                assert command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]), command
            assert probe["timeoutSeconds"] < probe["periodSeconds"]


def startup_budget(container: dict) -> int:
    probe = container["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_service_is_ready_on_ready_alive_on_health_and_has_time_to_warm_up(target, monkeypatch):
    docs = render(target)
    for pod, _, container in containers(docs):
        if runs_node(container) or pod.ray:
            continue
        assert container["startupProbe"]["httpGet"]["path"] == "/ready"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        # Probed on the port outside the connection cap (tests/api/test_slow_clients.py).
        probe_port = settings_of(docs, container, monkeypatch).probe_port
        assert probe_port and all(container_port(container, container[kind]["httpGet"]["port"]) == probe_port
                                  for kind in PROBES)
        assert route_status("/health") == 200 and route_status("/ready") == 503  # not ready while loading
        assert startup_budget(container) >= 120  # 1.5 s here; slow nodes and CUDA take far longer
    gpu = named(render("overlays/gpu"), "Deployment", "covidseg")["spec"]["template"]["spec"]["containers"][0]
    assert startup_budget(gpu) >= 600


def node_container(docs: list[dict]) -> tuple[dict, dict, dict]:
    (found,) = [(p.owner, s, c) for p, s, c in containers(docs) if runs_node(c)]
    return found


def test_the_node_is_probed_by_its_heartbeat_check():
    workload, _, container = node_container(render("overlays/node"))
    assert workload["kind"] == "StatefulSet"
    for kind in PROBES:
        assert container[kind]["exec"]["command"] == ["python", "-m", "app.node.health"]
        # the check imports the app (about 0.5 s on an idle core): room for a busy one
        assert container[kind]["timeoutSeconds"] >= 5


def test_the_node_probe_command_runs_with_the_rendered_environment(tmp_path):
    """The exec probe, as the pod runs it (its environment from the ConfigMaps), against a spool here:
    unhealthy before the workers mark themselves alive, healthy once both have."""
    from app.node.health import WORKERS
    from app.node.spool import Spool

    docs = render("overlays/node")
    _, _, container = node_container(docs)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COVIDSEG_")}
    env |= {k: str(v) for k, v in environment(docs, container).items() if v is not SECRET}
    env["COVIDSEG_NODE_SPOOL_DIR"] = str(tmp_path / "spool")  # the claim's folder is not on this machine
    command = [sys.executable, *container["livenessProbe"]["exec"]["command"][1:]]

    def probe() -> subprocess.CompletedProcess:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    before = probe()
    assert before.returncode == 1 and before.stdout.startswith("unhealthy"), before.stderr
    spool = Spool(tmp_path / "spool")
    for worker in WORKERS:
        spool.beat(worker)
    after = probe()
    assert after.returncode == 0 and after.stdout.startswith("healthy"), after.stderr


# ---------------------------------------------------------------------------------------------- the spool


def spool_volume(docs: list[dict]) -> tuple[dict, dict, Path, Path]:
    """(StatefulSet, its claim template, the claim's mount path, COVIDSEG_NODE_SPOOL_DIR)."""
    workload, _, container = node_container(docs)
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    (spool,) = [v["value"] for v in container["env"] if v["name"] == "COVIDSEG_NODE_SPOOL_DIR"]
    return workload, claim, Path(mount["mountPath"]), Path(spool)


def test_the_node_spools_on_its_claim_below_the_volume_root(monkeypatch):
    docs = render("overlays/node")
    workload, claim, mount, spool = spool_volume(docs)
    assert workload["spec"]["replicas"] == 1  # one AE title, one spool
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    assert mount in spool.parents  # on the claim, not the root itself (see the test below)
    assert settings_of(docs, node_container(docs)[2], monkeypatch).node_spool_dir == spool  # nothing overrides it
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == dockerfile_uid()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (to lay out a volume as kubelet does) and setpriv (to act as the pod user)")
def test_the_pod_user_makes_its_owner_only_spool_on_a_volume_as_kubelet_leaves_it():
    """With fsGroup, kubelet leaves a volume's root owned by root, group fsGroup, setgid and group-writable:
    the node (runAsUser) can create its spool below it, owner-only, but cannot chmod the root to 0700."""
    docs = render("overlays/node")
    workload, _, mount, spool = spool_volume(docs)
    context = workload["spec"]["template"]["spec"]["securityContext"]
    uid, gid, fs_group = context["runAsUser"], context["runAsGroup"], context["fsGroup"]
    user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={fs_group}", "--inh-caps=-all"]

    def make_spool(folder: Path) -> subprocess.CompletedProcess:
        code = "import sys; from app.node.spool import Spool; Spool(sys.argv[1])"
        return subprocess.run([*user, sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False)

    scratch = Path(tempfile.mkdtemp(prefix="covidseg-volume-"))
    try:
        scratch.chmod(0o755)
        volume = scratch / "volume"
        volume.mkdir()
        os.chown(volume, 0, fs_group)
        volume.chmod(0o2775)
        if subprocess.run([*user, sys.executable, "-c", "import app.node.spool"], cwd=ROOT, check=False).returncode:
            pytest.skip(f"this Python cannot be run as uid {uid}")
        made = make_spool(volume / spool.relative_to(mount))
        assert made.returncode == 0, made.stderr
        folder = volume / spool.relative_to(mount)
        assert folder.stat().st_uid == uid and folder.stat().st_mode & 0o777 == 0o700
        assert {p.name for p in folder.iterdir()} >= {"incoming", "outgoing", "failed"}
        at_root = make_spool(volume)
        assert at_root.returncode != 0 and "PermissionError" in at_root.stderr  # why the spool is a subfolder
    finally:
        shutil.rmtree(scratch)


# ----------------------------------------------------------------------------------- resources and sizing


def service_container(docs: list[dict]) -> dict:
    return named(docs, "Deployment", "covidseg")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_service_memory_follows_the_bench_figures_and_the_work_memory(target, monkeypatch):
    docs = render(target)
    container = service_container(docs)
    settings = settings_of(docs, container, monkeypatch)
    bench = memory_table()
    need_request = bench["baseline"] + settings.image_concurrency * bench["single"]
    need_limit = bench["baseline"] + settings.work_memory_mb  # whatever mix of requests the admission lets in
    request, limit = (mebibytes(container["resources"][k]["memory"]) for k in ("requests", "limits"))
    assert need_request <= request <= 1.1 * need_request, (need_request, request)
    assert need_limit <= limit <= 1.1 * need_limit, (need_limit, limit)
    assert bench["burst_peak"] <= limit, "a measured burst of allowed requests outgrew the limit"


def test_the_admissions_estimate_covers_every_measured_request():
    for increase, estimate, case in memory_table()["estimates"]:
        assert estimate >= increase, f"{case}: the admission counts {estimate} MB for a request that held {increase}"


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_the_grace_period_covers_the_drain(target, monkeypatch):
    docs = render(target)
    pod = named(docs, "Deployment", "covidseg")["spec"]["template"]["spec"]
    settings = settings_of(docs, service_container(docs), monkeypatch)
    # the drain, then the lifespan's end and the exit (a few seconds), before the kubelet's SIGKILL
    assert pod["terminationGracePeriodSeconds"] >= settings.drain_timeout + 10


@pytest.mark.parametrize("target", TARGETS)
def test_onnx_runtime_threads_match_the_cpu_limit(target, monkeypatch):
    """The service's and the node's threads are a setting; a batch engine's are its Ray node's CPUs
    (test_each_batch_engine_gets_one_worker_pods_cpus), which Ray must be told: it would count the node's."""
    docs = render(target)
    for pod, _, container in containers(docs):
        resources = container["resources"]
        if pod.ray == "worker":
            assert cores(ray_start_params(pod)["num-cpus"]) == cores(resources["limits"]["cpu"])
        elif pod.ray == "head":
            assert ray_start_params(pod)["num-cpus"] == "0"  # no engine on the head: one per worker pod
        elif not pod.ray:
            assert settings_of(docs, container, monkeypatch).intra_op_threads == cores(resources["limits"]["cpu"])
        assert cores(resources["requests"]["cpu"]) <= cores(resources["limits"]["cpu"])
        assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])


def test_node_memory_covers_the_model_one_image_and_its_probe():
    resources = node_container(render("overlays/node"))[2]["resources"]
    bench = memory_table()
    probe = 100  # MiB: the peak RSS of python -m app.node.health, measured
    assert mebibytes(resources["requests"]["memory"]) >= bench["baseline"] + bench["single"] + probe


# -------------------------------------------------------------------------------------------- the overlays


def test_cpu_overlay_serves_the_int8_model_the_image_contains(monkeypatch):
    docs = render("overlays/cpu")
    model = settings_of(docs, service_container(docs), monkeypatch).model_path
    in_repo = ROOT / model.relative_to(dockerfile_workdir())  # the image holds the checkout's files at WORKDIR
    assert re.search(r"^COPY models \./models$", DOCKERFILE, re.MULTILINE)
    assert in_repo.is_file() and in_repo.name == "covidseg-unet-r34-int8.onnx"
    assert in_repo.with_suffix(".card.json").is_file()


def test_gpu_overlay_gives_each_replica_one_gpu_and_batches_requests(monkeypatch):
    docs = render("overlays/gpu")
    container = service_container(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings_of(docs, container, monkeypatch).microbatch_wait_s("CUDAExecutionProvider") > 0
    hpa = named(docs, "HorizontalPodAutoscaler", "covidseg")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_node_overlay_runs_the_node_beside_the_service_in_the_same_image():
    docs = render("overlays/node")
    _, _, node = node_container(docs)
    assert node["command"] == ["python", "-m", "app.node"]
    assert node["image"] == service_container(docs)["image"]
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == "covidseg-node"]
    assert [p["port"] for p in service["spec"]["ports"]] == [Settings().node_port]


# -------------------------------------------------------------------------------------- the batch job (KubeRay)

def ray_pods_table() -> dict:
    """bench/RESULTS.md's memory of Ray's pods (MiB charged to each pod's cgroup, ``python -m bench.ray_memory``)
    per row; ``text``: the section."""
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    block = re.search(r"<!-- ray-memory:start -->(.*?)<!-- ray-memory:end -->", text, re.DOTALL).group(1)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()
            if re.match(r"\|\s*(head|worker) pod", line)]
    return {"text": block, **{r[0]: float(r[2]) for r in rows}}


def ray_pod(docs: list[dict], role: str) -> tuple[Pod, dict]:
    (found,) = [(p, c) for p, _, c in containers(docs) if p.ray == role]
    return found


def entrypoint_args(docs: list[dict], monkeypatch: pytest.MonkeyPatch):
    """The RayJob's entrypoint as python -m app.batch parses it, with the head's environment (its driver's)."""
    from app.batch.__main__ import parse_args

    (job,) = of_kind(docs, RAY_JOB)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "app.batch"] and importlib.util.find_spec("app.batch.__main__")
    return parse_args(argv[3:], settings_of(docs, ray_pod(docs, "head")[1], monkeypatch))  # bad flags exit


def worker_groups(docs: list[dict]) -> list[dict]:
    (job,) = of_kind(docs, RAY_JOB)
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def test_only_the_batch_overlay_goes_without_the_service():
    assert {t for t in TARGETS if not of_kind(render(t), "Deployment")} == WITHOUT_SERVICE
    assert {t for t in TARGETS if of_kind(render(t), RAY_JOB)} == WITHOUT_SERVICE


def test_the_batch_job_reads_the_pacs_and_writes_to_the_claim_on_the_head_where_its_driver_runs(monkeypatch):
    docs = render("overlays/batch")
    (job,) = of_kind(docs, RAY_JOB)
    spec = job["spec"]
    args = entrypoint_args(docs, monkeypatch)
    head, head_container = ray_pod(docs, "head")
    url = environment(docs, head_container)["COVIDSEG_PACS_DICOMWEB_URL"]  # one place: batch-settings.env
    assert args.dicomweb_url == url and url.startswith(("http://", "https://")) and args.source is None
    assert args.ray_address is None  # KubeRay's entrypoint gets RAY_ADDRESS: Ray's own cluster
    assert args.user == args.password == "key1"  # from the Secret, as the driver reads them
    # K8sJobMode: the submitter pod runs ray job submit; the driver then runs on the head, as no entrypoint
    # resources are asked for (the schema admits none).
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    volumes = {v["name"]: v for v in head.template["spec"]["volumes"]}
    (claim_mount,) = [m for m in head_container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    claim = named(docs, "PersistentVolumeClaim", volumes[claim_mount["name"]]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    mount = Path(claim_mount["mountPath"])
    assert mount in args.out.parents  # below the volume's root, which only root may chmod (as the node's spool)
    assert re.search(rf"install -d -m 700 -o covidseg {mount}\b", DOCKERFILE)  # over the image's own folder
    context = head.template["spec"]["securityContext"]
    assert context["fsGroup"] == context["runAsUser"] == dockerfile_uid()  # the claim is the driver's to write
    for pod in pods(docs):  # a ReadWriteOnce claim on one pod: the workers return rows, the driver writes them
        claims = [v for v in pod.template["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
        assert bool(claims) == (pod.ray == "head"), pod.name
    assert not args.outputs  # DICOM results would be written by the workers, which have no claim (--stow instead)


def test_each_batch_engine_gets_one_worker_pods_cpus(monkeypatch):
    """--workers is the worker replicas, and app.batch's own arithmetic gives each engine the CPUs (and
    ONNX Runtime threads) of one worker pod: the head offers Ray none."""
    from app.batch.job import RayOptions, worker_resources

    docs = render("overlays/batch")
    args = entrypoint_args(docs, monkeypatch)
    groups = worker_groups(docs)
    assert args.workers == sum(g["replicas"] for g in groups)
    assert all(g["minReplicas"] == g["replicas"] == g["maxReplicas"] for g in groups)  # no autoscaler: a fixed pool
    head, _ = ray_pod(docs, "head")
    cluster_cpus = cores(ray_start_params(head)["num-cpus"]) + sum(
        g["replicas"] * cores(g["rayStartParams"]["num-cpus"]) for g in groups)

    class Cluster:  # what ray.cluster_resources() answers once the pods have joined
        @staticmethod
        def cluster_resources() -> dict[str, float]:
            return {"CPU": cluster_cpus}

    cpus, threads = worker_resources(Cluster, RayOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker))
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert cpus == threads == cores(container["resources"]["limits"]["cpu"])


def test_batch_memory_follows_the_bench_figures_and_the_batch_size(monkeypatch):
    docs = render("overlays/batch")
    bench, ray = memory_table(), ray_pods_table()
    batch_size = entrypoint_args(docs, monkeypatch).batch_size
    assert f"`--batch-size {batch_size}`" in ray["text"], "bench.ray_memory measured another --batch-size"
    # The worker: its Ray processes and an engine working on --batch-size images of 3000 px (the memory table),
    # and no less than the peak measured with 2048 px DICOMs; the head: its measured peak.
    worker_need = max(ray["worker pod: Ray's processes"] + bench["baseline"] + batch_size * bench["single"],
                      ray["worker pod during the job: with the engine (peak)"])
    head_need = ray["head pod during the job: with the supervisor and the driver (peak)"]
    for role, need in [("worker", worker_need), ("head", head_need)]:
        pod, container = ray_pod(docs, role)
        store = int(ray_start_params(pod)["object-store-memory"]) / 2**20  # in /dev/shm: the pod's memory
        request, limit = (mebibytes(container["resources"][k]["memory"]) for k in ("requests", "limits"))
        assert request + store <= limit, (role, request + store, limit)
        assert need <= request, (role, need, request)
        if role == "worker":  # asked for once per engine: no more than needed
            assert request <= 1.1 * need and limit <= 1.15 * (request + store), (need, request, limit)
        else:  # one head, whose driver grows with the archive's table: room above the measured peak
            assert request >= 1.1 * need, (need, request)


def test_the_batch_job_runs_the_pinned_ray_and_the_int8_model_of_its_image(monkeypatch):
    docs = render("overlays/batch")
    (job,) = of_kind(docs, RAY_JOB)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [re.fullmatch(r"ray\[[\w,]+\]==(\S+)", d).group(1) for d in extras["batch"] if d.startswith("ray[")]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pin
    model = settings_of(docs, ray_pod(docs, "head")[1], monkeypatch).model_path  # the driver hands it to the workers
    assert model.is_absolute()  # the driver's working folder is Ray's, not the image's WORKDIR
    assert (ROOT / model.relative_to(dockerfile_workdir())).name == "covidseg-unet-r34-int8.onnx"
    assert (ROOT / model.relative_to(dockerfile_workdir())).is_file()
    for pod, _, container in containers(docs):
        if pod.ray != "submitter":  # the pods that run ONNX Runtime (workers) or may (the driver's)
            assert environment(docs, container).get("ORT_DISABLE_TELEMETRY") == "1", pod.name


def test_readme_says_how_to_run_the_batch_job_on_kuberay_with_the_manifests_sizes():
    readme = (ROOT / "README.md").read_text()
    kubernetes = " ".join(re.search(r"^### Kubernetes\n(.*?)(?=^##)", readme, re.MULTILINE | re.DOTALL).group(1).split())
    batch = " ".join(re.search(r"^### Whole archives: the batch job \(Ray\)\n(.*?)(?=^##)", readme,
                               re.MULTILINE | re.DOTALL).group(1).split())
    assert "deploy/kubernetes/overlays/batch" in batch.split("**On Kubernetes**")[1]
    assert f"kubectl create secret generic {PACS_SECRET}" in kubernetes and "KubeRay operator" in kubernetes
    assert f"{RAYJOB_SCHEMA.relative_to(ROOT)}" in kubernetes and "not KubeRay's generated CRD" in kubernetes
    docs = render("overlays/batch")
    for role, phrase in [("worker", "A worker requests {:.0f} MiB"), ("head", "the head {:.0f} MiB")]:
        request = mebibytes(ray_pod(docs, role)[1]["resources"]["requests"]["memory"])
        assert phrase.format(request) in kubernetes, phrase.format(request)


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_the_service_is_autoscaled_and_drained_one_replica_at_a_time(target):
    docs = render(target)
    deployment = named(docs, "Deployment", "covidseg")
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set
    hpa = named(docs, "HorizontalPodAutoscaler", "covidseg")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "covidseg"}
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"]["name"] == "cpu"
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_admit_only_labelled_namespaces_on_the_pods_ports(target):
    docs = render(target)
    for pod, _, container in containers(docs):
        policies = [p for p in of_kind(docs, "NetworkPolicy")
                    if selects(p["spec"]["podSelector"]["matchLabels"], pod.labels)]
        assert len(policies) == 1, f"{pod.name}: one NetworkPolicy"
        if pod.ray:
            check_ray_ingress(docs, pod, policies[0])
            continue
        (rule,) = policies[0]["spec"]["ingress"]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": CLIENT_LABEL}}]
        # Every port but the probe port, which only the kubelet (from the node) calls.
        assert [container_port(container, p["port"]) for p in rule["ports"]] == [
            p["containerPort"] for p in container["ports"] if p["name"] != "probe"]
    readme = (ROOT / "README.md").read_text()
    for labels in (CLIENT_LABEL, KUBERAY_LABEL):
        label = "=".join(*labels.items())
        assert "kubectl label namespace" in readme and label in readme


def check_ray_ingress(docs: list[dict], pod: Pod, policy: dict) -> None:
    """A Ray cluster's pods admit each other on any port (Ray's node-to-node ports are many and partly
    random), and only the KubeRay operator's namespace besides, on the head's dashboard port alone (it
    polls the job there; the port also takes job submissions, so no other namespace may reach it)."""
    peers, operator = policy["spec"]["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": pod.labels}}]}
    assert operator["from"] == [{"namespaceSelector": {"matchLabels": KUBERAY_LABEL}}]
    (head,) = [p for p in pods(docs) if p.ray == "head" and p.owner is pod.owner]
    (head_container,) = head.template["spec"]["containers"]
    assert [container_port(head_container, p["port"]) for p in operator["ports"]] == [
        ray_constant("DEFAULT_DASHBOARD_PORT")]


def test_latency_scaling_uses_the_service_histograms_through_the_adapter_rules(tmp_path):
    component = KUBE / "components" / "scale-on-latency"
    rules = yaml.safe_load((component / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    served = set()
    for rule in rules:
        series = re.match(r"(\w+)_bucket\{", rule["seriesQuery"]).group(1)
        assert series in histograms(), f"{series} is not a histogram of app/core/metrics.py"
        served.add(rule["name"]["as"])
    hpa = named(render(site(tmp_path, ["overlays/cpu"], ["components/scale-on-latency"])),
                "HorizontalPodAutoscaler", "covidseg")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served


def test_readme_explains_each_overlay_and_that_no_cluster_runs_here():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^### Kubernetes\n(.*?)(?=^##)", readme, re.MULTILINE | re.DOTALL)
    assert section, "README has a Kubernetes section"
    text = " ".join(section.group(1).split())  # line breaks are the editor's
    for target in TARGETS[1:]:
        assert f"kubectl apply -k deploy/kubernetes/{target}" in text
    assert "kubectl create secret generic covidseg-api-keys" in text
    assert "no cluster" in text.lower()
    resources = service_container(render("base"))["resources"]  # the sizing it gives is the manifests'
    request, limit = (mebibytes(resources[k]["memory"]) for k in ("requests", "limits"))
    assert f"requests {request:.0f} MiB and is limited to {limit:.0f} MiB" in text
