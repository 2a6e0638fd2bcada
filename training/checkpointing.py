"""Run state of `clipserve train`: what goes into ``checkpoints/latest.pt`` and how a run resumes.

latest.pt is a clipserve checkpoint (written atomically by `model.save_checkpoint`, so
`model.load_checkpoint` and export read its weights) that also holds what resuming needs: the
optimizer and GradScaler state, the step, the RNG states, time spent so far, the last loss
and eval metrics, and the run's config. A checkpoint is resumed only by the same run: one
whose identity fields (`RUN_IDENTITY`) match the current config.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipserve.training.config import TrainConfig
from clipserve.training.model import save_checkpoint

# Fields whose change makes a checkpoint in output_dir belong to a different run.
RUN_IDENTITY = {
    "model": None,
    "optim": None,
    "loss": None,
    "sampling": None,
    "data": ("train", "batch_size", "augment"),
    "run": ("seed",),
}


@dataclass(frozen=True)
class Progress:
    """Where a run stands: what a resumed run continues from."""

    step: int = 0
    elapsed: float = 0.0  # wall seconds of the training loop, over all sessions
    cpu_s: float = 0.0  # CPU seconds of the training loop, over all sessions
    last_loss: float | None = None
    eval_metrics: dict[str, float] | None = None


# ---------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- run identity


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The `RUN_IDENTITY` fields of a config dict, flattened to ``section.key``."""
    out = {}
    for section, keys in RUN_IDENTITY.items():
        values = config.get(section, {})
        for k, v in values.items():
            if keys is None or k in keys:
                out[f"{section}.{k}"] = list(v) if isinstance(v, tuple | list) else v
    return out


def _default_config(cfg: TrainConfig) -> dict[str, Any]:
    """cfg's dict with every section but data at its defaults (data.train has none)."""
    out = cfg.to_dict()
    for f in dataclasses.fields(cfg):
        if f.name != "data":
            out[f.name] = dataclasses.asdict(f.default_factory())  # type: ignore[misc,operator]
    return out


def check_same_run(saved: dict[str, Any], cfg: TrainConfig, ckpt: Path) -> None:
    """Raise ValueError naming the differing fields when `saved` (a checkpoint's config) belongs
    to a different run than `cfg`."""
    a, b = run_identity(saved), run_identity(cfg.to_dict())
    # A field the saved config lacks was added since; it had its default then.
    defaults = run_identity(_default_config(cfg))
    a = {k: a.get(k, defaults.get(k)) for k in a.keys() | b.keys()}
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        details = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise ValueError(
            f"{ckpt} was written by a different run ({details}). "
            "Use a fresh run.output_dir, or delete the checkpoint to start over."
        )


# ---------------------------------------------------------------------------- save / resume


def read_run_state(ckpt_path: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The state saved at `ckpt_path` (None when there is none), checked to be this run's."""
    if not ckpt_path.exists():
        return None
    saved: dict[str, Any] | None = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert saved is not None
    check_same_run(saved.get("config", {}), cfg, ckpt_path)
    return saved


def save_run_state(
    path: Path,
    *,
    cfg: TrainConfig,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    total_steps: int,
    steps_per_epoch: int,
) -> None:
    """Write latest.pt: weights plus everything `restore_run_state` needs. Captures the RNG
    states as they are now."""
    step = progress.step
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "scheduler": {"step": step, "warmup_steps": cfg.optim.warmup_steps},
            "step": step,
            "total_steps": total_steps,
            "epoch": step / steps_per_epoch,
            "rng": rng_state(),
            "model_name": cfg.model.name,
            "pretrained": cfg.model.pretrained,
            "config": cfg.to_dict(),
            "finished": step >= total_steps,
            "elapsed": progress.elapsed,
            "cpu_s": progress.cpu_s,
            "last_loss": progress.last_loss,
            "eval": progress.eval_metrics,
        },
    )


def restore_run_state(
    saved: dict[str, Any],
    model: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> Progress:
    """Load `saved` (from `read_run_state`) into the model, optimizer, scaler and the global
    RNGs; returns where the run stood."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    return Progress(
        step=saved["step"],
        elapsed=saved.get("elapsed", 0.0),
        cpu_s=saved.get("cpu_s", 0.0),
        last_loss=saved.get("last_loss"),
        eval_metrics=saved.get("eval"),
    )


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
