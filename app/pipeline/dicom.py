"""DICOM at both ends of the pipeline (pydicom, highdicom).

Load: a DICOM upload -> :class:`LoadedImage` (8-bit grayscale), applying the Modality LUT
(Rescale Slope/Intercept), then the VOI LUT or Window Center/Width, inverting MONOCHROME1 and
scaling any bit depth to 0..255.  Compressed transfer syntaxes (JPEG baseline/lossless,
JPEG 2000, RLE) decode through the pylibjpeg plugins.

Write: a DICOM Segmentation with the infection and lung segments, and a Secondary Capture of
the overlay with a burned-in summary, both filed under the source's study.
"""

from __future__ import annotations

import io
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from app import __version__
from app.pipeline.load import InputError, LoadedImage, stretch_to_uint8
from app.pipeline.postprocess import Segmentation
from app.pipeline.render import overlay_rgb

DICOM_MEDIA_TYPE = "application/dicom"
MANUFACTURER = "covidseg"
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
#: Attributes echoed in JSON answers: identifiers of the data, never of the patient.
ECHOED_UIDS = {"study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID",
               "sop_instance_uid": "SOPInstanceUID"}


def looks_like_dicom(data: bytes, filename: str | None = None, content_type: str | None = None) -> bool:
    """DICOM by content (the 'DICM' marker after the 128-byte preamble), media type or extension."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if content_type and content_type.split(";")[0].strip().lower() == DICOM_MEDIA_TYPE:
        return True
    return bool(filename) and filename.lower().endswith(".dcm")


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


def load_dicom_bytes(data: bytes, max_pixels: int) -> LoadedImage:
    """Decode one single-frame DICOM image; refusals are :class:`InputError` with a 4xx status."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise InputError(400, "corrupt_dicom", "the DICOM file cannot be parsed") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(422, "no_pixel_data", "the DICOM file holds no pixel data (is it an image?)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(422, "multi_frame", f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported: "
                                             "send one frame per file")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise InputError(413, "too_many_pixels",
                         f"image is {cols}x{rows} = {rows * cols} pixels, over the limit of {max_pixels}")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise InputError(415, "unsupported_mode", f"photometric interpretation {photometric or 'missing'} "
                                                  f"is not supported: send {', '.join(SUPPORTED_PHOTOMETRIC)}")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(415, "unsupported_transfer_syntax",
                         f"cannot decode pixel data in transfer syntax {syntax}") from exc
    except (ValueError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        raise InputError(400, "corrupt_dicom", "the DICOM pixel data is truncated or corrupt") from exc
    if photometric.startswith(("RGB", "YBR")):
        rgb = pixels if photometric == "RGB" else pydicom.pixels.convert_color_space(pixels, photometric, "RGB")
        gray = np.asarray(Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L"))
    else:
        values = apply_modality_lut(pixels, ds)
        if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
            # The presentation the modality chose: window onto its output range.
            values = apply_voi_lut(values, ds, prefer_lut=True)
            gray = stretch_to_uint8(values, *_voi_output_range(ds))
        else:  # no presentation given: stretch the image's own range
            gray = stretch_to_uint8(values)
        if photometric == "MONOCHROME1":  # higher values are darker: invert to MONOCHROME2
            gray = 255 - gray
    uids = {k: str(ds[v].value) for k, v in ECHOED_UIDS.items() if v in ds}
    return LoadedImage(gray=gray, format="DICOM", mode=photometric, extra={"dicom": uids, "dataset": ds})


def _algorithm(model: dict[str, str]) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=model["name"], family=codes.cid7162.ArtificialIntelligence,
                                              version=model["version"])


def segmentation_dataset(source: pydicom.Dataset, seg: Segmentation, model: dict[str, str]) -> hd.seg.Segmentation:
    """A binary DICOM Segmentation of the source image: segment 1 infection, segment 2 lung."""
    algorithm = _algorithm(model)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=1, segment_label="COVID-19 infection",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Lung]),
        hd.seg.SegmentDescription(
            segment_number=2, segment_label="Lung",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm),
    ]
    pixel_array = np.stack([seg.infection_mask, seg.lung_mask], axis=-1)[None].astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=[source], pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=model["name"], software_versions=f"{model['version']} (service {__version__})",
        device_serial_number="0", content_description=f"infection threshold {seg.threshold}",
        content_label="COVIDSEG", omit_empty_frames=False,
    )


def summary_line(seg: Segmentation, model: dict[str, str]) -> str:
    return (f"PPAR {100 * seg.ppar:.1f}%  infected lung {100 * seg.infected_lung_share:.1f}%  "
            f"{seg.severity}  t={seg.threshold:g}  {model['name']} {model['version']}  not for diagnosis")


def secondary_capture_dataset(source: pydicom.Dataset, gray: np.ndarray, seg: Segmentation,
                              model: dict[str, str]) -> hd.sc.SCImage:
    """An RGB Secondary Capture of the overlay with the summary burned in, in a new series of the study."""
    rgb = overlay_rgb(gray, seg.infection_mask, seg.lung_mask)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    text = summary_line(seg, model)
    size = max(10, image.height // 40)
    draw.rectangle((0, 0, image.width, size + 6), fill=(0, 0, 0))
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):
        font = None
    draw.text((4, 3), text, fill=(255, 255, 0), font=font)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.asarray(image), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=9902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=tuple(source.get("PatientOrientation", ["L", "F"]))[:2] or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.BurnedInAnnotation = "YES"
    reference = pydicom.Dataset()  # lets viewers and the bridge tie the capture to its source image
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.SeriesDescription = f"{model['name']} overlay"
    sc.DerivationDescription = text
    return sc


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def echo_uids(extra: dict[str, Any] | None) -> dict[str, str] | None:
    return (extra or {}).get("dicom")
