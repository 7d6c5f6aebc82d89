"""Train the ResNet-34 U-Net with the COVID+Normal recipe.

    python -m training.train --out runs/shipped --epochs 20

Every epoch uses all COVID-19 training images plus a fresh draw of Normal images at
``--normal-ratio`` (0.3 = about 3 Normal : 10 COVID); Non-COVID is never used.  After
each epoch the model is scored on Val (COVID-19 Dice and Normal PPAR), ``last.pt`` is
written (``--resume`` continues from it; a different ``--epochs`` then stretches or shortens
the learning-rate schedule from the step reached) and ``best.pt`` keeps the selected epoch:
the best COVID-19 Dice among epochs whose Normal p95 PPAR is under ``--max-normal-p95``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from app.pipeline.preprocess import INPUT_SIZE
from training.checkpoint import Checkpointer
from training.data import LoadedSamples, default_data_root, index_split, limit_per_class, load_samples
from training.dataset import AUGMENTATIONS, SegmentationDataset
from training.history import plot_history, write_history
from training.losses import DiceBCELoss
from training.model import build_model
from training.onnx_weights import freeze_batchnorm_statistics
from training.parent import freezes_batchnorm, init_from_parent
from training.precision import autocast, resolve_device, resolve_precision
from training.run import RecipeSampler, Run
from training.validation import selection_key, validate

log = logging.getLogger("training.train")
TRAIN_CLASSES = ("COVID-19", "Normal")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding 'Infection Segmentation Data' (default $COVIDSEG_DATA_ROOT or ../shared/data/covid-qu-ex)")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder for checkpoints, history and plots")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=INPUT_SIZE, help="network input side (multiple of 32)")
    p.add_argument("--optimizer", choices=["adam", "adamw"], default="adam")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (peak rate for onecycle/cosine)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=["constant", "onecycle", "cosine"], default="constant")
    p.add_argument("--warmup-fraction", type=float, default=0.1, help="share of steps warming up (onecycle, cosine)")
    p.add_argument("--normal-ratio", type=float, default=0.3, help="Normal images per COVID-19 image each epoch")
    p.add_argument("--lung-weight", type=float, default=0.5, help="weight of the lung head in the loss")
    p.add_argument("--negative-weight", type=float, default=1.0,
                   help="weight of the infection BCE on images with an empty infection mask (Normal)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of this checkpoint or exported fp32 .onnx model, such as the "
                        "shipped one (a further training phase; BatchNorm statistics stay frozen after an .onnx); "
                        "optimizer and schedule start afresh")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--encoder-weights", default="none", help="'none' (from scratch) or 'imagenet' (needs internet)")
    p.add_argument("--augment", choices=["none", *AUGMENTATIONS], default="mild",
                   help="mild: flips, affine, brightness/contrast (1.x models); strong: also gamma, "
                        "autocontrast and equalisation")
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay per step "
                        "(e.g. 0.999) and validate, select and export it instead of the raw weights; 0 = off")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per class and split (smoke runs)")
    p.add_argument("--num-workers", type=int, default=1, help="data-loading worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp16 AMP on CUDA; on CPU whichever of fp32 and bf16 autocast (both with "
                        "channels_last) a short probe finds faster on this CPU (it differs by CPU: "
                        "bench/RESULTS.md)")
    p.add_argument("--max-normal-p95", type=float, default=0.01,
                   help="selection: Normal Val p95 PPAR an epoch must stay under to be preferred")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/last.pt (a new --epochs re-plans the schedule from there)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm buffers), updated every step."""
    if decay <= 0:
        return None
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),
                                               use_buffers=True)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_fraction: float, lr: float):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                                   pct_start=warmup_fraction)
    if schedule == "cosine":
        warm = max(1, int(total_steps * warmup_fraction))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


def load_data(args: argparse.Namespace, data_root: Path, progress: bool) -> tuple[LoadedSamples, LoadedSamples]:
    train_samples = limit_per_class(index_split(data_root, "Train", TRAIN_CLASSES), args.limit)
    val_samples = limit_per_class(index_split(data_root, "Val", TRAIN_CLASSES), args.limit)
    return load_samples(train_samples, progress=progress), load_samples(val_samples, progress=progress)


def make_loader(args: argparse.Namespace, train_data: LoadedSamples) -> tuple[RecipeSampler, DataLoader]:
    sampler = RecipeSampler(train_data.where("COVID-19"), train_data.where("Normal"), args.normal_ratio, args.seed)
    dataset = SegmentationDataset(train_data, augment=None if args.augment == "none" else args.augment,
                                  size=args.image_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        drop_last=len(sampler) > args.batch_size, persistent_workers=args.num_workers > 0,
                        worker_init_fn=_worker_init if args.num_workers > 0 else None)
    return sampler, loader


