"""Config loading, the training loop, checkpoints, resume and determinism (clipserve-micro)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipserve.cli.main import main as cli_main
from clipserve.training import train as train_mod
from clipserve.training.config import TrainConfig, config_from_dict, load_config
from clipserve.training.train import lr_at, param_groups, train

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}


def make_fixture(root: Path, per_class: int = 6) -> Path:
    """Coloured squares on grey, left or right: 8 label classes x `per_class` items."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for side in ("left", "right"):
            for k in range(per_class):
                i = len(rows)
                img = Image.new("RGB", (32, 32), (120 + k, 120, 120))
                x0 = 2 + k if side == "left" else 18 - k % 3
                img.paste(rgb, (x0, 8 + c, x0 + 12, 20 + c))
                img.save(root / "images" / f"{i:03d}.png")
                rows.append(
                    {
                        "id": f"{i:03d}",
                        "image": f"images/{i:03d}.png",
                        "caption": f"a {name} square on the {side}",
                        "labels": f"colour={name}|side={side}",
                    }
                )
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def micro_config(manifest: Path, out: Path, **sections: dict) -> TrainConfig:
    raw = {
        "model": {"name": "clipserve-micro"},
        "data": {"train": str(manifest), "batch_size": 16},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 8},
        "run": {
            "output_dir": str(out),
            "device": "cpu",
            # One thread: robust when other processes share the cores (see tiny-synth.toml).
            "threads": 1,
            "log_every": 1,
            "save_every_steps": 3,
            "progress": False,
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("data"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---------------------------------------------------------------------------- config


def test_config_file_paths_relative_to_file_overrides_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = cfg_dir / "c.toml"
    path.write_text(
        '[data]\ntrain = "../d/train.jsonl"\nbatch_size = 32\n'
        "[optim]\nlr = 1\nbetas = [0.8, 0.9]\n"
        '[run]\noutput_dir = "out"\n'
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert Path(cfg.data.train).resolve() == (tmp_path / "d" / "train.jsonl").resolve()
    assert Path(cfg.run.output_dir) == cfg_dir.resolve() / "out"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)

    cfg = load_config(
        path,
        [
            "run.output_dir=elsewhere",
            "data.batch_size=8",
            "optim.lr=3e-4",
            "optim.betas=0.5,0.6",
            "data.augment=true",
            "data.val=none",
            "model.pretrained=laion2b_s34b_b79k",
        ],
    )
    assert Path(cfg.run.output_dir) == tmp_path.resolve() / "elsewhere"
    assert cfg.data.batch_size == 8 and cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.5, 0.6)
    assert cfg.data.augment is True and cfg.data.val is None
    assert cfg.model.pretrained == "laion2b_s34b_b79k"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], r"unknown key\(s\) optim.lrr"),
        (["optimizer.lr=1"], r"unknown section\(s\) optimizer"),
        (["optim.lr=fast"], r"optim.lr must be a number"),
        (["data.batch_size=1.5"], r"data.batch_size must be an integer"),
        (["data.augment=maybe"], r"data.augment must be true or false"),
        (["optim.lr=-1"], r"optim.lr must be positive"),
        (["data.batch_size=1"], r"at least 2"),
        (["run.precision=fp8"], r"run.precision must be 'amp' or 'fp32'"),
        (["run.device=tpu"], r"run.device must be"),
        (["optim.betas=0.9"], r"optim.betas must have 2 items"),
        (["lr=1"], r"must look like section.key=value"),
    ],
)
def test_config_errors_are_sentences(tmp_path: Path, overrides: list[str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[data]\ntrain = "t.jsonl"\n')
    with pytest.raises(ValueError, match=message):
        load_config(path, overrides)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
    path = tmp_path / "c.toml"
    path.write_text("[data]\nbatch_size = 4\n")
    with pytest.raises(ValueError, match="data.train must be set"):
        load_config(path)
    path.write_text('[data]\ntrain = "t.jsonl"\nbogus = 1\n[run]\nnope = 2\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) data.bogus"):
        load_config(path)
    path.write_text("[data\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(path)


def test_repo_config_loads() -> None:
    import open_clip

    cfg = load_config(Path(__file__).parent.parent / "configs" / "tiny-synth.toml")
    assert cfg.model.name in open_clip.list_models() and cfg.loss.name == "clip"


# ---------------------------------------------------------------------------- pieces


def test_lr_schedule_warmup_then_cosine() -> None:
    assert lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)


def test_no_weight_decay_on_gains_biases_embeddings_logit_scale() -> None:
    from clipserve.training.model import ModelSpec, create_model

    model = create_model(ModelSpec("clipserve-micro")).model
    no_decay, decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"logit_scale", "token_embedding.weight", "positional_embedding"} <= nd
    assert "visual.class_embedding" in nd and "ln_final.weight" in nd
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in d
    assert not any("bias" in n or "ln_" in n for n in d)
    assert len(nd) + len(d) == len(list(model.parameters()))


def test_fused_adamw_is_the_per_tensor_update() -> None:
    """build_optimizer uses torch's fused AdamW on CPU; five steps of it land where the
    reference per-tensor loop (same groups, same hyper-parameters) lands."""
    from clipserve.training.config import OptimConfig
    from clipserve.training.model import ModelSpec, create_model
    from clipserve.training.optim import build_optimizer

    torch.manual_seed(0)
    model = create_model(ModelSpec("clipserve-micro")).model
    ref = create_model(ModelSpec("clipserve-micro")).model
    ref.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-3, weight_decay=0.2)
    fused = build_optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(
        param_groups(ref, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
        foreach=False,
    )  # fmt: skip
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(0, 400, (4, 32))
    for _ in range(5):
        for m, opt in ((model, fused), (ref, plain)):
            opt.zero_grad()
            img, txt, _ = m(images, tokens)
            (img @ txt.T).logsumexp(1).sum().backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        if name.endswith("in_proj_bias"):
            # Its key third has a zero true gradient (softmax ignores a per-row shift), so
            # Adam turns rounding noise into full-size steps there; compare q and v only.
            w = a.shape[0] // 3
            a, b = torch.cat([a[:w], a[2 * w :]]), torch.cat([b[:w], b[2 * w :]])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_loss_name(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown loss.name 'nope'; known: clip, siglip"):
        micro_config(manifest, tmp_path / "run", loss={"name": "nope"})


# ---------------------------------------------------------------------------- training runs


def test_training_reduces_loss_and_writes_outputs(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = micro_config(
        manifest, out, optim={"max_steps": 24, "lr": 3e-3}, data={"val": str(manifest)}
    )
    result = train(cfg)
    assert result.step == 24 and not result.resumed and not result.already_finished
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 25))
    assert set(train_rows[0]) >= {
        "step",
        "epoch",
        "loss",
        "lr",
        "logit_scale",
        "samples_per_s",
        "elapsed",
    }
    first = sum(r["loss"] for r in train_rows[:3]) / 3
    last = sum(r["loss"] for r in train_rows[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    assert all(0 < r["logit_scale"] <= 100 + 1e-3 for r in train_rows)
    # Eval at the end on data.val, logged and returned.
    assert rows[-1]["split"] == "val" and "t2i_semantic_R@1" in rows[-1]
    assert result.eval_metrics is not None and (out / "eval.json").is_file()
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert state["step"] == 24 and state["finished"] and state["model_name"] == "clipserve-micro"
    assert {"optimizer", "rng", "config", "scheduler", "epoch", "pretrained"} <= set(state)
    assert state["config"]["optim"]["max_steps"] == 24
    png = out / "training_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning a finished run reports it and leaves the checkpoint alone.
    mtime = (out / "checkpoints" / "latest.pt").stat().st_mtime_ns
    again = train(cfg)
    assert again.already_finished and again.step == 24
    assert (out / "checkpoints" / "latest.pt").stat().st_mtime_ns == mtime


def test_logit_scale_is_clamped_after_each_step(manifest: Path, tmp_path: Path) -> None:
    # A huge lr pushes logit_scale past ln(100) at once; the loop must clamp it back.
    cfg = micro_config(manifest, tmp_path / "run", optim={"lr": 10.0, "max_steps": 2})
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)
    assert 0 <= float(state["model"]["logit_scale"]) <= math.log(100) + 1e-6


def test_resume_equals_uninterrupted_and_is_deterministic(manifest: Path, tmp_path: Path) -> None:
    # 48 items / batch 16 = 3 steps per epoch; 8 steps cross two epoch boundaries and the
    # interruption at step 4 sits mid-epoch, so resume must skip consumed batches.
    straight = micro_config(manifest, tmp_path / "a")
    train(straight)
    twice = micro_config(manifest, tmp_path / "b")
    train(twice)
    _assert_same_weights(tmp_path / "a/checkpoints/latest.pt", tmp_path / "b/checkpoints/latest.pt")

    split = micro_config(manifest, tmp_path / "c")
    first = train(split, stop_after=4)
    assert first.step == 4 and not first.already_finished
    assert not torch.load(tmp_path / "c/checkpoints/latest.pt", weights_only=False)["finished"]
    second = train(split)
    assert second.resumed and second.step == 8
    _assert_same_weights(tmp_path / "a/checkpoints/latest.pt", tmp_path / "c/checkpoints/latest.pt")
    a = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=False)["optimizer"]
    c = torch.load(tmp_path / "c/checkpoints/latest.pt", weights_only=False)["optimizer"]
    for k, v in a["state"].items():
        assert torch.equal(v["exp_avg_sq"], c["state"][k]["exp_avg_sq"])
    # metrics.jsonl holds each step once, in order, after the resume.
    steps = [json.loads(x)["step"] for x in (tmp_path / "c/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    # A run killed before its first checkpoint starts over: its stale rows do not stay.
    stale = micro_config(manifest, tmp_path / "d")
    (tmp_path / "d").mkdir()
    (tmp_path / "d/metrics.jsonl").write_text(
        '{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n'
    )
    train(stale)
    rows = [json.loads(x) for x in (tmp_path / "d/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and rows[0]["loss"] != 9.0


def test_different_seed_gives_different_weights(manifest: Path, tmp_path: Path) -> None:
    train(micro_config(manifest, tmp_path / "a", optim={"max_steps": 2}))
    train(micro_config(manifest, tmp_path / "b", optim={"max_steps": 2}, run={"seed": 1}))
    wa, wb = (
        _weights(tmp_path / "a/checkpoints/latest.pt"),
        _weights(tmp_path / "b/checkpoints/latest.pt"),
    )
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_a_different_run(manifest: Path, tmp_path: Path) -> None:
    train(micro_config(manifest, tmp_path / "run", optim={"max_steps": 2}))
    with pytest.raises(ValueError, match=r"different run \(optim.lr: 0.002 -> 0.001"):
        train(micro_config(manifest, tmp_path / "run", optim={"max_steps": 2, "lr": 1e-3}))


def test_pretrained_from_a_clipserve_checkpoint(manifest: Path, tmp_path: Path) -> None:
    train(micro_config(manifest, tmp_path / "a", optim={"max_steps": 2}))
    ckpt = tmp_path / "a/checkpoints/latest.pt"
    cfg = micro_config(
        manifest, tmp_path / "b", model={"pretrained": str(ckpt)}, optim={"max_steps": 1}
    )
    loaded = train_mod.load_model(cfg, torch.device("cpu"))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, _weights(ckpt)[k]), k
    assert loaded.spec.pretrained == str(ckpt)
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="clipserve-tiny"))
    with pytest.raises(ValueError, match="holds a 'clipserve-micro' model"):
        train_mod.load_model(bad, torch.device("cpu"))


def test_uncached_dataloader_path_matches_cached(manifest: Path, tmp_path: Path) -> None:
    train(micro_config(manifest, tmp_path / "a", optim={"max_steps": 3}))
    train(micro_config(manifest, tmp_path / "b", optim={"max_steps": 3}, data={"cache_max_mib": 0}))
    _assert_same_weights(tmp_path / "a/checkpoints/latest.pt", tmp_path / "b/checkpoints/latest.pt")


def test_cli_train_end_to_end(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[model]\nname = "clipserve-micro"\n[data]\ntrain = "{manifest}"\nbatch_size = 16\n'
        '[optim]\nmax_steps = 2\n[run]\noutput_dir = "run"\ndevice = "cpu"\nprogress = false\n'
    )
    assert cli_main(["train", "--config", str(cfg), "run.log_every=1"]) == 0
    assert "trained clipserve-micro: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run/checkpoints/latest.pt").is_file()
    assert cli_main(["train", "--config", str(cfg), "run.log_every=1"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert cli_main(["train", "--config", str(cfg), "optim.nope=1"]) == 2
    assert "clipserve train: error:" in capsys.readouterr().err
