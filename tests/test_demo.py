"""`clipserve demo` end to end on a micro model: every stage runs for real (synthetic data,
training, eval, ONNX export, `clipserve serve` as a subprocess, Upsert/Query over gRPC), and a
second run reuses what the first produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from clipserve.cli.demo import main as demo_main
from clipserve.index.embedded.edge import EdgeIndex

REPO = Path(__file__).resolve().parents[1]
MICRO = [
    "model.name=clipserve-micro",
    "optim.epochs=1",
    "optim.warmup_steps=1",
    "data.batch_size=32",
    "run.save_every_steps=1000",
]


@pytest.mark.slow
def test_demo_end_to_end_then_reuse(tmp_path, capsys):
    work = tmp_path / "work"
    argv = [
        "--workdir",
        str(work),
        "--config",
        str(REPO / "configs/tiny-synth.toml"),
        "--n",
        "200",
        "--tuples",
        "10",
        "--queries",
        "3",
        "--top-k",
        "4",
        *MICRO,
    ]
    assert demo_main(argv) == 0
    out = capsys.readouterr().out

    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    assert manifest["model_name"] == "clipserve-micro"
    test_items = [
        json.loads(line) for line in (work / "data" / "test.jsonl").read_text().splitlines()
    ]
    assert len(test_items) == 20
    assert "semantic text->image R@1 over 20 held-out captions" in out
    assert "server stopped (exit code 0)" in out
    assert "stopped" in (work / "demo" / "server.log").read_text()
    sheet = Image.open(work / "demo" / "contact_sheet.png")
    assert sheet.height > 3 * 90  # one row per query
    eval_metrics = json.loads((work / "eval.json").read_text())
    assert 0.0 <= eval_metrics["t2i_semantic_R@1"] <= 1.0

    # Every held-out image was upserted (plus 8 re-upserts): stored exactly once each.
    index = EdgeIndex(work / "index")
    try:
        assert index.count("clipserve") == len(test_items)
    finally:
        index.close()

    assert demo_main(argv) == 0
    captured = capsys.readouterr()
    again = captured.out + captured.err
    assert "already holds this data set; reusing it" in again
    assert "already finished" in again
    assert "reusing bundle" in again
    index = EdgeIndex(work / "index")
    try:
        assert index.count("clipserve") == len(test_items)
    finally:
        index.close()


def test_demo_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="training config .* not found"):
        demo_main(["--workdir", str(tmp_path / "w"), "--config", str(tmp_path / "nope.toml")])
