"""Retrieval metrics and the `clipserve eval` command.

Instance Recall@K: caption i matches image i only. Semantic Recall@K / mAP: every item whose
`labels` equal the query's labels is relevant (the synthetic data has many such true matches);
when the manifest has `caption_labels` (captions naming only some attributes), caption k and
image a are relevant iff every part of caption k's labels is in image a's (`relevance`).
Rankings sort scores descending with a stable sort, so ties go to the lower gallery index.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipserve.training.data.manifest import ImageTextDataset, Record, read_manifest


def _ranking(scores: np.ndarray) -> np.ndarray:
    """[Q, G] scores -> [Q, G] gallery indices, best first (stable on ties)."""
    return np.argsort(-scores, axis=1, kind="stable")


def _label_ids(q: Sequence[str], g: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[str, int] = {}
    qi = np.array([vocab.setdefault(x, len(vocab)) for x in q], dtype=np.int64)
    gi = np.array([vocab.setdefault(x, len(vocab)) for x in g], dtype=np.int64)
    return qi, gi


def tag_matrix(keys: Sequence[str], vocab: dict[str, int]) -> np.ndarray:
    """[N, V] bool: which "|"-separated parts each key has; new parts are added to `vocab`."""
    rows = [[vocab.setdefault(part, len(vocab)) for part in key.split("|")] for key in keys]
    out = np.zeros((len(keys), len(vocab)), dtype=bool)
    for i, cols in enumerate(rows):
        out[i, cols] = True
    return out


def relevance(
    text_labels: Sequence[str], image_labels: Sequence[str], match: str = "equal"
) -> np.ndarray:
    """[Nt, Ni] bool ground truth: is caption t relevant to image i?

    match "equal": equal label strings. match "subset": every "|"-part of the caption's
    labels is among the image's (a caption naming fewer attributes matches more images).
    """
    if match == "equal":
        qi, gi = _label_ids(text_labels, image_labels)
        return qi[:, None] == gi[None, :]
    if match != "subset":
        raise ValueError(f"match must be 'equal' or 'subset', got {match!r}")
    vocab: dict[str, int] = {}
    t = tag_matrix(text_labels, vocab)
    i = tag_matrix(image_labels, vocab)
    t = np.pad(t, ((0, 0), (0, len(vocab) - t.shape[1])))
    missing = t.astype(np.float32) @ (~i).astype(np.float32).T  # named parts the image lacks
    return missing == 0


def relevance_labels(records: Sequence[Record]) -> tuple[list[str], list[str], str] | None:
    """(caption keys, image keys, match) for `relevance`, or None when labels are missing."""
    if not all(r.labels for r in records):
        return None
    image = [str(r.labels) for r in records]
    if not any(r.caption_labels for r in records):
        return image, image, "equal"
    return [str(r.caption_labels or r.labels) for r in records], image, "subset"


def _direction(
    scores: np.ndarray,
    relevant: np.ndarray | None,
    ks: Sequence[int],
    prefix: str,
) -> dict[str, float]:
    out: dict[str, float] = {}
    order = _ranking(scores)  # [Q, G]
    n_q, n_g = scores.shape
    if n_q == n_g:
        hit_pos = np.argmax(order == np.arange(n_q)[:, None], axis=1)  # rank of the paired item
        for k in ks:
            out[f"{prefix}_R@{k}"] = float(np.mean(hit_pos < k))
        out[f"{prefix}_median_rank"] = float(np.median(hit_pos + 1))
    if relevant is not None:  # [Q, G]
        rel_sorted = np.take_along_axis(relevant, order, axis=1)
        n_rel = relevant.sum(axis=1)
        for k in ks:
            out[f"{prefix}_semantic_R@{k}"] = float(np.mean(rel_sorted[:, :k].any(axis=1)))
        has = n_rel > 0
        precision = np.cumsum(rel_sorted, axis=1) / np.arange(1, n_g + 1)[None, :]
        ap = (precision * rel_sorted).sum(axis=1)[has] / n_rel[has]
        out[f"{prefix}_semantic_mAP"] = float(ap.mean()) if ap.size else float("nan")
        # A random ranking puts a relevant item first with probability n_rel / G.
        out[f"{prefix}_semantic_R@1_chance"] = float(np.mean(n_rel / n_g))
    return out


def retrieval_metrics(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_labels: Sequence[str] | None = None,
    image_labels: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    match: str = "equal",
) -> dict[str, float]:
    """Text->image (t2i) and image->text (i2t) retrieval metrics.

    text_emb [Nt, D], image_emb [Ni, D] (L2-normalised, so dot = cosine). Instance metrics
    (``t2i_R@K``, ``i2t_R@K``, ``*_median_rank``) need Nt == Ni (caption i <-> image i).
    Semantic metrics (``*_semantic_R@K``, ``*_semantic_mAP``, ``*_semantic_R@1_chance``) need
    both label lists; `match` says how they decide relevance (see `relevance`). mAP averages
    over queries with at least one relevant item.
    """
    text_emb = np.asarray(text_emb, dtype=np.float32)
    image_emb = np.asarray(image_emb, dtype=np.float32)
    if text_emb.ndim != 2 or image_emb.ndim != 2 or text_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] with equal D, got {text_emb.shape} and {image_emb.shape}"
        )
    if (text_labels is None) != (image_labels is None):
        raise ValueError("give both text_labels and image_labels, or neither")
    if (
        text_labels is not None
        and image_labels is not None
        and (len(text_labels) != len(text_emb) or len(image_labels) != len(image_emb))
    ):
        raise ValueError("labels must have one entry per embedding row")
    scores = text_emb @ image_emb.T  # [Nt, Ni]
    out = {"n_text": float(len(text_emb)), "n_image": float(len(image_emb))}
    rel = (
        relevance(text_labels, image_labels, match)
        if text_labels is not None and image_labels is not None
        else None
    )
    out |= _direction(scores, rel, ks, "t2i")
    out |= _direction(scores.T, None if rel is None else rel.T, ks, "i2t")
    return out


@torch.no_grad()
def embed_tensors(
    model: Any,
    images: torch.Tensor,
    tokens: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images [N, 3, H, W] and tokens [N, ctx] -> L2-normalised (text, image)."""
    was_training = model.training
    model.eval()
    texts, imgs = [], []
    for s in range(0, len(images), batch_size):
        imgs.append(model.encode_image(images[s : s + batch_size].to(device), normalize=True))
        texts.append(model.encode_text(tokens[s : s + batch_size].to(device), normalize=True))
    model.train(was_training)
    return (
        torch.cat(texts).float().cpu().numpy(),
        torch.cat(imgs).float().cpu().numpy(),
    )


