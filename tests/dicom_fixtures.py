"""DICOM chest X-rays made from the real fixture PNGs (CR and DX, MONOCHROME1/2, compressed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}


def make_cxr_dicom(png: Path, modality: str = "CR", photometric: str = "MONOCHROME2", compress: str | None = None,
                   study_uid: str | None = None, patient_name: str = "DOE^JANE", window: bool = True,
                   slope: float = 1.0, intercept: float = 0.0) -> bytes:
    """A 12-bit single-frame DICOM of ``png``; ``compress`` is a transfer syntax UID (e.g. RLE Lossless)."""
    gray = np.asarray(Image.open(png).convert("L")).astype(np.uint16)
    stored = gray * 16  # 12-bit
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[modality], sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, "PID-0001", "19610203", "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality = modality
    ds.Manufacturer = "fixture"
    ds.PatientOrientation = ["L", "F"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window:
        ds.WindowCenter, ds.WindowWidth = 2048 * slope + intercept, 4096 * slope
    ds.PixelData = stored.astype(np.uint16).tobytes()
    if compress == "jpeg-baseline":  # 8-bit lossy JPEG, encoded by Pillow and encapsulated
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
    elif compress:
        ds.compress(compress)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))
