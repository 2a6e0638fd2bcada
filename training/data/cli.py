"""`clipserve data`: make or inspect data sets.

    clipserve data synth --out DIR [--n N] [--seed S] [--tuples T] [--image-size 64]
                         [--holdout 0.1] [--partial-captions F] [--objects K]
                         [--caption-attributes colour,shape] [--workers W] [--force] [--quiet]
    clipserve data info DIR

Argument errors exit 2 through argparse; semantic errors raise ValueError, which the
`clipserve` dispatcher turns into `clipserve data: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipserve.training.data import synth

REPORT_BATCH = 128  # the batch size the summary quotes false negatives for


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipserve data", description="make or inspect data sets")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "synth",
        help="generate the synthetic shapes data set (known false negatives)",
        description="Generate a deterministic synthetic image-caption data set: same "
        "arguments, byte-identical files.",
    )
    defaults = synth.SynthConfig()
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument(
        "--n", type=int, default=defaults.n, help="number of items (default %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)"
    )
    p.add_argument(
        "--tuples",
        type=int,
        default=defaults.n_tuples,
        help=f"distinct attribute tuples; 0 = all {synth.FULL_PRODUCT} (default %(default)s). "
        "Fewer tuples per item = more false negatives per batch",
    )
    p.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="pixels (default %(default)s)"
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=defaults.holdout,
        help="fraction of items in test.jsonl (default %(default)s)",
    )
    p.add_argument(
        "--partial-captions",
        type=float,
        default=defaults.partial_captions,
        metavar="FRACTION",
        help="fraction of captions that name only 1-3 of the 4 attributes (under-specified, "
        "like real captions; relevance = the image has every named attribute; default "
        "%(default)s)",
    )
    p.add_argument(
        "--objects",
        type=int,
        default=defaults.objects,
        metavar="K",
        help="objects per image, 1-4, one per quadrant (default %(default)s). Above 1, --tuples "
        "counts distinct scenes and a caption matches an image when every object it "
        "describes is in it",
    )
    p.add_argument(
        "--caption-attributes",
        default="",
        metavar="A,B",
        help="every caption names exactly these attributes (comma-separated, from "
        f"{', '.join(synth.ATTRIBUTES)}; fewer than all): coarse captions, e.g. for a base "
        "model that should learn colour and shape only (default: all)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="render processes (default: one per CPU, max 4)"
    )
    p.add_argument("--force", action="store_true", help="regenerate even if --out is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_synth)

    p = sub.add_parser("info", help="summarise a synth data set directory")
    p.add_argument("dir", help="directory written by `clipserve data synth`")
    p.set_defaults(run=_run_info)
    return parser


def _run_synth(args: argparse.Namespace) -> int:
    config = synth.SynthConfig(
        n=args.n,
        seed=args.seed,
        n_tuples=args.tuples,
        image_size=args.image_size,
        holdout=args.holdout,
        partial_captions=args.partial_captions,
        objects=args.objects,
        caption_attributes=tuple(
            a.strip() for a in args.caption_attributes.split(",") if a.strip()
        ),
    )
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    summary = None if args.force else synth.find_existing(config, args.out)
    if summary is not None:
        print(f"{args.out} already holds this data set; reusing it (--force regenerates)")
    else:
        summary = synth.generate(config, args.out, progress=not args.quiet, workers=args.workers)
        print(
            f"wrote {summary.n_train} train + {summary.n_test} test items over "
            f"{summary.n_tuples} {_unit(config.objects)} to {args.out} in {summary.seconds:.1f} s "
            f"({summary.items_per_s:.0f} items/s)"
        )
    meta = _meta(summary.paths.meta)
    counts = [t["n_train"] for t in meta["tuples"]]
    fn = synth.expected_false_negatives_from_counts(REPORT_BATCH, counts)
    print(
        f"expected false negatives per anchor at batch {REPORT_BATCH}: {fn:.2f} "
        f"(train split, {summary.n_train / summary.n_tuples:.1f} items per "
        f"{'scene' if config.objects > 1 else 'tuple'})"
    )
    matches = meta.get("expected_caption_matches_per_anchor")
    if matches:
        print(
            f"expected images matching a (partial) caption per batch of {REPORT_BATCH}: "
            f"{matches[str(REPORT_BATCH)]:.2f}"
        )
    return 0


def _run_info(args: argparse.Namespace) -> int:
    meta = _meta(synth.SynthPaths.under(args.dir).meta)
    config = meta["config"]
    print(f"{args.dir}: {meta['format']}, {meta['n_train']} train + {meta['n_test']} test items")
    print(
        f"  {meta['n_tuples']} {_unit(config.get('objects', 1))}, seed {config['seed']}, "
        f"{config['image_size']}x{config['image_size']} px"
    )
    for batch, fn in sorted(
        meta["expected_false_negatives_per_anchor"].items(), key=lambda kv: int(kv[0])
    ):
        print(f"  expected false negatives per anchor at batch {batch}: {fn:.2f}")
    for batch, fn in sorted(
        meta.get("expected_caption_matches_per_anchor", {}).items(), key=lambda kv: int(kv[0])
    ):
        print(f"  expected images matching a caption at batch {batch}: {fn:.2f}")
    return 0


def _unit(objects: int) -> str:
    """What `n_tuples` counts: attribute tuples, or scenes when images hold several objects."""
    return f"scenes of {objects} objects" if objects > 1 else "tuples"


def _meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a synth data set directory") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
