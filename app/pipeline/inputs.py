"""Load step dispatch: an upload is DICOM (by content, media type or extension) or a PNG/JPEG."""

from __future__ import annotations

from app.pipeline.dicom.read import load_dicom_bytes, looks_like_dicom
from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import LoadedImage, load_image_bytes


def decode_upload(data: bytes, max_pixels: int, filename: str | None = None,
                  content_type: str | None = None) -> LoadedImage:
    """Decode an uploaded file into a :class:`LoadedImage`; the filename serves detection only."""
    if not data:
        raise PipelineError(Problem.EMPTY, "empty_file", "the uploaded file is empty")
    if looks_like_dicom(data, filename, content_type):
        return load_dicom_bytes(data, max_pixels)
    return load_image_bytes(data, max_pixels)