@torch.no_grad()
def embed_dataset(
    model: Any,
    records: Sequence[Record],
    preprocess: Any,
    tokenizer: Any,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every record's caption and image: (text [N, D], image [N, D]), L2-normalised."""
    ds = ImageTextDataset(records, preprocess, tokenizer)
    texts, imgs = [], []
    for s in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(s, min(s + batch_size, len(ds)))]
        t, i = embed_tensors(
            model,
            torch.stack([x[0] for x in items]),
            torch.stack([x[1] for x in items]),
            batch_size,
            device,
        )
        texts.append(t)
        imgs.append(i)
    return np.concatenate(texts), np.concatenate(imgs)


def evaluate_records(
    model: Any, records: Sequence[Record], preprocess: Any, tokenizer: Any, **kw: Any
) -> dict[str, float]:
    text, image = embed_dataset(model, records, preprocess, tokenizer, **kw)
    rel = relevance_labels(records)
    if rel is None:
        return retrieval_metrics(text, image)
    return retrieval_metrics(text, image, rel[0], rel[1], match=rel[2])


def format_table(metrics: dict[str, float]) -> str:
    """Readable two-column table: rows = metric, columns = text->image, image->text."""
    rows = []

    def order(n: str) -> tuple:
        k = n.rsplit("@", 1)[-1]
        return (
            n.startswith("semantic"),
            "chance" in n,
            "mAP" in n,
            "median" in n,
            int(k) if k.isdigit() else 0,
            n,
        )

    names = sorted(
        {k.split("_", 1)[1] for k in metrics if k.startswith(("t2i_", "i2t_"))}, key=order
    )
    rows.append(f"{'metric':<24}{'text->image':>14}{'image->text':>14}")
    for n in names:
        t, i = metrics.get(f"t2i_{n}"), metrics.get(f"i2t_{n}")
        cell = [f"{v:>14.4f}" if v is not None else f"{'-':>14}" for v in (t, i)]
        rows.append(f"{n:<24}{cell[0]}{cell[1]}")
    rows.append(f"({int(metrics['n_text'])} captions, {int(metrics['n_image'])} images)")
    if "t2i_semantic_R@1_chance" in metrics:
        rows.append(
            "semantic_R@1_chance = mean fraction of the gallery sharing the query's labels "
            "(what a random ranking scores)."
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clipserve eval", description="Retrieval metrics of a checkpoint on a manifest."
    )
    parser.add_argument("--checkpoint", required=True, help="clipserve training checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="manifest (.jsonl or .csv)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from clipserve.training.model import load_checkpoint

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    records = read_manifest(args.data)
    loaded, state = load_checkpoint(args.checkpoint, device=args.device)
    metrics = evaluate_records(
        loaded.model,
        records,
        loaded.preprocess_val,
        loaded.tokenizer,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"model {state['model_name']} (step {state.get('step')}) on {args.data}")
    print(format_table(metrics))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Flat: metric keys at the top level, next to what produced them.
        payload = {
            **metrics,
            "checkpoint": str(args.checkpoint),
            "data": str(args.data),
            "model_name": state["model_name"],
            "step": state.get("step"),
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
