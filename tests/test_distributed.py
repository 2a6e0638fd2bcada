"""Two gloo processes on CPU against one process on the same global batch.

- The loss family: loss and DDP-averaged parameter gradients for every local_loss x
  gather_with_grad combination, plain and filtered (margin+drop, em, oracle+hn-nce, hcl,
  siglip). local_loss without gather_with_grad is an approximation by design (other ranks'
  features are constants); it is checked against that definition.
- The train loop under torch.distributed (what torchrun sets up): the weights after a few
  steps equal a single-process run's.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from clipserve.training.losses import LossBatch, LossConfig, build_loss

WORLD = 2
B = 8  # global batch; 4 per rank

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "margin-drop": {"estimator": "margin", "margin": 0.1},
    "em-positive-bce": {
        "estimator": "em",
        "em_flip_prob": 0.05,
        "policy": "positive",
        "neg_bce_weight": 1.0,
    },
    "em-drop": {"estimator": "em", "em_flip_prob": 0.15, "policy": "drop"},
    "oracle-hnnce": {"estimator": "oracle", "hardness": "hn-nce", "hard_beta": 1.0},
    "dup-hcl": {"estimator": "duplicate", "hardness": "hcl", "hard_beta": 0.5, "tau_plus": 0.1},
    "siglip": {"name": "siglip"},
    "siglip-oracle-positive": {"name": "siglip", "estimator": "oracle", "policy": "positive"},
}


def cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, opts in CONFIGS.items():
        for local in (False, True):
            for gwg in (False, True):
                if opts.get("name") == "siglip" and not gwg:
                    continue  # siglip: local rows always; exact only with gather_with_grad
                if name != "plain" and local and not gwg:
                    continue  # the approximate combination: checked on the plain loss
                out.append(
                    (
                        f"{name}/local={local}/gwg={gwg}",
                        {**opts, "local_loss": local, "gather_with_grad": gwg},
                    )
                )
    return out


class Towers(nn.Module):
    """Two linear towers and a learnable logit scale: enough to check gradients."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.img = nn.Parameter(torch.randn(6, 5, generator=g, dtype=torch.float64))
        self.txt = nn.Parameter(torch.randn(7, 5, generator=g, dtype=torch.float64))
        self.logit_scale = nn.Parameter(torch.tensor(2.5, dtype=torch.float64))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))

    def forward(self, image: torch.Tensor, text: torch.Tensor, siglip: bool) -> dict:
        out = {
            "image_features": F.normalize(image @ self.img, dim=-1),
            "text_features": F.normalize(text @ self.txt, dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }
        if siglip:
            out["logit_bias"] = self.logit_bias
        else:  # keep every parameter in the graph (DDP), without changing the loss
            out["logit_scale"] = out["logit_scale"] + 0 * self.logit_bias
        return out


def global_batch() -> tuple[torch.Tensor, torch.Tensor, LossBatch]:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(B, 6, generator=g, dtype=torch.float64)
    txt = img[:, :5].repeat(1, 2)[:, :7] + 0.7 * torch.randn(B, 7, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 3, 1, 4, 4])
    return img, txt, LossBatch(step=3, labels=labels, caption_keys=labels * 11)


