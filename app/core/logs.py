"""Logging for every entry point: one format, and libraries that would log identifiers kept quiet.

httpx logs each request URL at INFO (DICOMweb URLs carry study, series and instance UIDs);
pynetdicom logs association and dataset details; pydicom and highdicom quote values (kept to errors
by app.pipeline.dicom.quiet). At INFO the project's own lines say what happened without naming
patients, files or UIDs.
"""

from __future__ import annotations

import logging

QUIET = ("httpx", "httpcore", "pynetdicom")  # pydicom, highdicom: app.pipeline.dicom.quiet


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
