"""DICOM chest X-rays made from the real fixture PNGs, shaped like what modalities send:
CR and DX, 12/14/16-bit, up to 2048 px, PixelSpacing or ImagerPixelSpacing, MONOCHROME1/2,
window tags, and compressed (RLE, JPEG baseline, JPEG-LS, JPEG 2000)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
UNSET = object()


def _pixels(png: Path, size: int | None, bits: int, photometric: str) -> tuple[np.ndarray, np.ndarray]:
    image = Image.open(png).convert("L")
    if size and size != image.width:
        image = image.resize((size, size), Image.BILINEAR)
    gray = np.asarray(image).astype(np.uint16)
    top = 2 ** bits - 1
    stored = np.rint(gray.astype(np.float64) * top / 255).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = top - stored
    return gray, stored


def make_cxr_dicom(png: Path, modality: str = "CR", photometric: str = "MONOCHROME2", compress: str | None = None,
                   study_uid: str | None = None, patient_name: str = "DOE^JANE", window: bool = True,
                   slope: float = 1.0, intercept: float = 0.0, size: int | None = None, bits: int = 12,
                   pixel_spacing: float | None = None, imager_pixel_spacing: float | None = None,
                   body_part: str | None = "CHEST", view: str | None = "PA", laterality: str | None = None,
                   orientation=UNSET, presentation_intent: str = "FOR PRESENTATION", patient_id: str = "PID-0001",
                   full_patient: bool = False, series_uid: str | None = None) -> bytes:
    """A single-frame ``bits``-bit DICOM of ``png`` (upsampled to ``size``); ``compress`` is a transfer
    syntax UID (RLE, JPEG-LS, JPEG 2000) or ``"jpeg-baseline"``."""
    gray, stored = _pixels(png, size, bits, photometric)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[modality], sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19610203", "F"
    if full_patient:  # what a RIS-fed modality adds
        ds.IssuerOfPatientID, ds.PatientAge, ds.StudyDescription = "HOSP", "065Y", "XR CHEST PA"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality = modality
    ds.Manufacturer = "fixture"
    ds.PatientOrientation = ["L", "F"] if orientation is UNSET else orientation
    if orientation is None:
        del ds.PatientOrientation
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    if laterality is not None:
        ds.ImageLaterality = laterality
    if pixel_spacing:
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    if imager_pixel_spacing:
        ds.ImagerPixelSpacing = [imager_pixel_spacing, imager_pixel_spacing]
    if modality == "DX":
        ds.PresentationIntentType = presentation_intent
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window:
        ds.WindowCenter, ds.WindowWidth = 2 ** (bits - 1) * slope + intercept, 2 ** bits * slope
    ds.PixelData = stored.tobytes()
    if compress == "jpeg-baseline":  # 8-bit lossy JPEG, encoded by Pillow and encapsulated
        _jpeg_baseline(ds, gray, photometric, window, slope, intercept)
    elif compress:
        ds.compress(compress)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _jpeg_baseline(ds: Dataset, gray: np.ndarray, photometric: str, window: bool, slope: float,
                   intercept: float) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    shown = 255 - gray.astype(np.uint8) if photometric == "MONOCHROME1" else gray.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(shown).save(buf, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if window:
        ds.WindowCenter, ds.WindowWidth = 128 * slope + intercept, 256 * slope
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def rle_overrunning_the_frame(png: Path) -> bytes:
    """A 16-bit RLE DICOM whose two segments each decode to 128 bytes more than the frame holds: a
    corrupt file that makes pylibjpeg-rle panic (a Rust ``PanicException``, not an ``Exception``)."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = read(make_cxr_dicom(png, compress=RLELossless, bits=16))
    runs = ds.Rows * ds.Columns // 128 + 1
    segment = bytes([0x81, 0x00]) * runs  # each pair: "repeat the next byte 128 times"
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def tinted(png: Path) -> np.ndarray:
    """The fixture X-ray as a colour picture (sepia, as a digitiser or a screenshot gives it): its
    three channels differ, so a wrong colour conversion changes the gray the model sees."""
    gray = np.asarray(Image.open(png).convert("L")).astype(np.float64)
    return np.stack([gray, gray * 0.85, gray * 0.6], axis=-1).clip(0, 255).astype(np.uint8)


