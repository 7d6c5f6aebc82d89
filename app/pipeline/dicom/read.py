"""Read: DICOM bytes -> a parsed header (:func:`parse_dicom`, no pixel decoded) -> :class:`LoadedImage`
(:func:`read_dicom`: checked, then decoded to 8-bit grayscale).

Two steps, so that the selection rules judge the header before any pixel is decoded. A Part 10 file
(preamble, 'DICM', File Meta) and a bare dataset (no File Meta, as some gateways and archives keep them:
implicit VR, or explicit VR, little endian) are both read; a bare one is recognised by its first
elements (:func:`looks_like_bare_dataset`) and decoded in the transfer syntax pydicom parsed it in.

Grayscale: applies the Modality LUT (Rescale Slope/Intercept), then the VOI LUT or Window
Center/Width, inverts MONOCHROME1 or a Presentation LUT Shape INVERSE (once) and scales any bit depth
to 0..255. Colour (RGB, the YBR family, PALETTE COLOR): pydicom decodes to RGB (the palette through
its LUTs), and that is converted to gray as a PNG or JPEG upload is. Compressed transfer syntaxes
(JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE) decode through the pylibjpeg/pyjpegls plugins.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import SIGNATURES, DicomSource, LoadedImage, check_dimensions, stretch_to_uint8

DICOM_MEDIA_TYPE = "application/dicom"
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
#: What pydicom decodes to RGB (``as_rgb``): every YBR it converts, JPEG 2000's reversible and
#: irreversible colour transforms (which the decoder undoes), RGB itself. Not YBR_PARTIAL_420
#: (MPEG video) nor the retired YBR_PARTIAL_422.
DECODED_TO_RGB = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
PALETTE = "PALETTE COLOR"
SUPPORTED_PHOTOMETRIC = (*GRAYSCALE, *DECODED_TO_RGB, PALETTE)
#: Explicit VR value representations (PS3.5 7.1.2): these have 2 reserved bytes and a 4-byte length,
#: the others a 2-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                       b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
#: The groups a bare dataset can start with: File Meta without its preamble (0002), or the dataset's
#: first attributes (0008: SOP Common, General Study... a dataset without them is no usable image).
FIRST_GROUPS = (0x0002, 0x0008)
UNDEFINED_LENGTH = 0xFFFFFFFF


def has_dicom_content(data: bytes) -> bool:
    """DICOM by content alone: the 'DICM' marker after the 128-byte preamble, or a bare dataset's first elements."""
    return (len(data) >= 132 and data[128:132] == b"DICM") or looks_like_bare_dataset(data)


def looks_like_dicom(data: bytes, filename: str | None = None, content_type: str | None = None) -> bool:
    """DICOM by content (the 'DICM' marker after the 128-byte preamble, or a bare dataset's first
    elements), media type or extension."""
    if has_dicom_content(data):
        return True
    if any(data.startswith(magic) for magic in SIGNATURES.values()):
        return False  # a PNG or JPEG by its own signature, whatever it was named or sent as
    if content_type and content_type.split(";")[0].strip().lower() == DICOM_MEDIA_TYPE:
        return True
    return bool(filename) and filename.lower().endswith(".dcm")


def looks_like_bare_dataset(data: bytes) -> bool:
    """A little endian dataset without preamble: its first element is in group 0002 or 0008, its value
    fits in the data, and the element after it (when there is one) has a higher tag, as elements are
    stored in ascending order. A PNG, a JPEG or a text file fails on the first tag already."""
    if len(data) < 8 or struct.unpack_from("<H", data)[0] not in FIRST_GROUPS:
        return False
    # In implicit VR these bytes are the low half of a length: spelling a VR, it would be over 16 kB
    explicit = data[4:6] in SHORT_VRS | LONG_VRS
    first = _element_at(data, 0, explicit)
    if first is None:
        return False
    tag, end = first
    if end is None or end >= len(data):  # a sequence of undefined length, or nothing after it to check
        return True
    second = _element_at(data, end, explicit)
    return second is not None and second[0] > tag


def _element_at(data: bytes, at: int, explicit: bool) -> tuple[int, int | None] | None:
    """The tag of the little endian element at ``at`` and the offset after it (None: undefined length),
    or None when its header does not fit a DICOM element."""
    if len(data) < at + 8:
        return None
    group, element = struct.unpack_from("<HH", data, at)
    vr = data[at + 4:at + 6]
    if not explicit:
        length, start = struct.unpack_from("<I", data, at + 4)[0], at + 8
    elif vr in SHORT_VRS:
        length, start = struct.unpack_from("<H", data, at + 6)[0], at + 8
    elif vr in LONG_VRS and data[at + 6:at + 8] == b"\0\0" and len(data) >= at + 12:
        length, start = struct.unpack_from("<I", data, at + 8)[0], at + 12
    else:
        return None
    if length == UNDEFINED_LENGTH:
        return (group << 16) | element, None
    return ((group << 16) | element, start + length) if start + length <= len(data) else None


