"""Service settings, from environment variables prefixed ``COVIDSEG_`` (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.pipeline.dicom.common import DEFAULT_SERIES_NUMBERS, ResultOptions
from app.pipeline.dicom.common import KINDS as RESULT_KINDS
from app.pipeline.providers import CPU_PROVIDER, CudaOptions  # not app.pipeline.infer: that loads ONNX Runtime
from app.pipeline.select import CHEST_BODY_PARTS, CHEST_XRAY_MODALITIES, FRONTAL_VIEWS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_NAME = "covidseg-unet-r34"
#: The shipped model and its int8 sibling: the one place their paths are spelled.
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / f"{DEFAULT_MODEL_NAME}.onnx"
INT8_MODEL_PATH = DEFAULT_MODEL_PATH.with_name(f"{DEFAULT_MODEL_NAME}-int8.onnx")
#: Where the node spools when the user has no home folder (a system account).
SYSTEM_SPOOL_DIR = Path("/var/lib/covidseg/spool")


def default_spool_dir() -> Path:
    """The node's spool unless set: the user's state folder (``$XDG_STATE_HOME``, else
    ``~/.local/state``), never inside the checkout, where patient data would be one
    ``git add`` away from a commit."""
    state_home = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state_home):  # the XDG spec: a relative value is ignored
        try:
            state_home = str(Path.home() / ".local" / "state")
        except RuntimeError:  # no HOME and no passwd entry
            return SYSTEM_SPOOL_DIR
    return Path(state_home) / "covidseg" / "spool"



CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Everything an operator can set. Example: ``COVIDSEG_API_KEYS=key1,key2``."""

    model_config = SettingsConfigDict(env_prefix="COVIDSEG_", env_file=None, extra="ignore")

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    model_path: Path | None = Field(None, description="ONNX model; its card is <model>.card.json beside it; empty: "
                                                      "the shipped model for the execution provider, its int8 "
                                                      "sibling on CPU (the same Val Dice at twice the throughput), "
                                                      "fp32 on CUDA")
    verify_card: bool = Field(True, description="refuse to start when the model card does not describe the "
                                                "model file (sha256); false only while developing")
    tta: Literal["none", "flip"] = Field("none", description="default test-time augmentation: none, or flip "
                                                             "(mean with the horizontal mirror; twice the compute)")
    providers: str = Field("auto", description="'auto' (CUDA when available, else CPU) or a comma list of ORT providers")
    cuda_device_id: int = Field(0, ge=0, description="CUDA: which GPU")
    cuda_tf32: bool = Field(False, description="CUDA: TF32 convolutions (faster on Ampere and later, but CUDA "
                                               "and CPU masks then differ); off by default")
    cuda_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "HEURISTIC", description="CUDA: cuDNN convolution algorithm search")
    cuda_memory_limit_mb: int = Field(0, ge=0, description="CUDA: memory arena limit in MB (0: none)")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = one per core)")
    inter_op_threads: int = Field(0, ge=0, description="ONNX Runtime inter-op threads (0 = default)")
    inference_concurrency: int = Field(1, ge=1, description="model runs at once (1 keeps the cores for one run)")
    image_concurrency: int = Field(4, ge=1, description="requests worked on at full resolution at once (decode "
                                                        "to answer; the model run too without micro-batching), "
                                                        "within work_memory_mb")
    work_memory_mb: float = Field(1920, gt=0, description="memory that the requests worked on at once may hold, "
                                                          "estimated from their images' pixels before decoding "
                                                          "(bench/RESULTS.md, memory); others wait, and a request "
                                                          "over it alone is refused (413 too_many_pixels)")
    max_queue_wait_s: float = Field(10.0, gt=0, description="longest wait for admission: a request that would wait "
                                                            "longer is answered 503 with Retry-After at once (or "
                                                            "when its wait reaches it)")
    drain_timeout: float = Field(20.0, gt=0, description="on SIGTERM: seconds for the requests in work to finish "
                                                         "(queued ones are answered 503 at once), then exit; keep "
                                                         "it under the orchestrator's grace period")
    microbatch_wait_ms: float | None = Field(
        None, ge=0, description="micro-batching: how long a request may wait for others to share a model run; "
                                "0 turns it off; empty: 2 ms on CUDA, off on CPU")
    microbatch_max_batch: int = Field(32, ge=1, description="micro-batching: most images per model run")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest accepted file, bytes (413 above)")
    max_batch_files: int = Field(16, ge=1, description="most files in one /segment/batch request")
    max_pixels: int = Field(50_000_000, ge=1, description="largest accepted image, pixels (checked before decoding)")
    # Slow and idle clients: each open connection holds a socket (a file descriptor) and its buffers.
    header_timeout: float = Field(30.0, gt=0, description="seconds for a request's headers to arrive, from the "
                                                          "connection or the request's first byte (408, closed)")
    body_timeout: float = Field(30.0, gt=0, description="seconds for a whole request body to arrive once its "
                                                        "headers have (408)")
    keepalive_timeout: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection stays open")
    max_connections: int = Field(256, ge=1, description="open HTTP connections at most; a new one beyond "
                                                        "gets 503 and is closed")
    probe_port: int = Field(0, ge=0, le=65535, description="python -m app: a second port (on host) serving only "
                                                          "/health and /ready, outside max_connections, for "
                                                          "liveness probes (0: none)")
    docs_public: bool = Field(False, description="serve /docs, /redoc and /openapi.json without an API key "
                                                 "when keys are set")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated API keys; when set, X-API-Key is required")
    log_level: str = Field("info", description="log level")
    viewer: bool = Field(True, description="serve the browser viewer at / and /viewer (false: API only)")

    # DICOM results (HTTP dicom-* formats, the node and the bridge)
    seg_series_number: int = Field(DEFAULT_SERIES_NUMBERS["seg"], ge=0,
                                   description="SeriesNumber of DICOM Segmentation results")
    sc_series_number: int = Field(DEFAULT_SERIES_NUMBERS["sc"], ge=0,
                                  description="SeriesNumber of Secondary Capture results")
    sr_series_number: int = Field(DEFAULT_SERIES_NUMBERS["sr"], ge=0,
                                  description="SeriesNumber of structured report results")
    institution_name: str | None = Field(None, description="InstitutionName written into results")

    # Which images are segmented (the node, the bridge, the service and the batch job): chest X-rays for presentation.
    select_modalities: CommaList = Field(list(CHEST_XRAY_MODALITIES), description="modalities to segment "
                                                                                   "(and to ask the PACS for)")
    select_body_parts: CommaList = Field(list(CHEST_BODY_PARTS), description="BodyPartExamined values to segment, "
                                                                             "compared stripped and upper-cased; an "
                                                                             "empty item admits images without it")
    select_views: CommaList = Field(list(FRONTAL_VIEWS), description="ViewPosition values to segment; "
                                                                     "an empty item admits images without it")
    select_for_processing: bool = Field(False, description="also segment DX 'FOR PROCESSING' (raw detector) images")

    # The DICOM node (python -m app.node)
    node_ae_title: str = Field("COVIDSEG", min_length=1, max_length=16, description="the node's AE title")
    node_host: str = Field("0.0.0.0", description="address the node listens on")
    node_port: int = Field(11112, ge=1, le=65535, description="DICOM port of the node")
    node_allowed_callers: CommaList = Field(
        [], description="calling AE titles allowed to associate, each as AE (from any address) or AE@host (from "
                        "that host only: an IP address or a name resolved at start; repeat the AE for several "
                        "hosts); empty admits any caller (logged as a warning)")
    node_destination: str | None = Field(None, description="where results go by C-STORE: AE@host:port")
    node_stow_url: str | None = Field(None, description="where results go by STOW-RS: a DICOMweb base URL")
    node_outputs: CommaList = Field(list(RESULT_KINDS), description="results made per image: seg, sc, sr")
    node_sc_transfer_syntax: Literal["jpeg-ls-lossless", "jpeg2000-lossless", "rle", "jpeg-baseline",
                                     "uncompressed"] = Field(
        "jpeg-ls-lossless", description="C-STORE: the compressed transfer syntax also proposed for the Secondary "
                                        "Capture (lossless ones keep the SC as made; jpeg-baseline makes the SC "
                                        "lossy, an object of its own UID); sent uncompressed when the destination "
                                        "refuses it")
    node_sc_max_size: int = Field(0, ge=0, description="the node's Secondary Capture at most this many pixels on "
                                                       "its longer side (a smaller object of its own UID); 0: the "
                                                       "source's size")
    node_threshold: float | None = Field(None, ge=0, le=1, description="infection threshold (default: the card's)")
    node_spool_dir: Path = Field(default_factory=default_spool_dir,
                                 description="received images and undelivered results (patient data: owner-only, "
                                             "emptied on delivery); default outside the checkout")
    node_retry_max_wait: float = Field(60.0, gt=0, description="longest wait between delivery attempts, seconds")
    node_heartbeat_interval: float = Field(10.0, gt=0, le=60, description="seconds between the marks each live "
                                                                          "worker leaves in the spool for python -m "
                                                                          "app.node.health")
    node_audit_log: Path | None = Field(None, description="the node's audit trail, one JSON line per event (AE "
                                                          "titles, addresses and UIDs: owner-only); empty: "
                                                          "audit/node-audit.jsonl in the spool folder")
    node_audit_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="audit log size at which it is rotated")
    node_audit_backups: int = Field(10, ge=1, description="rotated audit logs kept (the oldest is deleted)")
    node_done_max: int = Field(20_000, ge=0, description="instances remembered as done, so a re-sent one is not "
                                                          "segmented again (oldest forgotten first; 0: off)")
    node_metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus metrics of the node on this "
                                                                     "port (on node_host); 0: off")

    # The PACS bridge (python -m app.pacs)
    pacs_orthanc_url: str | None = Field(None, description="Orthanc REST API base URL")
    pacs_dicomweb_url: str | None = Field(None, description="DICOMweb base URL (QIDO/WADO/STOW-RS)")
    pacs_user: str | None = Field(None, description="PACS user (HTTP basic auth)", validation_alias=AliasChoices(
        "COVIDSEG_PACS_USER", "COVIDSEG_PACS_ORTHANC_USER", "pacs_user"))
    pacs_password: str | None = Field(None, description="PACS password", validation_alias=AliasChoices(
        "COVIDSEG_PACS_PASSWORD", "COVIDSEG_PACS_ORTHANC_PASSWORD", "pacs_password"))
    pacs_service_url: str = Field("http://127.0.0.1:8000", description="the segmentation service")
    pacs_api_key: str | None = Field(None, description="X-API-Key for the service")
    pacs_threshold: float | None = Field(None, ge=0, le=1, description="infection threshold (default: the card's)")
    pacs_outputs: CommaList = Field(list(RESULT_KINDS), description="results stored per image: seg, sc, sr")
    pacs_state_file: Path = Field(Path("covidseg-pacs-state.json"), description="what the bridge has done")
    pacs_retries: int = Field(5, ge=1, description="attempts per call before leaving work pending")
    pacs_retry_wait: float = Field(1.0, ge=0, description="first backoff wait, seconds")
    pacs_watch_interval: float = Field(10.0, gt=0, description="--watch: seconds between polls")

    @field_validator("api_keys", "select_modalities", "node_allowed_callers", "node_outputs", "pacs_outputs",
                     mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):  # "a, b," -> [a, b]
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("select_body_parts", "select_views", mode="before")
    @classmethod
    def _split_values(cls, value: object) -> object:
        if isinstance(value, str):  # "CHEST," -> [CHEST, ""]: an empty item admits images without the tag
            items = [k.strip().upper() for k in value.split(",")]
            return [k for k in items if k] + ([""] if "" in items else [])
        return value

    @field_validator("node_allowed_callers")
    @classmethod
    def _callers(cls, value: list[str]) -> list[str]:
        for entry in value:  # AE or AE@host; a host is resolved when the node starts
            title, _, host = entry.partition("@")
            if not 0 < len(title.strip()) <= 16 or ("@" in entry and not host.strip()):
                raise ValueError(f"each entry is AE or AE@host (AE 1-16 characters), got {entry!r}")
        return value

    @field_validator("node_outputs", "pacs_outputs")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(RESULT_KINDS)
        if unknown or not value:
            raise ValueError(f"choose one or more of {', '.join(RESULT_KINDS)}; got {', '.join(value) or 'none'}")
        return value

    def model_for(self, providers: list[str]) -> tuple[Path, str]:
        """The model to load on ``providers`` (the resolved list, first used first), and why it was chosen."""
        if self.model_path is not None:
            return self.model_path, "COVIDSEG_MODEL_PATH"
        if providers[0] == CPU_PROVIDER:
            return INT8_MODEL_PATH, "the default on CPU: the shipped int8 model"
        return DEFAULT_MODEL_PATH, f"the default on {providers[0]}: the shipped fp32 model"

    def cuda_options(self) -> CudaOptions:
        return CudaOptions(self.cuda_device_id, self.cuda_tf32, self.cuda_conv_algo_search, self.cuda_memory_limit_mb)

    def microbatch_wait_s(self, provider: str) -> float:
        """The wait in seconds: the setting, or on for CUDA (where a batch of 32 is several times the
        throughput of one image) and off for CPU (where it was measured not to help)."""
        if self.microbatch_wait_ms is not None:
            return self.microbatch_wait_ms / 1000
        return 0.002 if provider == "CUDAExecutionProvider" else 0.0

    def result_options(self) -> ResultOptions:
        return ResultOptions(series_numbers={"seg": self.seg_series_number, "sc": self.sc_series_number,
                                             "sr": self.sr_series_number}, institution_name=self.institution_name)

    def node_audit_path(self) -> Path:
        """The node's audit log: the setting, else in the spool folder, so it is wherever the spool's
        owner-only, persistent storage is (a volume in Docker and Kubernetes), never in the checkout."""
        return self.node_audit_log or self.node_spool_dir / "audit" / "node-audit.jsonl"

    @property
    def max_request_bytes(self) -> int:
        """Cap on a whole request body: room for a full batch plus multipart framing."""
        return self.max_upload_bytes * self.max_batch_files + 64 * 1024


def setting_default(name: str) -> Any:
    """The default of one setting, for code that takes it as a parameter, so it is spelled once."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def settings_from_environment() -> Settings:
    """``Settings()``; a misconfiguration stops the program with one line naming each bad variable,
    not a validation traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"configuration error: {problems}") from None


def _variable(loc: tuple) -> str:
    name = str(loc[0]) if loc else "?"
    return name if name.isupper() else f"COVIDSEG_{name.upper()}"  # aliases are already variable names


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment, read once per process (the one accessor; routes receive
    the app's own settings through :func:`app.api.deps.settings_of`)."""
    return settings_from_environment()
