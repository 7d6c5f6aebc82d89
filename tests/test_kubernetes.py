"""The Kubernetes manifests (deploy/kubernetes): every overlay rendered with ``kubectl kustomize``, each
object validated against the Kubernetes API schemas offline (kubernetes-validate's bundled schemas), and
every value that also lives elsewhere checked against its one source: ``Settings`` (variable names and
values, ports), the Dockerfile (exposed ports, the service user's uid, the image's paths and targets), the
app (probe routes and modules), ``bench/RESULTS.md`` (memory) and docker-compose.yml (image names).

No cluster runs here: this checks what ``kubectl apply -k`` would send, not a deployment. A new overlay
under deploy/kubernetes/overlays/ is picked up by every test below.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
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
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SECRET = object()  # stands for a value taken from a Secret
CLIENT_LABEL = {"covidseg-client": "true"}  # README, Kubernetes: kubectl label namespace ... covidseg-client=true
API_KEY_SECRET = "covidseg-api-keys"
# Overlays whose image is not docker-compose.yml's CPU one.
COMPOSE_SERVICE_OF = {"overlays/gpu": "covidseg-gpu"}


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


def containers(docs: list[dict]) -> Iterator[tuple[dict, dict, dict]]:
    """(workload, pod spec, container) for every container of every workload."""
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            yield workload, pod, container


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
    return container.get("command") or dockerfile_cmd()


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


def dockerfile_cmd() -> list[str]:
    return yaml.safe_load(re.findall(r"^CMD\s+(\[.*\])$", DOCKERFILE, re.MULTILINE)[-1])


def dockerfile_stages() -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.MULTILINE))


@functools.cache
def route_status(path: str) -> int:
    """What the app answers a kubelet's GET on ``path`` before its model is loaded (404: no such route)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    return TestClient(create_app(Settings())).get(path).status_code  # no lifespan: the model is not loaded


def histograms() -> set[str]:
    return {m.name for m in ServiceMetrics().registry.collect() if m.type == "histogram"}


def memory_table() -> dict[str, float]:
    """bench/RESULTS.md's memory figures (MiB): the largest baseline, single-image and batch increases."""
    text = (ROOT / "bench" / "RESULTS.md").read_text()
    block = re.search(r"<!-- memory:start -->(.*?)<!-- memory:end -->", text, re.DOTALL).group(1)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()
            if re.match(r"\|\s*\d", line)]
    single = [r for r in rows if r[1] == "/segment"]
    batch = [r for r in rows if r[1].startswith("/segment/batch")]
    return {"baseline": max(float(r[3]) for r in rows),
            "single": max(float(r[5].lstrip("+")) for r in single),
            "batch": max(float(r[5].lstrip("+")) for r in batch),
            "batch_files": min(int(re.search(r"(\d+) images", r[1]).group(1)) for r in batch)}


# ------------------------------------------------------------------------------------ rendering, schemas


def validate(doc: dict) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {path}: {exc.message}")


@pytest.mark.parametrize("target", TARGETS)
def test_every_overlay_renders_and_each_object_matches_the_kubernetes_api_schema(target):
    docs = render(target)
    assert of_kind(docs, "Deployment"), "every target deploys the service"
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


def test_api_keys_come_from_a_secret_and_never_from_a_configmap():
    secret_fields = {n for n in settings_variables() if re.search(r"API_KEY|PASSWORD", n)}
    for target in TARGETS:
        docs = render(target)
        for config in of_kind(docs, "ConfigMap"):
            assert not set(config.get("data", {})) & secret_fields, f"{target}: a secret in a ConfigMap"
        for _, _, container in containers(docs):
            if runs_node(container):
                continue  # the node calls no HTTP service
            (keys,) = [v for v in container["env"] if v["name"] == "COVIDSEG_API_KEYS"]
            ref = keys["valueFrom"]["secretKeyRef"]
            assert ref == {"name": API_KEY_SECRET, "key": "COVIDSEG_API_KEYS"}  # not optional: no keys, no pod


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


