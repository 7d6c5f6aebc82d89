"""DICOM at both ends of the pipeline, one job per module.

``read``: a DICOM file -> :class:`~app.pipeline.load.LoadedImage` (the load step).
``common``: what every result object shares (identity, patient/study copy, series attributes).
``seg``, ``sc``, ``sr``: the writers, a :class:`~app.pipeline.postprocess.Segmentation` ->
a Segmentation, a Secondary Capture of the overlay, a TID 1500 measurement report.
``quiet``: pydicom and highdicom kept from writing patient data to logs and stderr (imported here,
so by every module of the package).
"""

from app.pipeline.dicom import quiet  # noqa: F401 - for its effect on the libraries' logging
