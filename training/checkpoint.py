"""Checkpoints of a training run: ``last.pt`` for ``--resume`` and ``best.pt`` for export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from training.run import Run

log = logging.getLogger("training.checkpoint")


class Checkpointer:
    """``last.pt`` after every epoch (all state, for ``--resume``) and ``best.pt`` for the selected
    epoch (the scored weights, for export)."""

    def __init__(self, out: Path):
        self.last, self.best = out / "last.pt", out / "best.pt"

    def save(self, run: Run, epoch: int, history: list[dict[str, Any]], best_key: tuple[int, float] | None,
             metrics: dict[str, float], selected: bool) -> None:
        if selected:
            torch.save({"model": run.scored.state_dict(), "config": run.config, "epoch": epoch, "metrics": metrics},
                       self.best)
        torch.save({"model": run.model.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
                    "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
                    "scaler": run.scaler.state_dict(), "epoch": epoch, "history": history,
                    "best_key": list(best_key) if best_key else None, "config": run.config}, self.last)

    def resume(self, run: Run) -> tuple[list[dict[str, Any]], int, tuple[int, float] | None]:
        """Restore ``run`` from ``last.pt``: (history, epochs done, best selection key)."""
        if not self.last.exists():
            raise SystemExit(f"--resume: no checkpoint at {self.last}")
        state = torch.load(self.last, map_location=run.device, weights_only=False)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler is not None and state.get("scheduler"):
            restore_schedule(run, state)
        run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        for key in ("parent", "rescheduled"):  # facts about the run's past, not its arguments
            if key in state["config"] and key not in run.config:
                run.config[key] = state["config"][key]
        log.info("resumed from %s after epoch %d", self.last, state["epoch"])
        return state["history"], state["epoch"], tuple(state["best_key"]) if state.get("best_key") else None


def restore_schedule(run: Run, state: dict[str, Any]) -> None:
    """Continue the saved schedule; when ``--epochs`` changed on resume, continue the new schedule
    (built for the new length) from the same step, so a run can be shortened or extended."""
    saved_epochs = state["config"]["epochs"]
    if saved_epochs == run.args.epochs:
        run.scheduler.load_state_dict(state["scheduler"])
        return
    done = state["scheduler"]["last_epoch"]
    run.scheduler._step_count = state["scheduler"]["_step_count"]  # past 1: no "step before optimizer" warning
    run.scheduler.last_epoch = done - 1
    run.scheduler.step()  # sets the optimizer's lr to the new schedule's value at step ``done``
    run.config["rescheduled"] = {"after_epoch": state["epoch"], "from_epochs": saved_epochs}
    log.info("schedule changed from %d to %d epochs after epoch %d", saved_epochs, run.args.epochs, state["epoch"])
