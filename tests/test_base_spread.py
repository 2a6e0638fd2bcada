"""bench/base_spread.py: per-base means, stds and gains over the same base's baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from base_spread import main, summarise, table  # noqa: E402


def _runs(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"setting": "high-fn", "config": c, "seed": s, "metrics": {"m": v}}
        for c, vs in values.items()
        for s, v in enumerate(vs)
    ]


def test_gain_is_measured_against_the_same_base() -> None:
    runs = {
        "strong": _runs({"random": [0.8, 0.9], "x": [0.9, 0.9]}),
        "weak": _runs({"random": [0.2, 0.4], "x": [0.5]}),
    }
    s = summarise(runs, ["random", "x"], "m")
    assert s[("high-fn", "random", "strong")] == pytest.approx((0.85, 0.0707107, 2))
    assert s[("high-fn", "x", "weak")] == (0.5, 0.0, 1)
    text = table(s, ["strong", "weak"], ["random", "x", "y"])
    assert "| x | 0.900 ± 0.000 (+5.0) | 0.500 ± 0.000 (+20.0) |" in text
    assert "| y | - | - |" in text


def test_cli_reads_named_files_and_rejects_bad_ones(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fn_benchmark.json"
    path.write_text(json.dumps(_runs({"random": [0.5], "random+guide/drop": [0.6]})))
    assert main([f"b0={path}", "--metric", "m"]) == 0
    assert "(+10.0)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main([str(path)])
    assert exit_.value.code == 2
