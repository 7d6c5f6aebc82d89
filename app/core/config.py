"""Service settings, from environment variables prefixed ``COVIDSEG_`` (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "covidseg-unet-r34.onnx"


class Settings(BaseSettings):
    """Everything an operator can set. Example: ``COVIDSEG_API_KEYS=key1,key2``."""

    model_config = SettingsConfigDict(env_prefix="COVIDSEG_", env_file=None, extra="ignore")

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    model_path: Path = Field(DEFAULT_MODEL_PATH, description="ONNX model; its card is <model>.card.json beside it")
    providers: str = Field("auto", description="'auto' (CUDA when available, else CPU) or a comma list of ORT providers")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = one per core)")
    inter_op_threads: int = Field(0, ge=0, description="ONNX Runtime inter-op threads (0 = default)")
    inference_concurrency: int = Field(1, ge=1, description="model runs at once (1 keeps the cores for one run)")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest accepted file, bytes (413 above)")
    max_batch_files: int = Field(16, ge=1, description="most files in one /segment/batch request")
    max_pixels: int = Field(50_000_000, ge=1, description="largest accepted image, pixels (checked before decoding)")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated API keys; when set, X-API-Key is required")
    log_level: str = Field("info", description="log level")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def max_request_bytes(self) -> int:
        """Cap on a whole request body: room for a full batch plus multipart framing."""
        return self.max_upload_bytes * self.max_batch_files + 64 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()
