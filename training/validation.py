"""Per-epoch validation of a training run and the rule that selects an epoch."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from app.pipeline.preprocess import preprocess_batch, resize_mask
from training.data import LoadedSamples
from training.precision import autocast
from training.scoring import infection_scores, lung_dice, ppar_scores


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str,
                   size: int, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Logits (N, 2, size, size) float32 of ``model`` on uint8 images (N, H, W).

    A PyTorch model, so not the engine (which runs the exported graph); its input is the engine's all the
    same: ``preprocess_batch``, the one preprocessing function that Engine.preprocess calls
    (tests/pipeline/test_preprocess.py checks that both feed the same arrays)."""
    model.eval()
    out = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="validating", unit="batch", leave=False, disable=not progress):
        x = torch.from_numpy(preprocess_batch(list(images[i:i + batch_size]), size)).to(device)
        with autocast(device, precision):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out)


def validate(model: torch.nn.Module, val: LoadedSamples, device: torch.device, precision: str, size: int,
             loss_fn: torch.nn.Module, threshold: float = 0.5, progress: bool = False) -> dict[str, float]:
    """Val loss, COVID-19 global Dice/IoU/precision/recall, mean per-image Dice, Normal PPAR, lung Dice."""
    logits = predict_logits(model, val.images, device, precision, size, progress=progress)
    inf_gt = np.stack([resize_mask(m, size) for m in val.infection])
    lung_gt = np.stack([resize_mask(m, size) for m in val.lung])
    target = torch.from_numpy(np.stack([inf_gt, lung_gt], axis=1).astype(np.float32))
    metrics: dict[str, float] = {"val_loss": float(loss_fn(torch.from_numpy(logits), target))}
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    covid, normal = val.where("COVID-19"), val.where("Normal")
    if len(covid):
        scores = infection_scores(probs[covid, 0], inf_gt[covid], threshold)
        metrics.update({f"covid_{k}": scores[k] for k in ("precision", "recall", "dice", "iou")})
        metrics["covid_mean_image_dice"] = scores["mean_image_dice"]
    if len(normal):
        s = ppar_scores(probs[normal, 0], threshold)
        metrics.update({"normal_ppar_median": s["median"], "normal_ppar_p95": s["p95"],
                        "normal_any_positive_share": s["any_positive_share"]})
    metrics["lung_dice"] = lung_dice(probs[:, 1], lung_gt)
    return metrics


def selection_key(metrics: dict[str, float], max_normal_p95: float) -> tuple[int, float]:
    """Higher is better: epochs meeting the Normal PPAR bar first, then COVID-19 Dice."""
    p95 = metrics.get("normal_ppar_p95", 0.0)
    meets = int(p95 <= max_normal_p95)
    return meets, metrics.get("covid_dice", 0.0) - (0.0 if meets else 10.0 * (p95 - max_normal_p95))
