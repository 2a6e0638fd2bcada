"""bench/bench_train.py's worker processes: every run once, in plan order, resumable.

A real (micro-sized) benchmark in a temporary directory: base model, mining, then the runs in
two worker processes that share one queue of run-directory claims."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"
CONFIGS = ["random", "hard", "hard+guide/drop"]


def _bench(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"),
        "--out", str(tmp_path / "out"), "--model", "clipserve-micro", "--batch", "16",
        "--data-scale", "0.05", "--base-steps", "3", "--steps", "2", "--seeds", "2",
        "--settings", "high-fn", "--only", *CONFIGS, "--workers", "2", "--step-reps", "0",
        "--detect-batches", "0", "--base-seed", "1",  # the workers must get these too
        "--base-captions", "coarse",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_low_fn_plan_holds_every_filtered_recipe_of_high_fn_beside_its_sampling() -> None:
    # "No harm where false negatives are rare" must be shown for the recommended recipes:
    # every guide/drop configuration of the high-FN plan, and its unfiltered sampling.
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train as bt

    high = {s.name: s for s in bt.high_fn_runs() if not s.extra}
    low = {s.name for s in bt.low_fn_runs() if not s.extra}
    for name, spec in high.items():
        if name.endswith("+guide/drop"):
            assert name in low, name
            assert {"hard_batches": "hard", "mined_negatives": "mined"}.get(
                spec.mode, "random"
            ) in low


def _keys(path: Path) -> list[tuple[str, int]]:
    return [(r["config"], r["seed"]) for r in json.loads(path.read_text())]


def test_committed_results_do_not_count_as_done(tmp_path: Path) -> None:
    """A fresh clone has docs/results filled in: the benchmark must still run everything."""
    out = tmp_path / "out"
    out.mkdir()
    fake = [{"setting": "high-fn", "config": c, "seed": s, "metrics": {}} for s in range(2) for c in CONFIGS]  # fmt: skip
    (out / "fn_benchmark.json").write_text(json.dumps(fake))
    assert "6 runs in 2 worker processes" in _bench(tmp_path).stdout
    rows = json.loads((out / "fn_benchmark.json").read_text())
    assert all("t2i_semantic_R@1" in r["metrics"] for r in rows) and len(rows) == 6


def test_workers_run_each_run_once_and_resume(tmp_path: Path) -> None:
    proc = _bench(tmp_path)
    assert "6 runs in 2 worker processes" in proc.stdout
    results = tmp_path / "out" / "fn_benchmark.json"
    journal = tmp_path / "work" / "results" / "fn_benchmark.json"
    # Seed-major plan order, each run exactly once, though two processes finished them.
    assert _keys(results) == [(c, s) for s in range(2) for c in CONFIGS]
    assert _keys(journal) == _keys(results)
    assert not (journal.parent / "shards").exists()
    assert (tmp_path / "out" / "fn_benchmark.md").is_file()
    base_data = json.loads((tmp_path / "work" / "data" / "base" / "synth.json").read_text())
    assert base_data["config"]["caption_attributes"] == ["shape", "colour"]

    # Nothing left: a second start trains nothing, and its report says whose runs it shows.
    assert "worker processes" not in _bench(tmp_path).stdout
    header = (tmp_path / "out" / "fn_benchmark.md").read_text().splitlines()[0]
    assert "(6 of the 6 runs were done by an earlier invocation)" in header

    # An interrupted benchmark: one run missing from the results, its claim left behind by
    # the dead worker, and another run finished only in a worker's shard file.
    rows = json.loads(journal.read_text())
    lost, in_shard = rows.pop(4), rows.pop(1)
    journal.write_text(json.dumps(rows))
    results.unlink()
    shard = journal.parent / "shards" / "w0"
    shard.mkdir(parents=True)
    (shard / "fn_benchmark.json").write_text(json.dumps([in_shard]))
    proc = _bench(tmp_path)
    assert "1 runs in 1 worker processes" in proc.stdout
    assert f"{lost['config']:28s} seed {lost['seed']}" in proc.stdout
    assert _keys(results) == [(c, s) for s in range(2) for c in CONFIGS]


def test_base_seed_gives_the_base_its_own_start(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--base-seed: where a from-scratch base lands is measured by training it from other
    seeds on the same data."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train as bt

    monkeypatch.setattr(bt, "MODEL", "clipserve-micro")
    monkeypatch.setattr(bt, "BATCH", 16)
    monkeypatch.setattr(bt, "BASE_DATA", bt._scaled(bt.BASE_DATA, 0.02))
    weights = {}
    for seed in (0, 1):
        ckpt, cached = bt.base_model(tmp_path / str(seed), steps=2, seed=seed)
        assert not cached
        config = json.loads((tmp_path / str(seed) / "base" / "config.json").read_text())
        assert config["run"]["seed"] == seed
        weights[seed] = torch.load(ckpt, map_location="cpu", weights_only=False)
    a, b = (w["model"] for w in weights.values())
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_default_plan_is_the_issues_two_settings() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train as bt

    assert bt.DEFAULT_SETTINGS == ("high-fn", "low-fn")
    multi, runs = bt.SETTINGS["multi-object"]
    assert multi.objects == 2 and multi.partial_captions > 0
    assert [s.name for s in runs() if s.baseline] == ["random"]


def test_mining_is_cached_until_its_options_change(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The mined files of an earlier invocation are reused only when they were mined with
    the options the benchmark asks for now (a changed option re-mines)."""
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_train as bt

    from clipserve.training.data import synth

    monkeypatch.setattr(bt, "MODEL", "clipserve-micro")
    monkeypatch.setattr(bt, "BATCH", 16)
    monkeypatch.setattr(bt, "BASE_DATA", bt._scaled(bt.BASE_DATA, 0.02))
    base, _ = bt.base_model(tmp_path, steps=1)
    cfg = synth.SynthConfig(n=80, seed=3, n_tuples=20, holdout=0.2, partial_captions=0.5)
    data = synth.generate(cfg, tmp_path / "target", progress=False, workers=1).paths
    mined = bt.mine_target(tmp_path, "high-fn", data.train, base, {"none"})["none"]
    first = (mined / "mine.json").stat().st_mtime_ns
    cells = json.loads((mined / "clusters.json").read_text())["caption_cells"]
    assert len(cells[0]) == 1 + bt.CLUSTER_TEXT_NEIGHBOURS
    bt.mine_target(tmp_path, "high-fn", data.train, base, {"none"})
    assert (mined / "mine.json").stat().st_mtime_ns == first  # same options: reused
    monkeypatch.setattr(bt, "CLUSTER_TEXT_NEIGHBOURS", 2)
    bt.mine_target(tmp_path, "high-fn", data.train, base, {"none"})
    assert json.loads((mined / "mine.json").read_text())["mine"]["cluster_text_neighbours"] == 2
    assert len(json.loads((mined / "clusters.json").read_text())["caption_cells"][0]) == 3