@pytest.mark.parametrize("target", TARGETS)
def test_ports_are_the_ones_the_dockerfile_exposes_and_the_programs_listen_on(target, monkeypatch):
    docs = render(target)
    exposed = dockerfile_exposed()
    for _, _, container in containers(docs):
        settings = settings_of(docs, container, monkeypatch)
        listens = settings.node_port if runs_node(container) else settings.port
        assert [p["containerPort"] for p in container["ports"]] == [listens]
        assert listens in exposed, f"port {listens} is not EXPOSEd by the Dockerfile"
    for service in of_kind(docs, "Service"):
        backends = [c for w, _, c in containers(docs) if selects(service["spec"]["selector"], pod_labels(w))]
        assert backends, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            assert port["port"] in exposed
            assert {container_port(c, port["targetPort"]) for c in backends} <= exposed


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_the_image_user_without_privileges(target):
    uid = dockerfile_uid()
    for workload, pod, container in containers(render(target)):
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
    """A Service named covidseg gives every pod COVIDSEG_PORT=tcp://10.x.y.z:8000, which Settings would
    read as its port and refuse: the pods must not get service links."""
    docs = render(target)
    links = set().union(*(service_link_variables(s) for s in of_kind(docs, "Service")))
    assert links & settings_variables(), "the Services' names make variables Settings reads"
    for _, pod, _ in containers(docs):
        assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_the_dockerfile_targets_as_compose_tags_them(target):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    expected = compose[COMPOSE_SERVICE_OF.get(target, "covidseg")]
    for _, _, container in containers(render(target)):
        assert container["image"] == expected["image"]
        assert container["image"].rsplit(":", 1)[1] == expected["build"]["target"] in dockerfile_stages()


# ------------------------------------------------------------------------------------------------ probes


@pytest.mark.parametrize("target", TARGETS)
def test_probes_exist_and_point_at_real_routes_and_modules(target):
    for _, _, container in containers(render(target)):
        module = program(container)[2]
        assert program(container)[:2] == ["python", "-m"] and importlib.util.find_spec(module), module
        for kind in PROBES:
            probe = container[kind]
            if "httpGet" in probe:
                assert route_status(probe["httpGet"]["path"]) != 404, f"{kind} {probe['httpGet']['path']}: no route"
                assert container_port(container, probe["httpGet"]["port"]) == container["ports"][0]["containerPort"]
            else:
                command = probe["exec"]["command"]
                assert command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]), command
            assert probe["timeoutSeconds"] < probe["periodSeconds"]


def startup_budget(container: dict) -> int:
    probe = container["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_service_is_ready_on_ready_alive_on_health_and_has_time_to_warm_up(target):
    for _, _, container in containers(render(target)):
        if runs_node(container):
            continue
        assert container["startupProbe"]["httpGet"]["path"] == "/ready"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert route_status("/health") == 200 and route_status("/ready") == 503  # not ready while loading
        assert startup_budget(container) >= 120  # 1.5 s here; slow nodes and CUDA take far longer
    gpu = named(render("overlays/gpu"), "Deployment", "covidseg")["spec"]["template"]["spec"]["containers"][0]
    assert startup_budget(gpu) >= 600


def node_container(docs: list[dict]) -> tuple[dict, dict, dict]:
    (found,) = [(w, p, c) for w, p, c in containers(docs) if runs_node(c)]
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


@pytest.mark.parametrize("target", TARGETS)
def test_service_memory_follows_the_bench_figures_and_the_image_concurrency(target, monkeypatch):
    docs = render(target)
    container = service_container(docs)
    settings = settings_of(docs, container, monkeypatch)
    bench = memory_table()
    assert settings.max_batch_files <= bench["batch_files"], "the memory limit covers batches as measured"
    concurrency = settings.image_concurrency
    need_request = bench["baseline"] + concurrency * bench["single"]
    need_limit = bench["baseline"] + bench["batch"] + (concurrency - 1) * bench["single"]
    request, limit = (mebibytes(container["resources"][k]["memory"]) for k in ("requests", "limits"))
    assert need_request <= request <= 1.1 * need_request, (need_request, request)
    assert need_limit <= limit <= 1.1 * need_limit, (need_limit, limit)


@pytest.mark.parametrize("target", TARGETS)
def test_onnx_runtime_threads_match_the_cpu_limit(target, monkeypatch):
    docs = render(target)
    for _, _, container in containers(docs):
        resources = container["resources"]
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


@pytest.mark.parametrize("target", TARGETS)
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
    for workload, _, container in containers(docs):
        policies = [p for p in of_kind(docs, "NetworkPolicy")
                    if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(workload))]
        assert len(policies) == 1, f"{workload['metadata']['name']}: one NetworkPolicy"
        (rule,) = policies[0]["spec"]["ingress"]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": CLIENT_LABEL}}]
        assert [container_port(container, p["port"]) for p in rule["ports"]] == [container["ports"][0]["containerPort"]]
    readme = (ROOT / "README.md").read_text()
    label = "=".join(*CLIENT_LABEL.items())
    assert "kubectl label namespace" in readme and label in readme


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
