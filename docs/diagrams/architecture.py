"""Draws docs/architecture.png: data -> training -> bundle -> serving -> index, and where each
part runs when scaled out. Regenerate with `.venv/bin/python docs/diagrams/architecture.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# (x, y, title, lines, colour): the main line left to right, the clients below serving.
BOXES: dict[str, tuple[float, float, str, str, str]] = {
    "data": (
        0.0,
        2.0,
        "data",
        "image-caption manifests\n(JSONL + images)\nclipserve data synth",
        "#dbe9f6",
    ),
    "train": (
        3.0,
        2.0,
        "training",
        "clipserve mine -> train\nopen_clip + torch\ntorchrun, all-gathered\nnegatives (k8s Job)",
        "#fde2c8",
    ),
    "bundle": (
        6.0,
        2.0,
        "bundle",
        "clipserve export\nimage.onnx, text.onnx,\ntokenizer, manifest.json\n+ Triton repository",
        "#e4f2d9",
    ),
    "serve": (
        9.0,
        2.0,
        "serving",
        "clipserve serve (gRPC)\nONNX Runtime CPU/CUDA\nor Triton; health,\nmetrics, API key",
        "#efe0f5",
    ),
    "index": (
        12.0,
        2.0,
        "index",
        "Qdrant\nembedded (qdrant_edge)\nor a server / cluster\n(shards x replicas)",
        "#f9e0e0",
    ),
    "clients": (
        9.0,
        -0.4,
        "clients",
        "Python / Node.js / any gRPC\nEmbed, Upsert, Query,\ncollections, aliases",
        "#eeeeee",
    ),
}
ARROWS = [
    ("data", "train", "pairs"),
    ("train", "bundle", "checkpoint"),
    ("bundle", "serve", "mounted\nread-only"),
    ("serve", "index", "vectors\n+ payload"),
    ("clients", "serve", "gRPC clipserve.v1"),
]
W, H = 2.2, 1.5


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(14, 4.8))
    for x, y, title, lines, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.05", fc=colour, ec="#333"))
        ax.text(x + W / 2, y + H - 0.2, title, ha="center", va="top", fontsize=12, weight="bold")
        ax.text(x + W / 2, y + H / 2 - 0.2, lines, ha="center", va="center", fontsize=8.5)
    for a, b, label in ARROWS:
        (xa, ya, *_), (xb, yb, *_) = BOXES[a], BOXES[b]
        if ya == yb:  # left to right
            start, end = (xa + W + 0.05, ya + H / 2), (xb - 0.05, yb + H / 2)
            text_at = ((start[0] + end[0]) / 2, start[1] + 0.12)
        else:  # clients up into serving
            start, end = (xa + W / 2, ya + H + 0.05), (xb + W / 2, yb - 0.05)
            text_at = (start[0] + 0.1, (start[1] + end[1]) / 2)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, lw=1.5))
        ax.text(*text_at, label, ha="center" if ya == yb else "left", va="bottom", fontsize=7.5)
    ax.text(
        0.0, -0.3,
        "one machine: make demo (embedded Qdrant)\n"
        "scaled out: deploy/compose, deploy/k8s\n(Jobs for mine/train/export/index,\n"
        "Deployment + HPA for serving,\nQdrant Helm chart, optional Triton)",
        fontsize=8.5, va="bottom", family="monospace",
    )  # fmt: skip
    ax.set_xlim(-0.2, 14.4)
    ax.set_ylim(-0.6, 3.7)
    ax.axis("off")
    ax.set_title("clipserve: data -> training -> bundle -> serving -> index", fontsize=13)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "architecture.png"
    draw(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
