"""Images the model cannot judge: the non-chest set of the input judgement (issue 27).

Every case is an image a frontal chest X-ray model has no grounds to segment, and each must be
refused (422) by the engine's judge step; at least 95 % are (``python -m bench.judge`` measures it,
``tests/engine/test_judge.py`` holds it in CI):

- generated: blank, constant, gradients, noise, a checkerboard, rendered text;
- made from the real chest fixtures: inverted (a negative), turned 90, 180 and 270 degrees, one lung, the
  lower half, the upper left quarter;
- photographs and microscopy that scikit-image ships (``tests/fixtures/nonchest/``, made 8-bit gray and at
  most 384 px by ``python -m tests.nonchest``);
- the single-frame images of 64 px or more among pydicom's own test files (CT, MR, NM, US, SC, SEG), read
  through the DICOM path (with the selection rules ignored: the judgement alone is measured).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tests.conftest import SUBSET

PHOTO_DIR = Path(__file__).resolve().parent / "fixtures" / "nonchest"
#: scikit-image's bundled images kept as fixtures (BSD-3 and public domain; tests/fixtures/ATTRIBUTION.md).
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_GRAY.png",
                  "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
                  "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
                  "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png")
PHOTO_SIDE = 384
#: pydicom's test files that hold one frame of 64 px or more (other modalities than CR/DX).
PYDICOM_FILES = ("693_J2KI.dcm", "CT_small.dcm", "GDCMJ2K_TextGBR.dcm", "J2K_pixelrep_mismatch.dcm",
                 "JPEG-lossy.dcm", "JPEG2000.dcm", "MR_small.dcm", "SC_jpeg_no_color_transform.dcm",
                 "SC_rgb_jpeg.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_jpeg2k.dcm",
                 "examples_overlay.dcm", "examples_palette.dcm", "examples_rgb_color.dcm", "image_dfl.dcm",
                 "liver_1frame.dcm")


@dataclass(frozen=True)
class Case:
    """One non-chest input: its name, its group and the bytes a client would send."""

    name: str
    group: str
    data: bytes
    filename: str


def png_bytes(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(gray, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def generated() -> dict[str, np.ndarray]:
    """Pictures with no anatomy: constant, ramps, noise, a pattern, text."""
    rng = np.random.default_rng(27)
    side = 512
    ramp = np.tile(np.linspace(0, 255, side), (side, 1))
    yy, xx = np.mgrid[-1:1:side * 1j, -1:1:side * 1j]
    images = {
        "blank-white-1024": np.full((1024, 1024), 255), "blank-black-1024": np.zeros((1024, 1024)),
        "constant-gray": np.full((side, side), 128), "constant-near-gray": 128 + rng.integers(0, 2, (side, side)),
        "gradient-horizontal": ramp, "gradient-vertical": ramp.T,
        "gradient-radial": 255 * np.clip(1 - np.hypot(xx, yy) / 1.42, 0, 1),
        "noise-uniform-512": rng.integers(0, 256, (side, side)),
        "noise-gaussian": np.clip(rng.normal(128, 40, (side, side)), 0, 255),
        "noise-smooth": np.asarray(Image.fromarray(rng.integers(0, 256, (16, 16)).astype(np.uint8))
                                   .resize((side, side), Image.BICUBIC)),
        "checkerboard": 255 * ((np.arange(side)[:, None] // 64 + np.arange(side)[None, :] // 64) % 2),
        "text": rendered_text(side),
    }
    return {name: np.asarray(image, dtype=np.uint8) for name, image in images.items()}


def rendered_text(side: int) -> np.ndarray:
    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=28)
    for row in range(12):
        draw.text((16, 16 + row * 40), "Chest X-ray report: no finding", fill=0, font=font)
    return np.asarray(image)


def chest_images() -> list[tuple[str, np.ndarray]]:
    """The real chest fixtures (COVID-QU-Ex, 256 px) that the derived cases are made from."""
    paths = sorted(SUBSET.glob("*/*/images/*.png"))
    return [(f"{p.parent.parent.parent.name.lower()}-{p.parent.parent.name.lower()}-{i}",
             np.asarray(Image.open(p).convert("L"))) for i, p in enumerate(paths)]


def derived(gray: np.ndarray) -> dict[str, np.ndarray]:
    """A chest X-ray made into what the model cannot judge as one."""
    h, w = gray.shape
    return {"inverted": 255 - gray, "turned-90": np.rot90(gray, 1), "turned-180": np.rot90(gray, 2),
            "turned-270": np.rot90(gray, 3), "one-lung": gray[:, : w // 2], "lower-half": gray[h // 2:, :],
            "upper-left-quarter": gray[: h // 2, : w // 2]}


def photos() -> list[tuple[str, bytes]]:
    return [(p.stem, p.read_bytes()) for p in sorted(PHOTO_DIR.glob("*.png"))]


def pydicom_files() -> list[tuple[str, bytes]]:
    from pydicom.data import get_testdata_file

    return [(name, Path(get_testdata_file(name)).read_bytes()) for name in PYDICOM_FILES]


def cases() -> list[Case]:
    """The whole non-chest set."""
    found = [Case(name, "generated", png_bytes(image), f"{name}.png") for name, image in generated().items()]
    for chest, gray in chest_images():
        found += [Case(f"{chest}-{how}", f"chest {how}", png_bytes(image), f"{how}.png")
                  for how, image in derived(gray).items()]
    found += [Case(name, "photograph", data, f"{name}.png") for name, data in photos()]
    found += [Case(name, "pydicom test file", data, name) for name, data in pydicom_files()]
    return found


def make_photo_fixtures() -> None:
    """(Re)write tests/fixtures/nonchest from scikit-image's bundled images (pip install scikit-image)."""
    import skimage

    source = Path(skimage.__file__).parent / "data"
    PHOTO_DIR.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_PHOTOS:
        image = Image.open(source / name).convert("L")
        image.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
        image.save(PHOTO_DIR / f"{Path(name).stem}.png", optimize=True)


if __name__ == "__main__":
    make_photo_fixtures()
    print(f"{len(cases())} non-chest cases; photographs in {PHOTO_DIR}")
