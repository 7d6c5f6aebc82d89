"""Load: uploaded bytes -> 8-bit grayscale image, refusing what is not a usable X-ray.

Every refusal is a :class:`PipelineError` carrying the kind of problem, a code and a message
that says what was wrong (the API, not the pipeline, maps the kind to an HTTP status). The
pixel limit is checked from the header, before decoding, so a decompression bomb never reaches
the decoder.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.pipeline.errors import PipelineError, Problem

if TYPE_CHECKING:
    import pydicom

SUPPORTED_FORMATS = ("PNG", "JPEG")
#: Below this a radiograph shows nothing to segment (the model sees 256x256; the dataset's own
#: images are 256 px, modalities send 2000-3000 px).
MIN_IMAGE_SIDE = 64
SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}  # the first bytes of each
#: Wide grayscale, stretched from its own range; every other mode Pillow decodes is converted to "L".
GRAY_WIDE = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@dataclass(frozen=True)
class DicomSource:
    """The DICOM file an image came from: its dataset (for the writers) and its identifying UIDs."""

    dataset: "pydicom.Dataset"
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    def uids(self) -> dict[str, str]:
        """Identifiers of the data, never of the patient: what JSON answers echo."""
        return {"study_instance_uid": self.study_instance_uid, "series_instance_uid": self.series_instance_uid,
                "sop_instance_uid": self.sop_instance_uid}


@dataclass
class LoadedImage:
    """A decoded image ready for preprocessing, plus what the response reports about it."""

    gray: np.ndarray  # uint8 (H, W)
    format: str
    mode: str
    dicom: DicomSource | None = None  # set for DICOM inputs

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])


def stretch_to_uint8(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map of [lo, hi] (default: the image's own min and max) onto 0..255, clipped."""
    a = np.asarray(values, dtype=np.float64)
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_uint8_gray(image: Image.Image) -> np.ndarray:
    """Any mode Pillow decodes -> uint8 grayscale (CMYK, YCbCr, LAB... through Pillow's conversions).
    Wide (16/32-bit, float) gray is stretched min..max to 0..255."""
    if image.mode in GRAY_WIDE:
        return stretch_to_uint8(np.asarray(image))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    try:
        return np.asarray(image.convert("L"))
    except ValueError as exc:
        raise PipelineError(Problem.UNSUPPORTED, "unsupported_mode",
                            f"image mode {image.mode} cannot be converted to grayscale") from exc


def check_dimensions(width: int, height: int, max_pixels: int) -> None:
    """Refuse, from the header, an image over the pixel limit or too small to be a chest X-ray."""
    if width * height > max_pixels:
        raise PipelineError(Problem.TOO_LARGE, "too_many_pixels",
                            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    if width < 1 or height < 1:
        raise PipelineError(Problem.EMPTY, "empty_image", "the image has no pixels")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise PipelineError(Problem.INVALID, "image_too_small",
                            f"image is {width}x{height}: a chest X-ray needs at least {MIN_IMAGE_SIDE} pixels "
                            "on each side")


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy open (header only): what the file says it is, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies later; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PipelineError(Problem.TOO_LARGE, "too_many_pixels", f"image refused before decoding: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow's plugins raise ValueError for a header they refuse (a PNG text chunk that inflates past
        # its limit), SyntaxError or EOFError for one cut short: the file's fault, never a 500
        signed = next((fmt for fmt, magic in SIGNATURES.items() if data.startswith(magic)), None)
        if signed:  # it says it is one, so it is damaged rather than of another kind
            raise PipelineError(Problem.CORRUPT, "corrupt_image",
                                f"the {signed} image is truncated or corrupt: its header cannot be read") from exc
        raise PipelineError(Problem.UNSUPPORTED, "not_an_image",
                            "the file is not a supported image: send PNG, JPEG or DICOM") from exc


def decode_upright(image: Image.Image) -> Image.Image:
    """The pixels, turned as the file's EXIF orientation says a viewer shows them (a JPEG from a
    phone or some exporters is stored sideways): the model sees an upright chest and the masks
    line up with what the user sees."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise PipelineError(Problem.TOO_LARGE, "too_many_pixels", f"image refused: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PipelineError(Problem.CORRUPT, "corrupt_image",
                            f"the {image.format} image is truncated or corrupt and cannot be decoded") from exc
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image  # as stored (no copy)
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: keep the pixels as stored
        return image


def load_image_bytes(data: bytes, max_pixels: int) -> LoadedImage:
    """Decode a PNG or JPEG upload into a :class:`LoadedImage` (empty files are refused by
    :func:`app.pipeline.inputs.parse_upload`, before the format is known)."""
    with open_image(data) as image:
        if image.format not in SUPPORTED_FORMATS:
            raise PipelineError(Problem.UNSUPPORTED, "unsupported_format",
                                f"image format {image.format} is not supported: send PNG, JPEG or DICOM")
        check_dimensions(*image.size, max_pixels)
        if getattr(image, "n_frames", 1) > 1:
            raise PipelineError(Problem.UNSUPPORTED, "multi_frame",
                                "multi-frame images are not supported: send one image per file")
        mode, fmt = image.mode, image.format
        gray = to_uint8_gray(decode_upright(image))
    return LoadedImage(gray=gray, format=fmt, mode=mode)
