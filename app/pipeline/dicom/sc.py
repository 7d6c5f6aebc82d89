"""Write: an RGB Secondary Capture of the overlay with the summary burned in, in a new series of the study."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from app.pipeline.dicom.common import MANUFACTURER, ScForm, derived_uid, finish_result
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.source import instance_number, patient_orientation
from app.pipeline.render import overlay_rgb

KIND = "sc"
#: Smallest type of the burned-in summary, px: the text shrinks to fit the width down to this.
MIN_TEXT_PX = 8
#: What a viewer needs to hang the capture beside its source: BodyPartExamined (General Series, Type 3),
#: ImageLaterality (General Image, Type 3), ViewPosition (in no module of the SC IOD: a Standard Extended
#: attribute). Each is copied only with a value, which the writer's view of the source holds only when
#: valid (ImageLaterality among its enumerated R, L, U, B: :mod:`app.pipeline.dicom.values`); Laterality
#: is not copied as it is but follows from them (below).
COPIED_FROM_SOURCE = ("BodyPartExamined", "ImageLaterality", "ViewPosition")
#: Body Part Examined Defined Terms (PS3.16 Annex L) of unpaired parts: with one, the series has
#: no Laterality. Any other term, or none, may be paired.
UNPAIRED_BODY_PARTS = frozenset({
    "CHEST", "ABDOMEN", "PELVIS", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "HEAD", "HEADNECK", "NECK",
    "SKULL", "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX", "HEART", "MEDIASTINUM"})
LATERALITIES = ("R", "L")
#: highdicom accepts only single-letter orientations ("FL" fails): it gets this, and the capture
#: then the source's own (:func:`patient_orientation`).
ANY_ORIENTATION = ("L", "F")
#: JPEG baseline quality of a lossy capture (``ScForm.lossy_jpeg``): the burned-in text stays sharp-edged
#: enough to read at the smallest type, at about a tenth of the lossless size (bench/RESULTS.md, SC size).
JPEG_QUALITY = 90


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


def burned_in_overlay(ctx: ResultContext, max_side: int = 0) -> np.ndarray:
    """The overlay with the summary burned in; its longer side reduced to ``max_side`` first (0: as is), so
    the text is drawn at the reduced size, as sharp as on a full-size capture."""
    image = Image.fromarray(overlay_rgb(ctx.gray, ctx.seg.infection_mask, ctx.seg.lung_mask))
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    lines, font = fitted_lines(draw, summary_line(ctx), image.width - 8)
    step = font.size + 3
    draw.rectangle((0, 0, image.width, step * len(lines) + 4), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * step), line, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def copy_hanging_attributes(source: pydicom.Dataset, sc: pydicom.Dataset) -> None:
    for keyword in COPIED_FROM_SOURCE:
        if str(source.get(keyword, "") or "").strip():
            sc[keyword] = source[keyword]


def series_laterality(source: pydicom.Dataset, sc: pydicom.Dataset) -> str | None:
    """General Series Laterality (Type 2C): required when the capture has no ImageLaterality and its
    body part may be paired (not given, or not an unpaired term): then the source's R or L, else
    empty (unknown). ``None`` (absent) otherwise, as for a chest."""
    if "ImageLaterality" in sc or str(sc.get("BodyPartExamined", "")).strip().upper() in UNPAIRED_BODY_PARTS:
        return None
    value = str(source.get("Laterality", "") or "").strip().upper()
    return value if value in LATERALITIES else ""


def as_jpeg_baseline(sc: pydicom.Dataset, quality: int = JPEG_QUALITY) -> None:
    """Encode ``sc`` (RGB, 8-bit, native) lossy as JPEG baseline (ISO 10918-1, by Pillow: pydicom has no such
    encoder) in place: YBR_FULL_422 with 4:2:2 chroma as that interpretation says, and the Lossy Image
    Compression attributes (PS3.3 C.7.6.1.1.5) a viewer shows to say the pixels are not the original's."""
    rgb = sc.pixel_array
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=1)  # 1: 4:2:2
    frame = buf.getvalue()
    sc.PixelData = encapsulate([frame])
    sc["PixelData"].VR = "OB"
    sc.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    sc.PhotometricInterpretation = "YBR_FULL_422"
    sc.PlanarConfiguration = 0
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = f"{rgb.nbytes / len(frame):.2f}"
    sc.LossyImageCompressionMethod = "ISO_10918_1"


def form_description(form: ScForm, rows: int, columns: int) -> str:
    """What a reduced capture is, for its DerivationDescription (empty for the full-size lossless one)."""
    parts = [f"reduced to {columns}x{rows}"] if form.max_side else []
    parts += [f"lossy JPEG baseline, quality {JPEG_QUALITY}"] if form.lossy_jpeg else []
    return f"; {', '.join(parts)}" if parts else ""


def write_secondary_capture(ctx: ResultContext) -> pydicom.Dataset:
    source, ident = ctx.source, ctx.identity(KIND)
    form = ctx.options.sc_form.applied_to(*ctx.gray.shape[:2])
    # a reduced capture is another object than the full-size one: a UID of its own, in the same series
    sop_instance_uid = ident.sop_instance_uid if form.is_full else derived_uid(ident.sop_instance_uid, *form.names())
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=burned_in_overlay(ctx, form.max_side), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=ident.series_instance_uid,
        series_number=ctx.options.series_number(KIND),
        sop_instance_uid=sop_instance_uid, instance_number=instance_number(source),
        manufacturer=MANUFACTURER, patient_orientation=ANY_ORIENTATION, transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.PatientOrientation = patient_orientation(source)
    sc.BurnedInAnnotation = "YES"
    copy_hanging_attributes(source, sc)
    laterality = series_laterality(source, sc)
    if laterality is not None:
        sc.Laterality = laterality
    reference = pydicom.Dataset()  # lets viewers and the bridge tie the capture to its source image
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = summary_line(ctx) + form_description(form, sc.Rows, sc.Columns)
    finish_result(sc, source, KIND, ctx.model, ctx.options)
    if form.lossy_jpeg:
        as_jpeg_baseline(sc)
    return sc
