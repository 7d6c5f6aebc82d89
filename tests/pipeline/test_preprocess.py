"""One preprocessing function for training, evaluation, export and the service."""

from __future__ import annotations

import numpy as np
import pytest

import torch

import training.evaluate as evaluate_module
import training.validation as validation_module
from app.pipeline import preprocess as pp
from app.pipeline.infer import ModelOutputs
from tests.conftest import FIXTURE_ROOT, fixture_images, read_gray
from training.data import index_split, load_samples
from training.dataset import SegmentationDataset


def test_scales_to_minus_one_one_and_replicates_channels():
    gray = np.array([[0, 255], [51, 204]], dtype=np.uint8)
    x = pp.preprocess_image(gray, size=2)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], [[-1.0, 1.0], [-0.6, 0.6]], atol=1e-6)
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])


def test_every_gray_level_scales_to_the_bits_of_the_float_arithmetic():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)  # each 8-bit value once
    by_arithmetic = 2.0 * (levels.astype(np.float32) / 255.0 - 0.5)
    for x in (pp.preprocess_image(levels, size=16), pp.preprocess_batch([levels, levels[::-1]], size=16)[0]):
        assert x.dtype == np.float32 and x.tobytes() == np.repeat(by_arithmetic[None], 3, axis=0).tobytes()


def test_a_batch_is_its_images_stacked():
    grays = [read_gray(p) for p in fixture_images("Val", "COVID-19")] + [np.full((300, 500), 77, np.uint8)]
    batch = pp.preprocess_batch(grays)
    assert batch.shape == (len(grays), 3, pp.INPUT_SIZE, pp.INPUT_SIZE) and batch.dtype == np.float32
    assert batch.tobytes() == np.stack([pp.preprocess_image(g) for g in grays]).tobytes()


def test_resizes_other_sizes_to_the_network_input():
    gray = np.full((300, 500), 128, dtype=np.uint8)
    assert pp.preprocess_image(gray).shape == (3, pp.INPUT_SIZE, pp.INPUT_SIZE)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32)])
def test_refuses_non_grayscale_or_non_uint8(bad):
    with pytest.raises(ValueError):
        pp.preprocess_image(bad)


def test_binarize_mask_maps_any_nonzero_to_one():
    assert pp.binarize_mask(np.array([0, 1, 128, 255], np.uint8)).tolist() == [0, 1, 1, 1]


class Spy(torch.nn.Module):
    """A stand-in network that records what it is fed and answers zeros of the right shape."""

    def __init__(self):
        super().__init__()
        self.seen: list[np.ndarray] = []

    def forward(self, x):
        self.seen.append(x.detach().float().contiguous().numpy().copy())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    def predict(self, batch):  # the OnnxSegmenter interface, for evaluation
        self.seen.append(batch.copy())
        return np.zeros((batch.shape[0], 2, *batch.shape[2:]), np.float32)

    def run(self, batch):  # every output, as OnnxSegmenter.run gives them
        return ModelOutputs(self.predict(batch))


def test_training_validation_and_evaluation_feed_the_model_the_same_arrays():
    data = load_samples(index_split(FIXTURE_ROOT, "Val", ["COVID-19", "Normal"]), progress=False)
    expected = pp.preprocess_batch(list(data.images))
    spy = Spy()
    validation_module.predict_logits(spy, data.images, torch.device("cpu"), "fp32", pp.INPUT_SIZE)
    np.testing.assert_array_equal(np.concatenate(spy.seen), expected)
    spy = Spy()
    spy.info = type("Info", (), {"input_size": pp.INPUT_SIZE})()
    evaluate_module.predict_class(spy, data, batch_size=3, progress=False, desc="")
    np.testing.assert_array_equal(np.concatenate(spy.seen), expected)


def test_training_dataset_and_inference_batch_agree_on_real_images():
    samples = index_split(FIXTURE_ROOT, "Val", ["COVID-19", "Normal"])
    data = load_samples(samples, progress=False)
    dataset = SegmentationDataset(data, augment=False)
    batch = pp.preprocess_batch(list(data.images))
    for i in range(len(dataset)):
        x, y = dataset[i]
        np.testing.assert_array_equal(x.numpy(), batch[i])
        np.testing.assert_array_equal(y[0].numpy(), data.infection[i])
        np.testing.assert_array_equal(y[1].numpy(), data.lung[i])


def test_service_feeds_the_model_the_same_array(service_client):
    client, service = service_client
    path = fixture_images("Val", "COVID-19")[0]
    seen = []
    original = service.model.run
    service.model.run = lambda batch: (seen.append(batch.copy()), original(batch))[1]
    try:
        r = client.post("/segment", files={"file": (path.name, path.read_bytes(), "image/png")})
    finally:
        service.model.run = original
    assert r.status_code == 200
    np.testing.assert_array_equal(seen[0][0], pp.preprocess_image(read_gray(path)))
