"""Write: an RGB Secondary Capture of the overlay with the summary burned in, in a new series of the study."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian

from app.pipeline.dicom.common import finish_result
from app.pipeline.dicom.context import ResultContext
from app.pipeline.render import overlay_rgb

KIND = "sc"
#: General Series/Image attributes a viewer needs to hang the capture beside its source.
MIN_TEXT_PX = 8
COPIED_FROM_SOURCE = ("BodyPartExamined", "Laterality", "ImageLaterality", "ViewPosition")


def summary_line(ctx: ResultContext) -> str:
    seg = ctx.seg
    return (f"PPAR {100 * seg.ppar:.1f}%  infected lung {100 * seg.infected_lung_share:.1f}%  "
            f"{seg.severity}  t={seg.threshold:g}  {ctx.model.name} {ctx.model.version}  not for diagnosis")


def fitted_lines(draw: ImageDraw.ImageDraw, text: str, width: int) -> tuple[list[str], ImageFont.ImageFont]:
    """The summary in as few lines as fit ``width``: one line, smaller type, then two-space-separated
    parts on further lines at the smallest type."""
    size = max(MIN_TEXT_PX, draw.im.size[1] // 40)
    while True:
        font = ImageFont.load_default(size=size)
        if draw.textlength(text, font=font) <= width or size == MIN_TEXT_PX:
            break
        size -= 1
    lines: list[str] = []
    for part in text.split("  "):
        if lines and draw.textlength(f"{lines[-1]}  {part}", font=font) <= width:
            lines[-1] = f"{lines[-1]}  {part}"
        else:
            lines.append(part)
    return lines, font


def burned_in_overlay(ctx: ResultContext) -> np.ndarray:
    image = Image.fromarray(overlay_rgb(ctx.gray, ctx.seg.infection_mask, ctx.seg.lung_mask))
    draw = ImageDraw.Draw(image)
    lines, font = fitted_lines(draw, summary_line(ctx), image.width - 8)
    step = font.size + 3
    draw.rectangle((0, 0, image.width, step * len(lines) + 4), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * step), line, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def write_secondary_capture(ctx: ResultContext) -> pydicom.Dataset:
    source, ident = ctx.source, ctx.identity(KIND)
    orientation = tuple(source.get("PatientOrientation") or ())[:2] or ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=burned_in_overlay(ctx), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=ident.series_instance_uid, series_number=1,
        sop_instance_uid=ident.sop_instance_uid, instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer="covidseg", patient_orientation=orientation, transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.BurnedInAnnotation = "YES"
    for keyword in COPIED_FROM_SOURCE:
        if keyword in source:
            sc[keyword] = source[keyword]
    if "BodyPartExamined" not in sc and "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C: required (may be empty) unless the body part says it is not paired
    reference = pydicom.Dataset()  # lets viewers and the bridge tie the capture to its source image
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = summary_line(ctx)
    finish_result(sc, source, KIND, ctx.model, ctx.options)
    return sc
