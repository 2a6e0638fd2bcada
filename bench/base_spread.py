"""How the benchmark's answer moves with the base: one fn_benchmark.json per base, side by side.

    python bench/base_spread.py BASE_NAME=PATH/fn_benchmark.json [...] [--metric KEY]
        [--configs random mined+guide/drop random+guide/drop]

Where a from-scratch base lands after its 2,000 steps decides how much fine-tuning has left to
learn. `bench_train.py --base-seed N --work DIR` trains the base from another seed on the same
data; run the configurations to compare there (`--only ...`), then give each base's results
here. Prints, per setting, each configuration's mean ± std over seeds on every base and its
gain over the baseline (`random`) on the same base.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt  # noqa: E402

DEFAULT_CONFIGS = ("random", "mined+guide/drop", "random+guide/drop")


def summarise(
    runs: dict[str, list[dict[str, Any]]], configs: Sequence[str], metric: str
) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(setting, config, base) -> (mean, std, seeds) of `metric` over seeds, as the
    benchmark's own report computes them (`bench_train.summarise`)."""
    out = {}
    for base, rows in runs.items():
        mine = [r for r in rows if r["config"] in configs and metric in r["metrics"]]
        for (setting, config), stats in bt.summarise(mine).items():
            mean, std = stats[metric]
            out[(setting, config, base)] = (mean, std, int(stats["_seeds"][0]))
    return out


def table(
    summary: dict[tuple[str, str, str], tuple[float, float, int]],
    bases: Sequence[str],
    configs: Sequence[str],
    baseline: str = "random",
) -> str:
    lines = []
    for setting in sorted({k[0] for k in summary}):
        lines += [f"\n{setting}", "| configuration | " + " | ".join(bases) + " |"]
        lines.append("|" + "---|" * (len(bases) + 1))
        for config in configs:
            cells = []
            for base in bases:
                got = summary.get((setting, config, base))
                ref = summary.get((setting, baseline, base))
                if got is None:
                    cells.append("-")
                    continue
                cell = f"{got[0]:.3f} ± {got[1]:.3f}"
                if ref is not None and config != baseline:
                    cell += f" ({100 * (got[0] - ref[0]):+.1f})"
                cells.append(cell)
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bases", nargs="+", metavar="NAME=JSON", help="a base's fn_benchmark.json")
    p.add_argument("--metric", default="t2i_semantic_R@1")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    args = p.parse_args(argv)
    runs = {}
    for item in args.bases:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"{item!r}: give NAME=PATH to an existing fn_benchmark.json")
        runs[name] = json.loads(Path(path).read_text())
    print(f"{args.metric}, mean ± std over seeds (points over random on the same base):")
    print(table(summarise(runs, args.configs, args.metric), list(runs), args.configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