def local_batch(batch: LossBatch, sl: slice) -> LossBatch:
    return LossBatch(step=batch.step, labels=batch.labels[sl], caption_keys=batch.caption_keys[sl])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    img, txt, batch = global_batch()
    n = B // WORLD
    sl = slice(rank * n, (rank + 1) * n)
    results = {}
    for key, opts in cases():
        model = Towers()
        ddp = nn.parallel.DistributedDataParallel(model)
        cfg = LossConfig(**opts)
        loss = build_loss(cfg, rank=rank, world_size=WORLD)(
            **ddp(img[sl], txt[sl], cfg.name == "siglip"), batch=local_batch(batch, sl)
        )
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        results[key] = (float(loss.detach()), grads)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def single_process(opts: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor]]:
    img, txt, batch = global_batch()
    model = Towers()
    cfg = LossConfig(**opts)
    loss = build_loss(cfg)(**model(img, txt, cfg.name == "siglip"), batch=batch)
    loss.backward()
    return float(loss.detach()), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def local_loss_without_grad_gather() -> tuple[float, dict[str, torch.Tensor]]:
    """Definition of local_loss & not gather_with_grad: rank r differentiates its rows' loss
    with the other ranks' features constant; DDP averages the ranks' gradients."""
    img, txt, _ = global_batch()
    model = Towers()
    n = B // WORLD
    total = 0.0
    for r in range(WORLD):
        out = model(img, txt, False)
        x, y, s = out["image_features"], out["text_features"], out["logit_scale"]
        mine = torch.zeros(B, 1, dtype=torch.bool)
        mine[r * n : (r + 1) * n] = True
        cx = torch.where(mine, x, x.detach())
        cy = torch.where(mine, y, y.detach())
        labels = torch.arange(n) + r * n
        rows = slice(r * n, (r + 1) * n)
        loss_r = (
            F.cross_entropy(s * x[rows] @ cy.T, labels)
            + F.cross_entropy(s * y[rows] @ cx.T, labels)
        ) / 2
        (loss_r / WORLD).backward()
        total += float(loss_r.detach()) / WORLD
    return total, {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_loss_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return {key: [r[key] for r in ranks] for key in ranks[0]}


@pytest.mark.parametrize("key,opts", cases(), ids=[k for k, _ in cases()])
def test_two_ranks_equal_one_process(two_rank_results, key: str, opts: dict) -> None:
    per_rank = two_rank_results[key]
    loss = sum(v for v, _ in per_rank) / WORLD  # local_loss: each rank has its rows' mean
    grads = per_rank[0][1]
    for _, g in per_rank[1:]:  # DDP leaves the same averaged gradient on every rank
        for k in g:
            torch.testing.assert_close(g[k], grads[k], rtol=1e-12, atol=1e-14)
    if opts["local_loss"] and not opts["gather_with_grad"]:
        want_loss, want_grads = local_loss_without_grad_gather()
    else:
        want_loss, want_grads = single_process(
            {k: v for k, v in opts.items() if k not in ("local_loss", "gather_with_grad")}
        )
    assert loss == pytest.approx(want_loss, rel=1e-10)
    for k in want_grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-9, atol=1e-12)


def test_filters_act_in_these_cases() -> None:
    """Guard against a vacuous comparison: each filtered case changes the loss."""
    plain, _ = single_process({})
    for name, opts in CONFIGS.items():
        if name.startswith("siglip") or name == "plain":
            continue
        assert single_process(opts)[0] != pytest.approx(plain, rel=1e-6), name


# ---------------------------------------------------------------------------- train loop


def _train_worker(rank: int, port: int, raw: dict) -> None:
    from clipserve.training.config import config_from_dict
    from clipserve.training.train import train

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    train(config_from_dict(raw))


@pytest.mark.slow
def test_train_loop_two_ranks_matches_one_process(tmp_path: Path) -> None:
    from test_train import make_fixture

    from clipserve.training.config import config_from_dict
    from clipserve.training.train import train

    manifest = make_fixture(tmp_path / "data", per_class=2)

    def raw(out: Path, **loss: Any) -> dict:
        return {
            "model": {"name": "clipserve-micro"},
            "data": {"train": str(manifest), "batch_size": 8},
            # eps = 1: Adam's update ~ lr * g, so float reordering stays tiny (no sign steps).
            "optim": {"lr": 0.05, "eps": 1.0, "max_steps": 3},
            "loss": loss,
            "run": {
                "output_dir": str(out),
                "device": "cpu",
                "threads": 1,
                "log_every": 1,
                "save_every_steps": 0,
                "progress": False,
            },
        }

    loss = {"estimator": "margin", "margin": 0.05, "local_loss": True, "gather_with_grad": True}
    mp.spawn(_train_worker, args=(free_port(), raw(tmp_path / "ddp", **loss)), nprocs=WORLD)
    train(config_from_dict(raw(tmp_path / "one", **loss)))
    ddp = torch.load(tmp_path / "ddp/checkpoints/latest.pt", weights_only=False)
    one = torch.load(tmp_path / "one/checkpoints/latest.pt", weights_only=False)
    assert ddp["step"] == one["step"] == 3
    for k, v in one["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-6)
    moved = max(float((one["model"][k] - v).abs().max()) for k, v in _init_weights().items())
    assert moved > 1e-3  # the comparison is not between two untrained models
    rows = (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3  # rank 0 alone logs
    assert "fn_mask_rate" in json.loads(rows[-1])  # the filter's diagnostics are logged


def _init_weights() -> dict[str, torch.Tensor]:
    from clipserve.training.model import ModelSpec, create_model
    from clipserve.training.train import seed_everything

    seed_everything(0)
    return create_model(ModelSpec("clipserve-micro")).model.state_dict()
