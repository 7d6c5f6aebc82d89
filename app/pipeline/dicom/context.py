"""The typed input of every DICOM writer: one DICOM image and what the model found in it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pydicom

from app.pipeline.dicom.common import ModelRef, ResultIdentity, ResultOptions
from app.pipeline.dicom.source import writer_source
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation


@dataclass(frozen=True)
class ResultContext:
    loaded: LoadedImage
    seg: Segmentation
    model: ModelRef
    options: ResultOptions

    def __post_init__(self) -> None:
        if self.loaded.dicom is None:
            raise ValueError("DICOM results need a DICOM source image")

    @cached_property
    def source(self) -> pydicom.Dataset:
        """The source image as the writers copy it (see :mod:`app.pipeline.dicom.source`)."""
        return writer_source(self.loaded.dicom.dataset)

    @property
    def gray(self) -> np.ndarray:
        return self.loaded.gray

    def algorithm_parameters(self) -> dict[str, str]:
        """The decision rule, for the results' algorithm identification."""
        params = {"threshold": f"{self.seg.threshold:g}"}
        if self.seg.region_peak_threshold > self.seg.threshold:
            params["region_peak_threshold"] = f"{self.seg.region_peak_threshold:g}"
        return params

    def identity(self, kind: str) -> ResultIdentity:
        return ResultIdentity.of(kind, self.source, self.model, self.seg.threshold, self.seg.tta)

    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """Row and column spacing: PixelSpacing (calibrated), else ImagerPixelSpacing (at the detector)."""
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = self.source.get(keyword)
            if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
                return float(value[0]), float(value[1])
        return None
