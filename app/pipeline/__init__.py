"""Imaging pipeline shared by training, evaluation, export and the service.

Each step is one module with one job (after MONAI Deploy's operators):
load (bytes -> grayscale image), preprocess (image -> network input),
infer (network input -> probabilities), postprocess (probabilities -> masks and
measurements), render (masks -> PNG/overlay).  The PNG and any other input path
share everything after ``load``.
"""
