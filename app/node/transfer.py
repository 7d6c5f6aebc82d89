"""What the node accepts: SOP classes and transfer syntaxes (see docs/dicom-conformance.md)."""

from __future__ import annotations

from pydicom import uid
from pynetdicom import sop_class

#: Every syntax the reader decodes (pydicom with the pylibjpeg, openjpeg, rle and pyjpegls plugins);
#: the first two are what the node itself proposes when it sends results.
STORAGE_TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless,
]

#: Accepted as Storage SCP: the projection X-ray classes. DX "for processing" is accepted so that a
#: modality sending it gets a success and the node can log it as skipped, not an association error.
RECEIVED_SOP_CLASSES = [
    sop_class.ComputedRadiographyImageStorage,
    sop_class.DigitalXRayImageStorageForPresentation,
    sop_class.DigitalXRayImageStorageForProcessing,
]