def parse_dicom(data: bytes) -> pydicom.Dataset:
    """Parse Part 10 (or bare) DICOM bytes, every attribute, no pixel decoded; a file that cannot be
    parsed is a 400."""
    with corrupt_unless_understood("the DICOM file cannot be parsed"):
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if not has_dicom_content(data) and "SOPClassUID" not in ds:
        # only its name (.dcm) or media type said DICOM: pydicom's forced read of other bytes finds nothing real
        raise PipelineError(Problem.CORRUPT, "corrupt_dicom", "the file was sent as DICOM (by its name or media "
                                                              "type) but its content is not a DICOM dataset")
    read_every_attribute(ds)
    with corrupt_unless_understood("the DICOM file cannot be parsed"):
        set_parsed_transfer_syntax(ds)
    return ds


def set_parsed_transfer_syntax(ds: pydicom.Dataset) -> None:
    """pydicom decodes pixel data by the File Meta's TransferSyntaxUID, which a bare dataset lacks: give
    it the syntax pydicom actually parsed it in (implicit or explicit VR, little or big endian).
    Encapsulated (compressed) pixel data does not say its codec: it is left without one, and refused
    when decoded (:func:`_check_transfer_syntax`)."""
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta or None in ds.original_encoding:
        return
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        return
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def read_every_attribute(ds: pydicom.Dataset) -> None:
    """pydicom converts a value on its first access: convert them all here, so that a damaged
    attribute is refused by the read step and not met later by a writer copying it."""
    for tag in list(ds.keys()):
        with corrupt_unless_understood(f"the DICOM file is corrupt: attribute {tag} cannot be read"):
            element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                read_every_attribute(item)


def is_decoder_panic(exc: BaseException) -> bool:
    """Rust decoders (pylibjpeg-rle, through pyo3) raise ``PanicException`` on some corrupt data; it
    derives from BaseException, so ``except Exception`` lets it through."""
    return type(exc).__name__ == "PanicException"


