"""Reading the Kaggle layout: pairing by name, and clear errors instead of silent skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (DatasetError, default_data_root, index_split, limit_per_class, load_samples,
                           recipe_epoch_indices)
from tests.conftest import FIXTURE_ROOT

SUBSET = "Infection Segmentation Data"


def test_pairs_images_with_both_masks_by_name():
    samples = index_split(FIXTURE_ROOT, "Train")
    assert len(samples) == 6
    assert {s.class_name for s in samples} == {"COVID-19", "Non-COVID", "Normal"}
    for s in samples:
        assert s.image_path.name == s.infection_mask_path.name == s.lung_mask_path.name
        assert s.infection_mask_path.parent.name == "infection masks"


def test_loaded_masks_are_binary_and_covid_masks_not_empty():
    data = load_samples(index_split(FIXTURE_ROOT, "Val", ["COVID-19", "Normal"]), progress=False)
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (256, 256)
    assert set(np.unique(data.infection)) <= {0, 1}
    assert all(data.infection[i].any() for i in data.where("COVID-19"))
    assert not any(data.infection[i].any() for i in data.where("Normal"))
    assert all(data.lung[i].any() for i in range(len(data)))


def test_missing_mask_is_reported_not_skipped(data_copy: Path):
    victim = next((data_copy / SUBSET / "Train" / "COVID-19" / "infection masks").iterdir())
    victim.unlink()
    with pytest.raises(DatasetError) as err:
        index_split(data_copy, "Train")
    assert f"COVID-19/{victim.name}: missing infection mask" in str(err.value)


def test_mask_without_image_is_reported(data_copy: Path):
    masks = data_copy / SUBSET / "Val" / "COVID-19" / "lung masks"
    (masks / "stray.png").write_bytes(next(masks.iterdir()).read_bytes())
    with pytest.raises(DatasetError, match="stray.png: lung mask without an image"):
        index_split(data_copy, "Val")


def test_empty_class_is_reported(data_copy: Path):
    normal = data_copy / SUBSET / "Val" / "Normal"
    for p in (normal / "images").iterdir():
        p.unlink()
    with pytest.raises(DatasetError) as err:
        index_split(data_copy, "Val")
    text = str(err.value)
    assert "Val/Normal: class is empty" in text
    assert len(err.value.problems) == 1


def test_size_mismatch_and_unreadable_file_are_both_listed(data_copy: Path):
    covid = data_copy / SUBSET / "Train" / "COVID-19"
    first, second = sorted(p.name for p in (covid / "images").iterdir())
    Image.new("L", (128, 128)).save(covid / "lung masks" / first)
    (covid / "infection masks" / second).write_bytes(b"not a png")
    samples = index_split(data_copy, "Train", ["COVID-19"])
    with pytest.raises(DatasetError) as err:
        load_samples(samples, progress=False)
    problems = err.value.problems
    assert any("size mismatch" in p and first in p for p in problems)
    assert any("unreadable file" in p and second in p for p in problems)


def test_missing_split_folder_names_the_expected_layout(tmp_path: Path):
    with pytest.raises(DatasetError, match="Infection Segmentation Data/Train"):
        index_split(tmp_path, "Train")


def test_data_root_from_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("COVIDSEG_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("COVIDSEG_DATA_ROOT")
    assert default_data_root().parts[-3:] == ("shared", "data", "covid-qu-ex")


def test_recipe_epoch_uses_all_covid_and_about_three_normal_per_ten():
    covid, normal = np.arange(0, 100), np.arange(100, 200)
    rng = np.random.default_rng(0)
    epoch = recipe_epoch_indices(covid, normal, 0.3, rng)
    assert set(covid) <= set(epoch.tolist())
    chosen_normal = [i for i in epoch if i >= 100]
    assert len(chosen_normal) == 30 and len(set(chosen_normal)) == 30
    again = recipe_epoch_indices(covid, normal, 0.3, rng)
    assert set(again) != set(epoch)  # a fresh Normal draw each epoch


def test_limit_per_class_keeps_each_class():
    samples = limit_per_class(index_split(FIXTURE_ROOT, "Train"), 1)
    assert sorted(s.class_name for s in samples) == ["COVID-19", "Non-COVID", "Normal"]
