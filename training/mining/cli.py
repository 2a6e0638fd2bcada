"""`clipserve mine`: hard negatives and hard batches for a training manifest.

    clipserve mine --data train.jsonl (--checkpoint ckpt.pt | --bundle DIR) --out DIR
                   [--rank-start 3] [--rank-window 30] [--negatives 3] [--group-size 16]
                   [--filter none|margin|guide|duplicate|cluster|lexical|oracle] [--margin M]
                   [--margin-mode absolute|relative] [--guide-checkpoint PT | --guide-bundle DIR]
                   [--clusters C] [--cluster-top 1] [--cluster-text-neighbours M]
                   [--lexical] [--lexical-neighbours 10] [--visual-ratio 1.5]
                   [--lexical-votes 0.5] [--seed 0] [--quiet]

Argument errors exit 2 through argparse; a bad manifest, model or option raises ValueError,
which the `clipserve` dispatcher reports as ``clipserve mine: error: ...`` (exit 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from clipserve.training.losses.config import MARGIN_MODES, LossConfig
from clipserve.training.mining.filters import OFFLINE_ESTIMATORS
from clipserve.training.mining.mine import MineConfig, config_summary, mine, write_mined

EPILOG = """\
what it writes (OUT):
  negatives.jsonl   per anchor: its mined negatives (ids), their ranks and scores, and the
                    candidates the filter removed as suspected false negatives
  batch_plan.json   neighbourhood groups for hard batches (every item exactly once)
  clusters.json     k-means centres and each item's nearest centres (with --clusters), and
                    each caption's cells (with --cluster-text-neighbours)
  lexical.json      each caption's visual words and each image's nearest images, for the
                    lexical estimator (with --lexical or --filter lexical)
  mine.json         settings, corpus size, throughput and, when the manifest has labels,
                    the filter's false-negative precision / recall / F1
  index/            the embedded Qdrant index the neighbours came from (scratch)

use them in training:
  [sampling]
  mode = "mined_negatives"   # or "hard_batches"
  mined = "OUT"

examples:
  clipserve mine --data work/synth/train.jsonl --checkpoint work/train/checkpoints/latest.pt \\
      --out work/mined --filter margin --margin 0.05
  clipserve mine --data train.jsonl --bundle work/bundle --out work/mined \\
      --filter guide --guide-checkpoint base.pt --clusters 64
  clipserve mine --data train.jsonl --checkpoint base.pt --out work/mined --lexical