@contextmanager
def corrupt_unless_understood(message: str) -> Iterator[None]:
    """Inside: any failure to interpret the sender's bytes is a 400 ``corrupt_dicom``. pydicom reads
    elements lazily and decoders fail in their own ways, so a corrupt file can surface as almost any
    exception at almost any access; refusals already made (PipelineError) pass through."""
    try:
        yield
    except PipelineError:
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) and not is_decoder_panic(exc):
            raise  # KeyboardInterrupt, SystemExit: not the file's fault
        raise PipelineError(Problem.CORRUPT, "corrupt_dicom", message) from exc


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The value range that the VOI transform maps the display onto (as pydicom applies it)."""
    if "VOILUTSequence" in ds:
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (0.0, float(2 ** bits - 1)) if int(ds.PixelRepresentation) == 0 else \
        (-float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1))
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _check_image(ds: pydicom.Dataset, max_pixels: int) -> str:
    """Refuse what is not one usable frame; returns the photometric interpretation."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        # a damaged length field also ends the parse early, before the pixel data: say both
        raise PipelineError(Problem.INVALID, "no_pixel_data", "the DICOM file holds no pixel data: it is not an "
                                                              "image, or it is damaged before its pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise PipelineError(Problem.INVALID, "multi_frame", f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported: "
                                             "send one frame per file")
    check_dimensions(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PipelineError(Problem.UNSUPPORTED, "unsupported_mode", f"photometric interpretation {photometric or 'missing'} "
                                                  f"is not supported: send {', '.join(SUPPORTED_PHOTOMETRIC)}")
    _check_transfer_syntax(ds)
    return photometric


def _check_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A bare dataset with compressed pixel data: nothing says which codec made it."""
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise PipelineError(Problem.UNSUPPORTED, "unsupported_transfer_syntax",
                            "compressed pixel data in a DICOM dataset without File Meta: its transfer syntax is "
                            "unknown; send it as a DICOM file (with File Meta)")


#: Largest magnitude a Modality or VOI LUT value may have: beyond it no stored value maps onto a picture (a
#: slope of 1e308 or NaN turns every pixel into the same value), so the header is damaged. A slope of 0 too.
LUT_VALUE_LIMIT = 1e9
LUT_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _check_lut_values(ds: pydicom.Dataset) -> None:
    """Refuse (``corrupt_dicom``) a Modality or VOI LUT value that is not finite, absurdly large, a slope of 0 or
    a window width of 0 or less: applied, they would turn the picture into one value."""
    for keyword in LUT_KEYWORDS:
        if keyword not in ds or ds[keyword].is_empty:
            continue
        values = ds[keyword].value
        values = list(values) if isinstance(values, (list, tuple, MultiValue)) else [values]
        numbers = [float(v) for v in values]
        bad = [v for v in numbers if not math.isfinite(v) or abs(v) > LUT_VALUE_LIMIT]
        if keyword == "RescaleSlope":
            bad += [v for v in numbers if v == 0]
        if keyword == "WindowWidth":
            bad += [v for v in numbers if v <= 0]
        if bad:
            raise PipelineError(Problem.CORRUPT, "corrupt_dicom",
                                f"the DICOM file is corrupt: {keyword} is not a usable value (not finite, 0 where it "
                                f"divides, or beyond {LUT_VALUE_LIMIT:g})")


def _check_decoded_shape(ds: pydicom.Dataset, pixels: np.ndarray, photometric: str) -> None:
    """The decoded pixels are one frame of Rows x Columns (x 3 for colour decoded to RGB): else the header and
    the pixel data disagree (Rows and Columns smaller than the data, frames not declared)."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    expected = (rows, columns, 3) if photometric in DECODED_TO_RGB else (rows, columns)
    if pixels.shape != expected:
        raise PipelineError(Problem.CORRUPT, "corrupt_dicom",
                            f"the DICOM pixel data does not match its header: decoded to shape {pixels.shape}, "
                            f"Rows x Columns give {expected}")


def _check_native_length(ds: pydicom.Dataset) -> None:
    """Native pixel data longer than one frame of Rows x Columns (one padding byte aside): the header does
    not describe it (more frames, or other dimensions), so no picture read from it can be trusted."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed or "PixelData" not in ds:
        return
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits < 8:
        return
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * (bits // 8)
    if len(ds.PixelData) > expected + 1:
        raise PipelineError(Problem.CORRUPT, "corrupt_dicom",
                            f"the DICOM pixel data does not match its header: {len(ds.PixelData)} bytes where Rows x "
                            f"Columns x samples x bits need {expected}")


def can_decode(syntax: str) -> bool:
    """Whether an installed pixel data plugin decodes this transfer syntax."""
    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError, TypeError):
        return False


def _decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    with corrupt_unless_understood("the DICOM pixel data is truncated or corrupt"):
        try:
            ds.pixel_array_options(as_rgb=True)  # pydicom's default, relied on: colour comes out RGB
            return ds.pixel_array
        except (NotImplementedError, RuntimeError) as exc:
            syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "unknown")
            if can_decode(syntax):  # a syntax we read, so its data is damaged (a 400, below)
                raise
            raise PipelineError(Problem.UNSUPPORTED, "unsupported_transfer_syntax",
                                f"cannot decode pixel data in transfer syntax {syntax}") from exc


def is_inverted(ds: pydicom.Dataset, photometric: str) -> bool:
    """Whether higher values are shown darker: MONOCHROME1, or a Presentation LUT Shape INVERSE (PS3.3
    C.11.6) on MONOCHROME2. The DX IOD pairs MONOCHROME1 with INVERSE: both say the same inversion, so
    it is applied once, never twice."""
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def displayed_gray(ds: pydicom.Dataset, pixels: np.ndarray, photometric: str) -> np.ndarray:
    """Decoded pixels -> the 8-bit grayscale a reader would see (LUTs, window, MONOCHROME1 or INVERSE
    inverted; colour as its luma)."""
    if photometric not in GRAYSCALE:
        return colour_to_gray(ds, pixels, photometric)
    values = apply_modality_lut(pixels, ds)
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        # The presentation the modality chose: window onto its output range.
        gray = stretch_to_uint8(apply_voi_lut(values, ds, prefer_lut=True), *_voi_output_range(ds))
    else:  # no presentation given: stretch the image's own range
        gray = stretch_to_uint8(values)
    return 255 - gray if is_inverted(ds, photometric) else gray


def colour_to_gray(ds: pydicom.Dataset, pixels: np.ndarray, photometric: str) -> np.ndarray:
    """RGB as pydicom decodes it (YBR already converted: converting again was the bug), or a
    palette's indices through its LUTs; scaled to 8 bits and converted to gray by Pillow, as
    a PNG or JPEG upload is, so the same picture gives the same input either way."""
    if photometric == PALETTE:
        rgb, top = apply_color_lut(pixels, ds), 2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1
    else:
        rgb, top = pixels, 2 ** int(ds.BitsStored) - 1
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise PipelineError(Problem.CORRUPT, "corrupt_dicom", f"{photometric} pixel data does not hold 3 samples "
                                                             "per pixel")
    return np.asarray(Image.fromarray(stretch_to_uint8(rgb, 0.0, float(top)), "RGB").convert("L"))


def source_of(ds: pydicom.Dataset) -> DicomSource:
    return DicomSource(dataset=ds, study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                       series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                       sop_instance_uid=str(ds.get("SOPInstanceUID", "")))


def read_dicom(ds: pydicom.Dataset, max_pixels: int) -> LoadedImage:
    """A parsed single-frame DICOM image, checked then decoded, as a :class:`LoadedImage`; refusals are
    :class:`PipelineError`, any other failure to interpret the file a 400 ``corrupt_dicom``."""
    with corrupt_unless_understood("the DICOM file is corrupt: an attribute or the pixel data cannot be read"):
        photometric = _check_image(ds, max_pixels)
        _check_lut_values(ds)
        _check_native_length(ds)
        pixels = _decode_pixels(ds)
        _check_decoded_shape(ds, pixels, photometric)
        gray = displayed_gray(ds, pixels, photometric)
        return LoadedImage(gray=gray, format="DICOM", mode=photometric, dicom=source_of(ds))


def load_dicom_bytes(data: bytes, max_pixels: int) -> LoadedImage:
    """Parse and read DICOM bytes, with no selection between (tests, tools)."""
    return read_dicom(parse_dicom(data), max_pixels)
