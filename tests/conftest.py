"""Shared fixtures: a random-init clipserve-tiny checkpoint and the bundle exported from it.

Both are session-scoped (export takes ~10 s on 2 CPU cores) and built with the real
training and export code, so every test that serves `tiny_bundle` serves a real export.
Tests that need torch import it inside the fixture: the serving tests stay torch-free.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clipserve training checkpoint of random-init clipserve-tiny (seed 0, step 0)."""
    import torch

    from clipserve.training.model import ModelSpec, create_model, save_checkpoint

    torch.manual_seed(0)
    loaded = create_model(ModelSpec("clipserve-tiny"))
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    save_checkpoint(
        path,
        {
            "model": loaded.model.state_dict(),
            "model_name": "clipserve-tiny",
            "pretrained": None,
            "step": 0,
            "metrics": {"note": "random init, for tests"},
        },
    )
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete bundle directory exported from `tiny_checkpoint` (parity-checked)."""
    from clipserve.training.export.bundle import main

    out = tmp_path_factory.mktemp("bundle") / "tiny-bundle"
    assert main([str(tiny_checkpoint), "--out", str(out)]) == 0
    return out
