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
COPIED_FROM_SOURCE = ("BodyPartExamined", "Laterality", "ImageLaterality", "ViewPosition")


def summary_line(ctx: ResultContext) -> str:
    seg = ctx.seg
    return (f"PPAR {100 * seg.ppar:.1f}%  infected lung {100 * seg.infected_lung_share:.1f}%  "
            f"{seg.severity}  t={seg.threshold:g}  {ctx.model.name} {ctx.model.version}  not for diagnosis")


def burned_in_overlay(ctx: ResultContext) -> np.ndarray:
    image = Image.fromarray(overlay_rgb(ctx.gray, ctx.seg.infection_mask, ctx.seg.lung_mask))
    size = max(10, image.height // 40)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, size + 6), fill=(0, 0, 0))
    draw.text((4, 3), summary_line(ctx), fill=(255, 255, 0), font=ImageFont.load_default(size=size))
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
