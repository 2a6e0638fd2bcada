"""The demo's client side: fill the index through `Upsert`, query it through `Query`, and show
what came back as a table, a semantic R@1 over every held-out caption, and a PNG contact sheet.

Everything here goes through the gRPC API (`ClipServeClient`), exactly as a user's code would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm import tqdm

from clipserve.index.base import Hit
from clipserve.serving.client import ClipServeClient

UPSERT_BATCH = 64


def pick_queries(records: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n records with distinct labels, spread evenly over the held-out set (deterministic)."""
    seen: set[str] = set()
    distinct = []
    for r in records:
        labels = str(r.get("labels", ""))
        if labels not in seen:
            seen.add(labels)
            distinct.append(r)
    step = max(1, len(distinct) // max(1, n))
    return distinct[::step][:n]


def upsert_images(
    client: ClipServeClient, records: Sequence[dict[str, Any]], data_dir: Path
) -> list[str]:
    ids: list[str] = []
    for start in tqdm(range(0, len(records), UPSERT_BATCH), desc="Upsert", unit="batch"):
        batch = records[start : start + UPSERT_BATCH]
        items = [
            (
                (data_dir / r["image"]).read_bytes(),
                {
                    "item_id": r["id"],
                    "caption": r["caption"],
                    "labels": r.get("labels", ""),
                    "image": r["image"],
                },
            )
            for r in batch
        ]
        ids += client.upsert(items)
    return ids


def semantic_r1(client: ClipServeClient, records: Sequence[dict[str, Any]]) -> float:
    """Fraction of held-out captions whose top-1 image has the caption's labels."""
    hits = 0
    for r in tqdm(records, desc="Query (all held-out captions)", unit="q"):
        top = client.query(text=r["caption"], top_k=1)
        hits += bool(top) and top[0].payload.get("labels") == r.get("labels")
    return hits / max(1, len(records))


def _format_table(rows: list[tuple[str, list[Hit], str]], width: int = 44) -> str:
    lines = [f"{'query':<{width}}  {'top results (score  caption)':<58} hit?", "-" * (width + 66)]
    for query, hits, labels in rows:
        for i, h in enumerate(hits):
            left = query[:width] if i == 0 else ""
            mark = ("HIT " if h.payload.get("labels") == labels else "miss") if i == 0 else ""
            ok = "*" if h.payload.get("labels") == labels else " "
            cap = str(h.payload.get("caption", ""))[:50]
            lines.append(f"{left:<{width}}  {h.score:5.3f}{ok} {cap:<51} {mark}")
        lines.append("")
    return "\n".join(lines)


def contact_sheet(
    rows: list[tuple[str, list[Hit], str]], data_dir: Path, out: Path, cell: int = 96
) -> Path:
    """One row per query: its text, then its top images (green frame = same labels)."""
    text_w, pad = 300, 6
    k = max((len(h) for _, h, _ in rows), default=0)
    sheet = Image.new(
        "RGB", (text_w + k * (cell + pad) + pad, len(rows) * (cell + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for r, (query, hits, labels) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.multiline_text((pad, y + cell // 3), _wrap(query, 44), fill="black")
        for c, h in enumerate(hits):
            x = text_w + c * (cell + pad)
            img = (
                Image.open(data_dir / str(h.payload["image"]))
                .convert("RGB")
                .resize((cell - 6, cell - 6))
            )
            colour = "green" if h.payload.get("labels") == labels else "red"
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=colour, width=3)
            sheet.paste(img, (x + 3, y + 3))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _wrap(text: str, width: int) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join([*lines, cur])


def report_queries(
    *,
    target: str,
    test_records: Sequence[dict[str, Any]],
    data_dir: Path,
    out_dir: Path,
    n_queries: int,
    top_k: int,
) -> str:
    with ClipServeClient(target) as client:
        client.wait_ready(timeout_s=120)
        info = client.info()
        print(
            f"model {info.model_name} version {info.model_version} dim {info.dim} "
            f"on {info.backend}/{info.device}, index {info.index_kind}"
        )
        ids = upsert_images(client, test_records, data_dir)
        again = upsert_images(client, test_records[:8], data_dir)
        if again != ids[:8]:
            raise RuntimeError("re-upsert returned new ids: content ids are not deterministic")
        print(
            f"upserted {len(ids)} held-out images ({len(set(ids))} distinct ids); "
            "re-upserting 8 of them returned the same ids (stored once)"
        )

        rows = []
        for r in pick_queries(test_records, n_queries):
            rows.append(
                (r["caption"], client.query(text=r["caption"], top_k=top_k), r.get("labels", ""))
            )
        print()
        print(_format_table(rows))
        r1 = semantic_r1(client, test_records)
    sheet = contact_sheet(rows, data_dir, out_dir / "contact_sheet.png")
    top1 = sum(h[0].payload.get("labels") == lab for _, h, lab in rows if h)
    return (
        f"table queries: top-1 hit {top1}/{len(rows)}\n"
        f"served (ONNX + Qdrant) semantic text->image R@1 over {len(test_records)} held-out "
        f"captions: {r1:.3f}\ncontact sheet: {sheet}"
    )
