"""Reading COVID-QU-Ex's "Infection Segmentation Data" in its original Kaggle layout.

``<root>/Infection Segmentation Data/<Split>/<Class>/{images,infection masks,lung masks}/<name>.png``

Problems are collected and reported together (missing masks, size mismatches,
unreadable files, empty classes) instead of silently skipping files: a silently
smaller training set is a wrong model nobody notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.pipeline.preprocess import binarize_mask

SUBSET_DIR = "Infection Segmentation Data"
CLASSES = ("COVID-19", "Non-COVID", "Normal")
IMAGES_DIR = "images"
INFECTION_DIR = "infection masks"
LUNG_DIR = "lung masks"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Where the project's machines keep the dataset: beside the checkout.
SHARED_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-qu-ex"


class DataSettings(BaseSettings):
    """Training's one setting, ``COVIDSEG_DATA_ROOT``, read the way :class:`app.core.config.Settings`
    reads the service's; a class of its own because importing those settings brings the service's
    DICOM and ONNX Runtime stack, and would stop training on a service variable's bad value."""

    model_config = SettingsConfigDict(env_prefix="COVIDSEG_", env_file=None, extra="ignore", env_ignore_empty=True)

    data_root: Path = Field(SHARED_DATA_ROOT, description="folder holding 'Infection Segmentation Data'")


class DatasetError(ValueError):
    """The data on disk is not what the layout promises; ``problems`` lists every issue found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  - ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the dataset:\n  - {shown}{more}")


def default_data_root() -> Path:
    """``$COVIDSEG_DATA_ROOT`` if set, else ``../shared/data/covid-qu-ex`` beside the project."""
    return DataSettings().data_root


@dataclass(frozen=True)
class Sample:
    """One image of the subset with the paths of its two masks."""

    split: str
    class_name: str
    name: str
    image_path: Path
    infection_mask_path: Path
    lung_mask_path: Path


@dataclass
class LoadedSamples:
    """Pixel arrays of a list of samples, stacked: images (N,H,W) uint8, masks (N,H,W) uint8 in {0,1}."""

    samples: list[Sample]
    images: np.ndarray
    infection: np.ndarray
    lung: np.ndarray

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, class_name: str) -> np.ndarray:
        """Indices of the samples of one class."""
        return np.array([i for i, s in enumerate(self.samples) if s.class_name == class_name], dtype=int)


def _image_files(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def index_split(root: Path | str, split: str, classes: tuple[str, ...] | list[str] = CLASSES) -> list[Sample]:
    """List every image of ``split`` for ``classes`` with its masks, pairing files by name.

    Raises :class:`DatasetError` listing all problems if a folder is missing, a class is
    empty, or an image lacks a mask (or a mask its image).
    """
    root = Path(root)
    split_dir = root / SUBSET_DIR / split
    problems: list[str] = []
    samples: list[Sample] = []
    if not split_dir.is_dir():
        raise DatasetError([f"split folder not found: {split_dir} (expected <root>/{SUBSET_DIR}/{split}/)"])
    for class_name in classes:
        class_dir = split_dir / class_name
        dirs = {d: class_dir / d for d in (IMAGES_DIR, INFECTION_DIR, LUNG_DIR)}
        missing = [str(p) for p in dirs.values() if not p.is_dir()]
        if missing:
            problems += [f"{split}/{class_name}: folder not found: {m}" for m in missing]
            continue
        images = _image_files(dirs[IMAGES_DIR])
        infection = _image_files(dirs[INFECTION_DIR])
        lung = _image_files(dirs[LUNG_DIR])
        if not images:
            problems.append(f"{split}/{class_name}: class is empty (no images in {dirs[IMAGES_DIR]})")
            continue
        for name, image_path in images.items():
            lacks = [label for label, found in (("infection mask", infection), ("lung mask", lung)) if name not in found]
            if lacks:
                problems.append(f"{split}/{class_name}/{name}: missing {' and '.join(lacks)}")
                continue
            samples.append(Sample(split, class_name, Path(name).stem, image_path, infection[name], lung[name]))
        for label, found in (("infection mask", infection), ("lung mask", lung)):
            for orphan in sorted(set(found) - set(images)):
                problems.append(f"{split}/{class_name}/{orphan}: {label} without an image")
    if problems:
        raise DatasetError(problems)
    return samples


def _read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("L", "1", "P", "RGB", "RGBA", "I;16", "I"):
            raise ValueError(f"unsupported image mode {im.mode}")
        return np.asarray(im.convert("L"))


def load_samples(samples: list[Sample], progress: bool = True) -> LoadedSamples:
    """Read the pixels of ``samples``; all images and their masks must be readable and of one size.

    Raises :class:`DatasetError` listing every unreadable file and size mismatch.
    """
    problems: list[str] = []
    images, infection, lung = [], [], []
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc="reading images", unit="img", leave=False)
    for s in iterator:
        arrays = []
        for path in (s.image_path, s.infection_mask_path, s.lung_mask_path):
            try:
                arrays.append(_read_gray(path))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                problems.append(f"{s.split}/{s.class_name}: unreadable file {path}: {exc}")
        if len(arrays) != 3:
            continue
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            problems.append(
                f"{s.split}/{s.class_name}/{s.image_path.name}: size mismatch: image {arrays[0].shape[::-1]}, "
                f"infection mask {arrays[1].shape[::-1]}, lung mask {arrays[2].shape[::-1]}"
            )
            continue
        images.append(arrays[0])
        infection.append(binarize_mask(arrays[1]))
        lung.append(binarize_mask(arrays[2]))
    if not problems and len({a.shape for a in images}) > 1:
        problems.append(f"images of several sizes: {sorted({a.shape[::-1] for a in images})}; expected one size")
    if problems:
        raise DatasetError(problems)
    if not images:
        raise DatasetError(["no samples to load"])
    return LoadedSamples(
        samples=list(samples),
        images=np.stack(images),
        infection=np.stack(infection),
        lung=np.stack(lung),
    )


def limit_per_class(samples: list[Sample], limit: int | None) -> list[Sample]:
    """Keep the first ``limit`` samples of each class (for smoke runs); ``None`` keeps all."""
    if limit is None:
        return samples
    kept: dict[str, int] = {}
    out = []
    for s in samples:
        if kept.get(s.class_name, 0) < limit:
            kept[s.class_name] = kept.get(s.class_name, 0) + 1
            out.append(s)
    return out


def recipe_epoch_indices(
    covid_indices: np.ndarray, normal_indices: np.ndarray, normal_ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """One epoch of the COVID+Normal recipe: every COVID-19 image plus a fresh random draw of
    ``round(normal_ratio * n_covid)`` Normal images (about 3 Normal : 10 COVID by default), shuffled.

    Non-COVID images never enter: their empty infection masks are unannotated, not healthy lungs.
    """
    n_normal = min(len(normal_indices), int(round(normal_ratio * len(covid_indices))))
    chosen = rng.choice(normal_indices, size=n_normal, replace=False) if n_normal else np.array([], dtype=int)
    epoch = np.concatenate([covid_indices, chosen]).astype(int)
    rng.shuffle(epoch)
    return epoch
