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
