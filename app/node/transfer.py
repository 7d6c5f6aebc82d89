"""What the node accepts and what it proposes: SOP classes and transfer syntaxes (see docs/dicom-conformance.md)."""

from __future__ import annotations

from pydicom import uid
from pynetdicom import sop_class

#: Every syntax the reader decodes (pydicom with the pylibjpeg, openjpeg, rle and pyjpegls plugins).
STORAGE_TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless,
]

#: What the node proposes for every result it sends: uncompressed, which every Storage SCP accepts.
SENT_TRANSFER_SYNTAXES = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]

#: ``COVIDSEG_NODE_SC_TRANSFER_SYNTAX`` -> the compressed syntax proposed for the Secondary Capture in a
#: presentation context of its own (None: none). The lossless ones are encoded by pydicom when sent (JPEG-LS
#: by pyjpegls, JPEG 2000 by pylibjpeg-openjpeg, RLE by pydicom's own encoder): the same pixels, the same UID.
#: JPEG baseline is lossy, so never a conversion at sending: the node makes its SC so (another object, its
#: own UID: app.pipeline.dicom.sc) and sends it as made.
SC_TRANSFER_SYNTAXES: dict[str, str | None] = {
    "jpeg-ls-lossless": uid.JPEGLSLossless, "jpeg2000-lossless": uid.JPEG2000Lossless, "rle": uid.RLELossless,
    "jpeg-baseline": uid.JPEGBaseline8Bit, "uncompressed": None,
}
#: Those the sender may convert an SC to (pydicom's UID does not say which syntaxes are lossy).
LOSSLESS_SC_SYNTAXES = frozenset({uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless})

#: Accepted as Storage SCP: the projection X-ray classes. DX "for processing" is accepted so that a
#: modality sending it gets a success and the node can log it as skipped, not an association error.
RECEIVED_SOP_CLASSES = [
    sop_class.ComputedRadiographyImageStorage,
    sop_class.DigitalXRayImageStorageForPresentation,
    sop_class.DigitalXRayImageStorageForProcessing,
]