"""


def _parser() -> argparse.ArgumentParser:
    d = MineConfig()
    p = argparse.ArgumentParser(
        prog="clipserve mine",
        description="Embed a training manifest with a model, index it in the embedded Qdrant "
        "engine, and write mined hard negatives (neighbour ranks [p, p+m), suspected false "
        "negatives filtered out) and a hard-batch plan (neighbourhoods grouped together).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="training manifest (.jsonl or .csv)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="clipserve checkpoint (.pt) to embed with")
    model.add_argument("--bundle", help="ONNX model bundle directory to embed with")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    g = p.add_argument_group("negatives and batches")
    g.add_argument("--rank-start", type=int, default=d.rank_start, metavar="P",
                   help="skip the P nearest neighbours, where false negatives crowd (default %(default)s)")  # fmt: skip
    g.add_argument("--rank-window", type=int, default=d.rank_window, metavar="M",
                   help="candidates are neighbour ranks [P, P+M) (default %(default)s)")  # fmt: skip
    g.add_argument("--negatives", type=int, default=d.negatives, metavar="K",
                   help="negatives kept per anchor after filtering (default %(default)s)")  # fmt: skip
    g.add_argument("--group-size", type=int, default=d.group_size,
                   help="items per hard-batch neighbourhood (default %(default)s)")  # fmt: skip
    g.add_argument("--clusters", type=int, default=d.clusters,
                   help="k-means centres for the cluster filter/estimator; 0 = none (default %(default)s)")  # fmt: skip
    g.add_argument("--cluster-top", type=int, default=d.cluster_top,
                   help="nearest centres recorded per item (default %(default)s)")  # fmt: skip
    g.add_argument("--cluster-text-neighbours", type=int, default=d.cluster_text_neighbours, metavar="M",
                   help="cluster: a caption also suspects images in the cells of the images of "
                   "its M nearest captions, which reach captions that name only some "
                   "attributes; 0 = its own image's cell only (default %(default)s)")  # fmt: skip
    g.add_argument("--lexical", action="store_true",
                   help="also write lexical.json, what the lexical estimator reads in training "
                   "(implied by --filter lexical)")  # fmt: skip
    g.add_argument("--lexical-neighbours", type=int, default=d.lexical_neighbours, metavar="K",
                   help="lexical: an image's K nearest images vote with their captions; 0 = "
                   "its own caption only (default %(default)s)")  # fmt: skip
    g.add_argument("--visual-ratio", type=float, default=d.visual_ratio, metavar="R",
                   help="lexical: a word counts when its captions' images sit R times further "
                   "from the corpus mean than random ones; 0 = every word (default %(default)s)")  # fmt: skip
    g.add_argument("--seed", type=int, default=d.seed, help="grouping/k-means seed (default %(default)s)")  # fmt: skip
    f = p.add_argument_group("false-negative filter (the loss's estimators, offline)")
    f.add_argument("--filter", choices=OFFLINE_ESTIMATORS, default="none",
                   help="margin: the mining model's own scores; guide: a guide model's; "
                   "duplicate: same normalised caption or image hash; cluster: same k-means "
                   "centre; lexical: the image's caption (or most of its neighbours') holds "
                   "every visual word of the caption; oracle: the manifest's labels (for "
                   "measuring). Default %(default)s")  # fmt: skip
    f.add_argument("--margin", type=float, default=0.05,
                   help="margin/guide: suspected when score > pos - margin (absolute) or "
                   "pos - |pos|*margin (relative); default %(default)s")  # fmt: skip
    f.add_argument("--margin-mode", choices=MARGIN_MODES, default="absolute")
    f.add_argument("--hash-max-distance", type=int, default=0,
                   help="duplicate: image hashes within this many bits match (default %(default)s)")  # fmt: skip
    f.add_argument("--lexical-votes", type=float, default=LossConfig.lexical_votes, metavar="V",
                   help="lexical: the fraction of the image's neighbours whose captions must "
                   "hold the words (default %(default)s)")  # fmt: skip
    guide = f.add_mutually_exclusive_group()
    guide.add_argument("--guide-checkpoint", help="guide model: a clipserve checkpoint")
    guide.add_argument("--guide-bundle", help="guide model: an ONNX bundle directory")
    p.add_argument("--index-dir", help="where the Qdrant index goes (default OUT/index)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from clipserve.training.data.manifest import read_manifest
    from clipserve.training.mining.embed import embed_with_bundle, embed_with_checkpoint
    from clipserve.training.sampling.side_inputs import build_item_table

    cfg = MineConfig(
        rank_start=args.rank_start,
        rank_window=args.rank_window,
        negatives=args.negatives,
        group_size=args.group_size,
        clusters=args.clusters,
        cluster_top=args.cluster_top,
        cluster_text_neighbours=args.cluster_text_neighbours,
        lexical=args.lexical or args.filter == "lexical",
        lexical_neighbours=args.lexical_neighbours,
        visual_ratio=args.visual_ratio,
        seed=args.seed,
    )
    filter_cfg = LossConfig(
        estimator=args.filter,
        margin=args.margin,
        margin_mode=args.margin_mode,
        hash_max_distance=args.hash_max_distance,
        lexical_votes=args.lexical_votes,
    )
    if args.filter == "guide" and not (args.guide_checkpoint or args.guide_bundle):
        raise ValueError("--filter guide needs --guide-checkpoint or --guide-bundle")
    if args.filter == "cluster" and not args.clusters:
        raise ValueError("--filter cluster needs --clusters > 0 (the k-means centres)")
    for path in (args.data, args.checkpoint, args.guide_checkpoint):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist")
    for path in (args.bundle, args.guide_bundle):
        if path and not Path(path).is_dir():
            raise FileNotFoundError(f"bundle directory {path} does not exist")
    progress = not args.quiet
    records = read_manifest(args.data)

    def embed(checkpoint: str | None, bundle: str | None):
        if checkpoint:
            return embed_with_checkpoint(checkpoint, records, progress=progress)
        return embed_with_bundle(bundle, records, progress=progress)

    t0 = time.perf_counter()
    text, image = embed(args.checkpoint, args.bundle)
    embed_s = time.perf_counter() - t0
    guide = None
    if args.guide_checkpoint or args.guide_bundle:
        import torch

        gt, gi = embed(args.guide_checkpoint, args.guide_bundle)
        guide = (torch.from_numpy(gi), torch.from_numpy(gt))
    table = build_item_table(records, image_keys=args.filter == "duplicate", guide=guide)
    out = Path(args.out)
    index_dir = args.index_dir or out / "index"
    captions = [r.caption for r in records]
    mined, _ = mine(text, image, table, cfg, filter_cfg, index_dir, progress, captions)
    summary = config_summary(cfg, filter_cfg) | {
        "data": str(args.data),
        "model": str(args.checkpoint or args.bundle),
        "guide": args.guide_checkpoint or args.guide_bundle,
        "embed_s": round(embed_s, 3),
        "embed_items_per_s": round(len(records) / max(embed_s, 1e-9), 1),
    }
    write_mined(out, records, mined, summary)
    s = mined.stats
    print(
        f"mined {s['n_items']} items: embedded at {summary['embed_items_per_s']:.0f} items/s, "
        f"indexed and searched at {s['queries_per_s']:.0f} queries/s "
        f"({s['total_s'] + embed_s:.1f} s in all)"
    )
    kept = sum(len(n) for n in mined.negatives)
    print(
        f"negatives: {kept} kept from ranks [{cfg.rank_start}, {cfg.rank_start + cfg.rank_window}), "
        f"filter {args.filter!r} flagged {s['window_suspected_rate']:.1%} of candidates; "
        f"{s['anchors_short_of_negatives']} anchors have fewer than {cfg.negatives}"
    )
    if "filter_f1" in s:
        print(
            f"filter vs labels: {s['window_true_fn_rate']:.1%} of candidates are true false "
            f"negatives; precision {s['filter_precision']:.3f}, recall "
            f"{s['filter_recall']:.3f}, F1 {s['filter_f1']:.3f}"
        )
    print(f"hard-batch plan: {len(mined.groups)} groups of up to {cfg.group_size}")
    if mined.vocabulary is not None:
        print(f"lexical: {len(mined.vocabulary)} visual words: {' '.join(mined.vocabulary[:30])}")
    print(f"wrote {out}/negatives.jsonl, batch_plan.json, mine.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
