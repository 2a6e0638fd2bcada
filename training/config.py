"""Training configuration: frozen dataclasses loaded from a TOML file plus CLI overrides.

A config file has the sections [model], [data], [optim], [loss], [sampling] and [run] (see
configs/tiny-synth.toml and configs/finetune-*.toml). Overrides are ``section.key=value``
strings, typed by the field.

Relative paths (data.train, data.val, run.output_dir, sampling.mined, and model.pretrained /
model.guide when they look like paths: a "/" or a leading "." or "~"): those written **in
the config file** are relative to the config file's directory, so a config and its data can
move together; those given **as CLI overrides** are relative to the current working
directory, like any other shell argument.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the backport: pip install tomli
    import tomli as tomllib

from clipserve.training.losses.config import LossConfig  # the [loss] section
from clipserve.training.mining.options import check_mine_options

PATH_FIELDS = {
    ("data", "train"),
    ("data", "val"),
    ("data", "cache_dir"),
    ("run", "output_dir"),
    ("sampling", "mined"),
}
# Either an open_clip tag / keyword ("openai", "start") or a file: resolved like the paths
# above only when the value looks like a path (has a "/" or starts with "." or "~").
MAYBE_PATH_FIELDS = {("model", "pretrained"), ("model", "guide")}


def _is_path_field(section: str, key: str, value: Any) -> bool:
    if (section, key) in PATH_FIELDS:
        return True
    return (
        (section, key) in MAYBE_PATH_FIELDS
        and isinstance(value, str)
        and ("/" in value or "\\" in value or value.startswith((".", "~")))
    )


@dataclass(frozen=True)
class ModelConfig:
    name: str = "clipserve-tiny"
    # open_clip pretrained tag or a local checkpoint path; None trains from scratch.
    pretrained: str | None = None
    # Frozen guide model for the `guide` estimator/filter: "" = none, "start" = the starting
    # weights (model.pretrained), or an open_clip tag / weights file / clipserve checkpoint
    # of the architecture `guide_name` (default: model.name; a clipserve checkpoint names
    # its own), e.g. a larger open_clip model.
    guide: str = ""
    guide_name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name must name an open_clip model, e.g. 'clipserve-tiny'.")
        if self.guide == "start" and not self.pretrained:
            raise ValueError(
                'model.guide = "start" uses the starting weights as the guide, but '
                "model.pretrained is not set (a model trained from scratch has none)."
            )


@dataclass(frozen=True)
class DataConfig:
    train: str = ""
    val: str | None = None
    batch_size: int = 128
    # DataLoader workers, used only when images are not cached in memory.
    workers: int = 0
    # False: train on open_clip's deterministic preprocess_val, cached in memory (fast).
    # True: open_clip's preprocess_train (RandomResizedCrop) decoded per batch.
    augment: bool = False
    # Cache decoded images in memory when they take at most this many MiB (0 disables).
    cache_max_mib: int = 2048
    # A directory where runs over the same data share the decoded images and a frozen
    # guide's features (training/data/cache.py): a sweep decodes and embeds them once.
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("data.train must be the path of a training manifest (.jsonl/.csv).")
        if self.batch_size < 2:
            raise ValueError(
                f"data.batch_size must be at least 2 for a contrastive loss, got {self.batch_size}."
            )
        if self.workers < 0:
            raise ValueError(f"data.workers must be 0 or more, got {self.workers}.")
        if self.cache_max_mib < 0:
            raise ValueError(f"data.cache_max_mib must be 0 or more, got {self.cache_max_mib}.")
        if (
            self.cache_dir is not None
            and Path(self.cache_dir).exists()
            and not Path(self.cache_dir).is_dir()
        ):
            raise ValueError(f"data.cache_dir {self.cache_dir} exists and is not a directory.")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    epochs: int = 1
    # When > 0, train for exactly this many steps instead of `epochs` epochs.
    max_steps: int = 0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}.")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be 0 or more, got {self.weight_decay}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}.")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be positive, got {self.eps}.")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be 0 or more, got {self.warmup_steps}.")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("Set optim.epochs (>= 1) or optim.max_steps (>= 1).")
        if self.max_steps < 0:
            raise ValueError(f"optim.max_steps must be 0 or more, got {self.max_steps}.")
        if self.grad_clip_norm < 0:
            raise ValueError(f"optim.grad_clip_norm must be 0 or more, got {self.grad_clip_norm}.")


SAMPLING_MODES = ("random", "hard_batches", "mined_negatives")
FILTERS = ("none", "margin", "guide", "duplicate", "cluster", "lexical", "oracle")


@dataclass(frozen=True)
class SamplingConfig:
    # random: a shuffle per epoch. hard_batches: neighbourhoods of the batch plan grouped
    # into each batch (several per batch). mined_negatives: anchors plus their mined
    # negatives (whole image-caption pairs) in each batch. See clipserve.training.sampling.
    mode: str = "random"
    # Output directory of `clipserve mine` on data.train. Unset with a non-random mode (or
    # clusters for the `cluster` estimator): training mines once with its starting weights.
    mined: str | None = None
    # Re-mine with the current weights every N epochs (0 = never).
    remine_every_epochs: int = 0
    # In-training mining (what `clipserve mine` takes as options): negatives from neighbour
    # ranks [rank_start, rank_start + rank_window), `negatives` kept per anchor after the
    # offline `filter` (thresholds: loss.margin, loss.margin_mode, loss.fn_threshold,
    # loss.hash_max_distance); hard-batch groups of group_size; k-means `clusters`;
    # cluster_text_neighbours M > 0: the `cluster` estimator also flags an image whose cell
    # holds the image of one of the caption's M nearest captions (see MineConfig);
    # lexical_neighbours / visual_ratio: the `lexical` estimator's image neighbours and its
    # visual-word test (mined whenever loss.estimator or sampling.filter is "lexical").
    rank_start: int = 3
    rank_window: int = 30
    negatives: int = 3
    group_size: int = 16
    clusters: int = 0
    cluster_top: int = 1
    cluster_text_neighbours: int = 0
    lexical_neighbours: int = 10
    visual_ratio: float = 1.5
    filter: str = "none"

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(
                f"unknown sampling.mode {self.mode!r}; known: {', '.join(SAMPLING_MODES)}."
            )
        if self.filter not in FILTERS:
            raise ValueError(
                f"unknown sampling.filter {self.filter!r}; known: {', '.join(FILTERS)}."
            )
        if self.remine_every_epochs < 0:
            raise ValueError(
                f"sampling.remine_every_epochs must be 0 or more, got {self.remine_every_epochs}."
            )
        check_mine_options(self, prefix="sampling.")
        if self.filter == "cluster" and not self.clusters and not self.mined:
            raise ValueError("sampling.filter = 'cluster' needs sampling.clusters > 0.")


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "amp"  # amp (bf16/fp16 on GPU; fp32 on CPU regardless) | fp32
    # torch intra-op threads on CPU; 0 = all visible cores.
    threads: int = 0
    log_every: int = 10
    save_every_steps: int = 200
    # Retrieval eval on data.val every N steps (0: only once, at the end, when data.val is set).
    eval_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("run.output_dir must be a directory path.")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"run.device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        if self.precision not in ("amp", "fp32"):
            raise ValueError(f"run.precision must be 'amp' or 'fp32', got {self.precision!r}.")
        for name in ("threads", "log_every", "save_every_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"run.{name} must be 0 or more, got {getattr(self, name)}.")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "loss": LossConfig,
    "sampling": SamplingConfig,
    "run": RunConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Check/convert a TOML value (or an override string) to the field's type."""
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"{where} must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where} must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} must be a string, got {value!r}.")
    if typing.get_origin(tp) is tuple:
        items = value.strip("[]() ").split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}.")
        args = typing.get_args(tp)
        if len(items) != len(args):
            raise ValueError(f"{where} must have {len(args)} items, got {value!r}.")
        return tuple(_coerce(where, a, v) for a, v in zip(args, items, strict=True))
    raise TypeError(f"unsupported config type {tp} for {where}")  # pragma: no cover


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def config_from_dict(
    raw: dict[str, Any], base_dir: Path | None = None, source: str = "config"
) -> TrainConfig:
    """Build a TrainConfig from nested dicts; relative paths resolve against `base_dir`.

    Raises ValueError naming unknown sections/keys and values of the wrong type.
    """
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(
            f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}."
        )
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"{source}: [{section}] must be a table.")
        types_ = _field_types(cls)
        bad = sorted(set(values) - set(types_))
        if bad:
            names = ", ".join(f"{section}.{k}" for k in bad)
            raise ValueError(f"{source}: unknown key(s) {names}; known: {', '.join(types_)}.")
        kwargs = {k: _coerce(f"{section}.{k}", types_[k], v) for k, v in values.items()}
        if base_dir is not None:
            for k in kwargs:
                if _is_path_field(section, k, kwargs[k]):
                    kwargs[k] = _resolve_path(kwargs[k], base_dir)
        built[section] = kwargs
    if "train" not in built["data"]:
        raise ValueError(f"{source}: data.train must be set (the training manifest).")
    return TrainConfig(**{s: SECTIONS[s](**kw) for s, kw in built.items()})


def parse_override(text: str) -> tuple[str, str, str]:
    """'section.key=value' -> (section, key, value)."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. optim.lr=1e-3.")
    return section, key, value.strip()


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Load a TOML config (paths relative to its directory) and apply CLI overrides
    (paths relative to the CWD). `path` may be None to build a config from overrides only.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = "overrides"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: invalid TOML ({exc})") from None
        base = p.resolve().parent
        source = str(p)
    # Resolve file paths now, so overrides (relative to CWD) can be merged as absolute values.
    for section, key in PATH_FIELDS | MAYBE_PATH_FIELDS:
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and _is_path_field(section, key, value):
            table[key] = _resolve_path(value, base)  # type: ignore[index]
    for text in overrides:
        section, key, value = parse_override(text)
        if (
            section in SECTIONS
            and _is_path_field(section, key, value)
            and value.lower() not in ("", "none")
        ):
            value = str(Path(value).expanduser().resolve())
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ValueError(f"{source}: [{section}] must be a table.")
        raw[section][key] = value
    return config_from_dict(raw, base_dir=None, source=source)
