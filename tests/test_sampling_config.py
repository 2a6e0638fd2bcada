"""The [sampling] section and guide model settings: validation, the shipped configs, and
checkpoints written before the section existed."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipserve.training.checkpointing import check_same_run
from clipserve.training.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("finetune-*.toml")), ids=str)
def test_finetune_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.pretrained and Path(cfg.model.pretrained).is_absolute()
    if cfg.sampling.mined:
        assert Path(cfg.sampling.mined).is_absolute()  # relative to the config file


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"mode": "hardest"}, "unknown sampling.mode 'hardest'"),
        ({"filter": "em"}, "unknown sampling.filter 'em'"),
        ({"negatives": 5, "rank_window": 3}, "cannot exceed"),
        ({"remine_every_epochs": -1}, "0 or more"),
        ({"filter": "cluster"}, "clusters > 0"),
        ({"cluster_text_neighbours": 5}, "sampling.clusters > 0"),
        ({"cluster_text_neighbours": -1}, "0 or more"),
        ({"lexical_neighbours": -1}, "sampling.lexical_neighbours must be 0 or more"),
        ({"visual_ratio": -0.5}, "sampling.visual_ratio must be 0 or more"),
        # Re-mining computes the cells again, so it needs the centres too.
        (
            {"cluster_text_neighbours": 5, "mined": "m", "remine_every_epochs": 1},
            "sampling.clusters > 0",
        ),
    ],
)
def test_sampling_errors_are_sentences(sampling: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict({"data": {"train": "x.jsonl"}, "sampling": sampling})


def test_caption_cells_may_come_from_mined_files() -> None:
    raw = {"data": {"train": "x.jsonl"}, "sampling": {"cluster_text_neighbours": 5, "mined": "m"}}
    assert config_from_dict(raw).sampling.cluster_text_neighbours == 5


def test_guide_start_needs_a_starting_checkpoint() -> None:
    with pytest.raises(ValueError, match="model.pretrained is not set"):
        config_from_dict({"data": {"train": "x.jsonl"}, "model": {"guide": "start"}})


def test_checkpoint_from_before_the_sampling_section_still_resumes(tmp_path: Path) -> None:
    cfg = config_from_dict({"data": {"train": "x.jsonl"}})
    saved = cfg.to_dict()
    del saved["sampling"]
    saved["loss"] = {"name": "clip"}  # the old [loss] had only a name
    check_same_run(saved, cfg, tmp_path / "latest.pt")  # defaults then = defaults now
    changed = config_from_dict({"data": {"train": "x.jsonl"}, "sampling": {"mode": "hard_batches"}})
    with pytest.raises(ValueError, match="sampling.mode"):
        check_same_run(saved, changed, tmp_path / "latest.pt")
