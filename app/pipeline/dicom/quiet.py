"""pydicom and highdicom quote attribute values in their log lines and warnings ("Invalid value for
VR UI: '<uid>'", a patient name "unlikely to represent the intended person name"), and highdicom
logs every SEG it builds at INFO with the source's UID: patient data. Imported by every DICOM
module, this keeps both libraries to errors in the logs and their warnings out of stderr.
"""

from __future__ import annotations

import logging
import warnings

import highdicom  # noqa: F401 - imported first: pydicom sets its logger's level when imported
import pydicom  # noqa: F401

for _library in ("pydicom", "highdicom"):
    logging.getLogger(_library).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=rf"{_library}(\.|$)")
