"""DICOM at both ends of the pipeline, one job per module.

``read``: DICOM bytes (Part 10, or a dataset without File Meta) -> a parsed header (the load step) ->
:class:`~app.pipeline.load.LoadedImage` (the decode step, after the selection rules judged the header).
``common``: what every result object shares (identity, patient/study copy, series attributes).
``seg``, ``sc``, ``sr``: the writers, a :class:`~app.pipeline.postprocess.Segmentation` ->
a Segmentation, a Secondary Capture of the overlay, a TID 1500 measurement report.
``quiet``: pydicom and highdicom kept from writing patient data to logs and stderr (imported here,
so by every module of the package).
"""

from app.pipeline.dicom import quiet  # noqa: F401 - for its effect on the libraries' logging
