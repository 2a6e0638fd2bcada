"""Training curves from metrics.jsonl (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file (training rows and eval rows alike)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curve(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Loss and logit scale against step, one panel each; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_scale) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_loss.plot(steps, [r["loss"] for r in rows], color="tab:blue")
    ax_loss.set_ylabel("contrastive loss")
    ax_loss.grid(alpha=0.3)
    ax_scale.plot(steps, [r["logit_scale"] for r in rows], color="tab:orange")
    ax_scale.set_ylabel("logit scale (exp)")
    ax_scale.set_xlabel("step")
    ax_scale.grid(alpha=0.3)
    fig.suptitle("clipserve training")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
