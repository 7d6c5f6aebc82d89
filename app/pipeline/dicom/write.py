"""The DICOM writers by result kind: a :class:`ResultContext` -> a dataset."""

from __future__ import annotations

from collections.abc import Callable

import pydicom

from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.sc import write_secondary_capture
from app.pipeline.dicom.seg import write_segmentation
from app.pipeline.dicom.sr import write_measurement_report

WRITERS: dict[str, Callable[[ResultContext], pydicom.Dataset]] = {
    "seg": write_segmentation, "sc": write_secondary_capture, "sr": write_measurement_report}


def write_result(kind: str, ctx: ResultContext) -> pydicom.Dataset:
    return WRITERS[kind](ctx)
