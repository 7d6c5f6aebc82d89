"""The load step and its typed output: an upload is DICOM (by content, media type or extension) or a
PNG/JPEG, parsed (:func:`parse_upload`) before anything is decoded (:func:`decode_parsed`).

Between the two the select step judges a DICOM by its header, so an image the rules leave out (a
mammogram, a knee) costs no decoding, and damaged pixel data of such an image is not even looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.pipeline.dicom.read import looks_like_dicom, parse_dicom, read_dicom
from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import LoadedImage, load_image_bytes, open_image

if TYPE_CHECKING:
    import pydicom


@dataclass(frozen=True)
class ParsedInput:
    """An upload as the load step leaves it: a DICOM's parsed header (every attribute read, the pixel
    data still encoded), or a PNG/JPEG's bytes (its header is read when decoded)."""

    data: bytes
    dataset: "pydicom.Dataset | None" = None  # DICOM only

    @property
    def is_dicom(self) -> bool:
        return self.dataset is not None


def parse_upload(data: bytes, filename: str | None = None, content_type: str | None = None) -> ParsedInput:
    """The load step: what the upload is, a DICOM's header parsed; the filename serves detection only."""
    if not data:
        raise PipelineError(Problem.EMPTY, "empty_file", "the uploaded file is empty")
    if looks_like_dicom(data, filename, content_type):
        return ParsedInput(data, parse_dicom(data))
    return ParsedInput(data)


def declared_pixels(parsed: ParsedInput) -> int:
    """The pixels the input will decode to, as its header declares them (all frames of a DICOM), before any is
    decoded: what admission by memory counts. 0 when the header does not say; decoding then refuses the file."""
    if parsed.dataset is not None:
        try:
            frames = int(parsed.dataset.get("NumberOfFrames", 1) or 1)
            return max(int(parsed.dataset.Rows) * int(parsed.dataset.Columns) * max(frames, 1), 0)
        except (AttributeError, TypeError, ValueError, OverflowError):
            return 0
    with open_image(parsed.data) as image:
        return image.width * image.height


def decode_parsed(parsed: ParsedInput, max_pixels: int) -> LoadedImage:
    """The decode step: check the image from its header (size, frames, photometric...), then decode it."""
    if parsed.dataset is not None:
        return read_dicom(parsed.dataset, max_pixels)
    return load_image_bytes(parsed.data, max_pixels)


def decode_upload(data: bytes, max_pixels: int, filename: str | None = None,
                  content_type: str | None = None) -> LoadedImage:
    """Load and decode, with no selection between (evaluation, tools, tests)."""
    return decode_parsed(parse_upload(data, filename, content_type), max_pixels)