def _colour_dataset(rows: int, columns: int, photometric: str, samples: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE", "PID-0001", "19610203", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "20260101", "", "", ""
    ds.Modality, ds.ConversionType, ds.SeriesNumber, ds.InstanceNumber = "OT", "DI", 1, 1
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, samples, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    return ds


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_colour_dicom(rgb: np.ndarray, photometric: str) -> bytes:
    """``rgb`` (H, W, 3 uint8) encoded as pydicom and its encoders write it: ``RGB`` native,
    ``YBR_FULL`` (converted by pydicom) in RLE Lossless, ``YBR_FULL_422`` native (chroma of each
    pixel pair averaged, stored Y Y Cb Cr), ``YBR_RCT`` in JPEG 2000 Lossless (the reversible
    colour transform, applied by the encoder), ``YBR_ICT`` in lossy JPEG 2000."""
    from pydicom.pixels import convert_color_space
    from pydicom.uid import JPEG2000, JPEG2000Lossless, RLELossless

    ds = _colour_dataset(rgb.shape[0], rgb.shape[1], photometric, 3)
    if photometric == "RGB":
        ds.PixelData = rgb.tobytes()
    elif photometric == "YBR_FULL":
        ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.PixelData = ybr.tobytes()
        ds.compress(RLELossless, ybr)
    elif photometric == "YBR_FULL_422":
        ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.float64)
        pairs = ybr.reshape(ybr.shape[0], -1, 2, 3)  # even width: (rows, pairs, 2 pixels, Y Cb Cr)
        chroma = np.rint(pairs[..., 1:].mean(axis=2))
        packed = np.concatenate([pairs[..., 0], chroma], axis=-1)  # Y0 Y1 Cb Cr per pair
        ds.PixelData = packed.clip(0, 255).astype(np.uint8).tobytes()
    elif photometric == "YBR_RCT":
        ds.compress(JPEG2000Lossless, rgb, photometric_interpretation="YBR_RCT")
    elif photometric == "YBR_ICT":
        ds.compress(JPEG2000, rgb, photometric_interpretation="YBR_ICT", j2k_psnr=[60])
    else:
        raise ValueError(photometric)
    return _bytes(ds)


def make_palette_dicom(image: Image.Image) -> bytes:
    """A PALETTE COLOR DICOM of a Pillow "P" image: its indices, its palette as three 16-bit LUTs."""
    indices = np.asarray(image, dtype=np.uint8)
    ds = _colour_dataset(indices.shape[0], indices.shape[1], "PALETTE COLOR", 1)
    palette = np.zeros((256, 3), np.uint16)
    entries = np.asarray(image.getpalette()[:768], np.uint16).reshape(-1, 3)
    palette[:len(entries)] = entries * 257  # 8-bit entries onto 16 bits
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", palette[:, i].astype("<u2").tobytes())
    ds.PixelData = indices.tobytes()
    return _bytes(ds)


def img2dcm(jpeg: Path, out: Path) -> bytes:
    """dcmtk's ``img2dcm``: a JPEG wrapped as it is (a Secondary Capture, JPEG Baseline, YBR_FULL_422)."""
    import shutil
    import subprocess

    tool = shutil.which("img2dcm") or "/usr/bin/img2dcm"
    assert Path(tool).exists(), "img2dcm is not installed: apt-get install dcmtk (see README)"
    subprocess.run([tool, str(jpeg), str(out)], check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def without_file_meta(data: bytes, implicit_vr: bool = True) -> bytes:
    """``data`` as some gateways and archives keep DICOM: the bare dataset, without preamble, 'DICM' or
    File Meta; implicit VR little endian, or explicit VR little endian (native pixel data only)."""
    ds = read(data)
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def with_garbage_frame(data: bytes, seed: int = 0) -> bytes:
    """A compressed ``data`` whose frame is noise after its first two bytes (a JPEG's SOI marker kept):
    a file whose header reads and whose pixel data no decoder can make sense of."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = read(data)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    noise = np.random.default_rng(seed).integers(0, 256, len(frame) - 2, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([frame[:2] + noise])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def mammogram(png: Path, **kw) -> bytes:
    """A DX-like file that a mammography unit sends: Modality MG, BREAST, CC, its own SOP class."""
    ds = read(make_cxr_dicom(png, "DX", body_part="BREAST", view="CC", **kw))
    ds.Modality = "MG"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MAMMOGRAPHY
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def with_lut_shape(data: bytes, shape: str, photometric: str | None = None) -> bytes:
    """``data`` with PresentationLUTShape ``shape`` (and another PhotometricInterpretation when given)."""
    ds = read(data)
    ds.PresentationLUTShape = shape
    if photometric:
        ds.PhotometricInterpretation = photometric
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
