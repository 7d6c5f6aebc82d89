"""The pipeline's one error: what was wrong with an input, as a kind of problem and a code.

The pipeline knows nothing of HTTP; the API maps each :class:`Problem` to a status
(:mod:`app.core.errors`), the node and the bridge log and set the item aside.
"""

from __future__ import annotations

from enum import Enum


class Problem(str, Enum):
    EMPTY = "empty"  # nothing to read
    CORRUPT = "corrupt"  # truncated or undecodable
    TOO_LARGE = "too_large"  # over a size limit
    UNSUPPORTED = "unsupported"  # a format, mode or transfer syntax the pipeline does not handle
    INVALID = "invalid"  # well formed but not usable as asked (no pixels, multi-frame DICOM, bad parameter)


class PipelineError(ValueError):
    """An input cannot be used: ``problem`` is the kind, ``code`` the machine-readable name,
    ``message`` what was wrong, for a person."""

    def __init__(self, problem: Problem, code: str, message: str):
        super().__init__(message)
        self.problem = problem
        self.code = code
        self.message = message