def run_config(args: argparse.Namespace, data_root: Path, train_data: LoadedSamples, val_data: LoadedSamples,
               sampler: RecipeSampler, device: torch.device, precision: str) -> dict[str, Any]:
    """What the run was: its arguments and what they resolved to (``config.json``, the card's phases)."""
    covid = len(train_data.where("COVID-19"))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update({"data_root": str(data_root), "device": str(device), "precision_resolved": precision,
                   "train_counts": {"COVID-19": covid, "Normal": int(len(train_data.where("Normal")))},
                   "normal_per_epoch": len(sampler) - covid, "images_per_epoch": len(sampler),
                   "val_counts": {c: int(len(val_data.where(c))) for c in TRAIN_CLASSES},
                   "command": "python -m training.train " + " ".join(sys.argv[1:])})
    return config


def setup(args: argparse.Namespace, progress: bool) -> Run:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, args.image_size)
    data_root = args.data_root or default_data_root()
    train_data, val_data = load_data(args, data_root, progress)
    sampler, loader = make_loader(args, train_data)
    log.info("data root %s: train %d COVID-19 + %d Normal available, val %d images; device %s, precision %s",
             data_root, len(train_data.where("COVID-19")), len(train_data.where("Normal")), len(val_data), device,
             precision)
    weights = None if args.encoder_weights in ("none", "", None) else args.encoder_weights
    model = build_model(args.encoder, weights).to(device).to(memory_format=torch.channels_last)
    config = run_config(args, data_root, train_data, val_data, sampler, device, precision)
    if args.init_from is not None and not args.resume:  # a resumed run has the weights and the parent record
        init_from_parent(model, args.init_from, device, config)
    opt_cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return Run(args=args, device=device, precision=precision, val_data=val_data, sampler=sampler, loader=loader,
               model=model, ema=make_ema(model, args.ema_decay),
               loss_fn=DiceBCELoss(lung_weight=args.lung_weight, negative_weight=args.negative_weight),
               optimizer=optimizer,
               scheduler=make_scheduler(optimizer, args.schedule, args.epochs * len(loader), args.warmup_fraction,
                                        args.lr),
               scaler=torch.amp.GradScaler(enabled=precision == "fp16"), config=config)


def train_one_epoch(run: Run, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the recipe's images for this epoch; the mean loss and the speed."""
    run.sampler.set_epoch(epoch)
    run.model.train()
    if freezes_batchnorm(run.config):
        freeze_batchnorm_statistics(run.model)
    t0 = time.perf_counter()
    total, seen = 0.0, 0
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{run.args.epochs}", unit="batch", disable=not progress)
    for x, y in bar:
        x = x.to(run.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(run.device, non_blocking=True)
        with autocast(run.device, run.precision):
            logits = run.model(x)
        loss = run.loss_fn(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.scheduler is not None:
            run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        total += float(loss.detach()) * len(x)
        seen += len(x)
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - t0
    return {"lr": run.optimizer.param_groups[0]["lr"], "train_loss": total / max(seen, 1),
            "train_seconds": round(seconds, 1), "train_img_per_s": round(seen / seconds, 2)}


def train(args: argparse.Namespace) -> Path:
    """Run the recipe; returns the path of the selected checkpoint (``best.pt``)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    run = setup(args, progress)
    checkpoints = Checkpointer(out)
    history, start_epoch, best_key = checkpoints.resume(run) if args.resume else ([], 0, None)
    (out / "config.json").write_text(json.dumps(run.config, indent=2))
    for epoch in range(start_epoch, args.epochs):
        fit = train_one_epoch(run, epoch, progress)
        metrics = validate(run.scored, run.val_data, run.device, run.precision, args.image_size, run.loss_fn,
                           progress=progress)
        key = selection_key(metrics, args.max_normal_p95)
        selected = best_key is None or key > best_key
        best_key = key if selected else best_key
        row = {"epoch": epoch + 1, "lr": fit["lr"], "train_loss": fit["train_loss"], **metrics,
               "train_seconds": fit["train_seconds"], "train_img_per_s": fit["train_img_per_s"], "selected": selected}
        history.append(row)
        checkpoints.save(run, epoch + 1, history, best_key, metrics, selected)
        write_history(history, out)
        plot_history(history, out / "curves.png")
        log.info("epoch %d: %s", epoch + 1, json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                         for k, v in row.items()}))
    return checkpoints.best


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    best = train(args)
    print(f"selected checkpoint: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
