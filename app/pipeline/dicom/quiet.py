"""pydicom and highdicom quote attribute values in their log lines and warnings ("Invalid value for
VR UI: '<uid>'", a patient name "unlikely to represent the intended person name"), and highdicom
logs every SEG it builds at INFO with the source's UID: patient data. Imported by every DICOM
module, this keeps highdicom to errors in the logs, pydicom out of them, and both libraries' warnings
out of stderr.

pydicom logs ERROR only about the file it reads, and for compressed pixel data it cannot decode it logs
each plugin's failure with its traceback: a client's bad file would fill the log with ERROR lines and
tracebacks. The pipeline refuses such a file with a code instead, which the service logs as one
warning line (app.core.errors).
"""

from __future__ import annotations

import logging
import warnings

import highdicom  # noqa: F401 - imported first: pydicom sets its logger's level when imported
import pydicom  # noqa: F401

logging.getLogger("highdicom").setLevel(logging.ERROR)
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
for _library in ("pydicom", "highdicom"):
    warnings.filterwarnings("ignore", module=rf"{_library}(\.|$)")
