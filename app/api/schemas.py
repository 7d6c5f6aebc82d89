"""Request options and response bodies of the API (pydantic), apart from the routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# The output kinds are the engine's (app/engine/results.py); re-exported so that routes and OpenAPI name them
from app.engine.results import OutputFormat, PngOutput
from app.pipeline.postprocess import severity_ranges

__all__ = [
    "ERROR_RESPONSES",
    "KEYED_ERROR_RESPONSES",
    "SERVICE_ERROR_RESPONSES",
    "ErrorBody",
    "BatchResponse",
    "DicomIdentifiers",
    "ImageInfo",
    "ModelIdentity",
    "OutputFormat",
    "PngOutput",
    "SegmentResponse",
    "SegmentResult",
]

SEVERITY_DOC = ("Severity grade from the share of the lung field predicted infected: "
                + ", ".join(f"{grade} {span}" for grade, span in severity_ranges()) + ".")


class ModelIdentity(BaseModel):
    name: str
    version: str
    sha256: str


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str = Field(description="detected file format (PNG, JPEG, ...)")
    mode: str = Field(description="pixel mode as decoded (L, I;16, RGB, ...)")


class DicomIdentifiers(BaseModel):
    """UIDs of a DICOM input (never patient name or ID)."""

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None


class JudgementFigures(BaseModel):
    """What the input judgement measured on an accepted image; GET /model gives the limits (input_judgement)."""

    contrast: float = Field(description="8-bit grey levels between the image's 1st and 99th percentiles, as the "
                                        "network sees it (limit: min_contrast)")
    lung_share_left: float = Field(description="largest lung region in the image's left half, share of the image "
                                               "(limit on both sides together: min_lung_share)")
    lung_share_right: float = Field(description="the same in the image's right half")
    lung_confidence: float = Field(description="the lung head's mean probability inside the lung field "
                                               "(limit: min_lung_confidence)")
    feature_distance: float | None = Field(None, description="distance from the Train images in the encoder's "
                                                             "feature space (limit: max_feature_distance)")
    frontal_score: float | None = Field(None, description="how much the image looks like an upright, whole frontal "
                                                          "chest radiograph (limit: min_frontal_score)")


class SegmentResult(BaseModel):
    """Measurements of one image, at its own resolution."""

    index: int = Field(0, description="position of the file in the request")
    image: ImageInfo
    dicom: DicomIdentifiers | None = Field(None, description="for DICOM inputs: the source's UIDs")
    threshold: float = Field(description="infection decision threshold applied")
    region_peak_threshold: float = Field(0.0, description="infection regions were kept only when their highest "
                                                          "probability reached this (the model card's rule)")
    ppar: float = Field(description="predicted positive area ratio: infection pixels / all image pixels")
    infection_pixels: int
    lung_pixels: int
    lung_fraction: float = Field(description="lung pixels / all image pixels")
    infected_lung_share: float = Field(description="infection pixels inside the lung / lung pixels")
    severity: str = Field(description=SEVERITY_DOC)
    judgement: JudgementFigures | None = Field(None, description="the input judgement's figures: the image was "
                                                                 "judged a frontal chest radiograph the model reads")
    mask_png_base64: str | None = Field(None, description="with include=mask: 0/255 infection mask PNG")
    overlay_png_base64: str | None = Field(None, description="with include=overlay: overlay PNG")
    probability_png_base64: str | None = Field(None, description="with include=probability: 8-bit probability PNG")
    lung_png_base64: str | None = Field(None, description="with include=lung: 0/255 lung mask PNG")
    image_png_base64: str | None = Field(None, description="with include=image: the image as segmented (8-bit "
                                                           "gray after the DICOM LUTs), for display")


class SegmentResponse(SegmentResult):
    request_id: str
    model: ModelIdentity
    timings_ms: dict[str, float] = Field(description="decode, preprocess, inference, judge, postprocess, total")


class BatchResponse(BaseModel):
    request_id: str
    model: ModelIdentity
    threshold: float
    results: list[SegmentResult] = Field(description="one result per file, in the order sent")
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    """Every error's body, whoever answers it (a route, the middleware or the server itself)."""

    detail: str = Field(description="what was wrong, for a person (never the file's content)")
    code: str = Field(description="what was wrong, for a program: e.g. corrupt_image, too_many_pixels, overloaded")
    request_id: str | None = Field(None, description="the X-Request-ID header: names the request in the logs")
    errors: list[dict[str, Any]] | None = Field(None, description="invalid_parameter: each parameter's problem")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorBody}


#: What any route may answer: the server's and the middleware's own errors.
SERVICE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("bad_request: the request line or headers cannot be parsed as HTTP"),
    408: _error("request_timeout: the request's headers or body did not arrive in time (connection closed)"),
    500: _error("internal_error: an error of the service, logged under the request id (connection closed)"),
    503: _error("not_ready (the model is loading), too_many_connections, overloaded (the request would wait "
                "longer than COVIDSEG_MAX_QUEUE_WAIT_S) or shutting_down; Retry-After says when to try again"),
}
#: What the routes behind the API key may answer besides.
KEYED_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **SERVICE_ERROR_RESPONSES,
    401: _error("unauthorized: missing or invalid X-API-Key (when keys are configured)"),
}
#: What the segmentation routes may answer besides.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("empty, truncated or corrupt file (empty_file, corrupt_image, corrupt_dicom, ...)"),
    422: _error("invalid parameter (threshold, format, output, include, outputs), missing file, DICOM without "
                "pixel data or multi-frame, a DICOM output asked of a non-DICOM input, a DICOM the selection "
                "rules leave out (not_selected), or an image the model cannot judge: no_contrast, "
                "not_a_chest_radiograph, appears_inverted (the detail says what was measured against which limit)"),
    413: _error("payload_too_large: file over the upload limit; too_many_pixels: an image over the pixel limit, or "
                "a request whose images need more working memory than COVIDSEG_WORK_MEMORY_MB"),
    415: _error("not an image, or an unsupported format or pixel mode"),
}
