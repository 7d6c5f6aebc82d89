"""The load step on damaged files: whatever the bytes, a decoded image or a PipelineError (a 4xx),
never another exception. Seeded random damage (flipped, inserted, cut and truncated bytes) of real
PNG and DICOM files, compressed the ways modalities send them."""

from __future__ import annotations

import random
import warnings

import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from app.pipeline.errors import PipelineError
from app.pipeline.inputs import decode_upload
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom

COVID = fixture_images("Val", "COVID-19")[0]
ORIGINALS = {
    "png": lambda: COVID.read_bytes(),
    "cr-mono1": lambda: make_cxr_dicom(COVID, "CR", "MONOCHROME1"),
    "rle": lambda: make_cxr_dicom(COVID, compress=RLELossless, bits=16),
    "jpeg-ls": lambda: make_cxr_dicom(COVID, "DX", compress=JPEGLSLossless, bits=14),
    "j2k": lambda: make_cxr_dicom(COVID, "DX", compress=JPEG2000Lossless),
    "jpeg-baseline": lambda: make_cxr_dicom(COVID, "DX", compress="jpeg-baseline"),
}


def damage(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out))
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randint(1, 20)):
                out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            del out[at:at + rng.randint(1, 200)]
        if not out:
            out = bytearray(b"x")
    return bytes(out)


@pytest.mark.parametrize("name", ORIGINALS)
def test_damaged_files_decode_or_are_refused_with_a_pipeline_error(name):
    original, rng = ORIGINALS[name](), random.Random(name)
    refused = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every oddity it tolerates
        for _ in range(150):
            try:
                decode_upload(damage(original, rng), 10 ** 8)
            except PipelineError as exc:
                assert exc.code and exc.message
                refused += 1
    assert refused > 0  # the damage did reach the checks
