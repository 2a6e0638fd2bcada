"""A deterministic synthetic image–caption data set whose false negatives are known exactly.

Each item is one coloured shape on a grey background, described by an attribute tuple
(shape, colour, size, position), or with `SynthConfig.objects` > 1 a scene of several. The
caller fixes how many distinct tuples exist (`SynthConfig.n_tuples`); items are spread
evenly over them, so two different images with the same tuple are true matches. In a
contrastive batch those pairs are false negatives, and their expected number follows from
the tuple counts alone (`expected_false_negatives_per_anchor`).

Within a tuple, instances differ only by nuisance variation whose ranges never cross an
attribute boundary. The vocabulary and drawing live in `synth_render`, the caption templates
in `synth_captions`; this module owns the config, which tuples exist and how items are
assigned and split, and writing the files. Their names are re-exported here.

Layout written by `generate` (manifests and `synth.json` last, so an interrupted run never
leaves a manifest that points at missing images)::

    DIR/images/<id>.png
    DIR/train.jsonl   DIR/test.jsonl   one manifest line per item, keys sorted:
        {"attributes": {...}, "caption": "...", "id": "000123",
         "image": "images/000123.png", "labels": "colour=red|position=top-left|..."}
        (+ "caption_labels": "colour=red|shape=circle" with partial_captions > 0: the
        attributes the caption names; caption k matches image a iff they are all in a's labels)
    DIR/synth.json    config, tuples, counts, expected false negatives per anchor

Same config -> byte-identical files: every item's randomness comes from (seed, index) alone.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.training.data.synth_captions import (
    PARTIAL_TEMPLATES,
    TEMPLATES,
    caption,
    partial_caption,
    scene_caption,
)
from clipserve.training.data.synth_render import (
    ATTRIBUTES,
    COLOURS,
    FULL_PRODUCT,
    POSITIONS,
    SCENE_POSITIONS,
    SHAPES,
    SIZES,
    render,
    render_scene,
)

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "FORMAT",
    "FULL_PRODUCT",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SynthConfig",
    "SynthPaths",
    "SynthSummary",
    "assign_tuples",
    "caption",
    "draw_scenes",
    "draw_tuples",
    "expected_false_negatives_from_counts",
    "expected_caption_matches",
    "expected_false_negatives_per_anchor",
    "find_existing",
    "generate",
    "item_rng",
    "labels_key",
    "named_attributes",
    "named_objects",
    "render",
    "render_scene",
    "scene_count",
    "scene_labels",
    "split_test",
]

FORMAT = "clipserve-synth/1"

# Seed streams, so the tuple draw, the assignment and the split never share random numbers.
_STREAM_TUPLES, _STREAM_ASSIGN, _STREAM_SPLIT, _STREAM_ITEM = 1, 2, 3, 4
# Own stream for partial captions, so images (and full captions) stay as they were.
_STREAM_CAPTION = 5


# What an object of a multi-object scene draws; its position is the quadrant it is given.
_OBJECT_KINDS = list(itertools.product(*(v for k, v in ATTRIBUTES.items() if k != "position")))
_OBJECT_KEYS = tuple(k for k in ATTRIBUTES if k != "position")


def scene_count(objects: int) -> int:
    """How many distinct images of `objects` objects exist: the tuples for one; for more,
    one object kind per occupied quadrant."""
    if objects == 1:
        return FULL_PRODUCT
    return math.comb(len(SCENE_POSITIONS), objects) * len(_OBJECT_KINDS) ** objects


@dataclass(frozen=True)
class SynthConfig:
    """What defines a data set; equal configs give byte-identical output.

    n_tuples: distinct attribute tuples (None or 0 = all `FULL_PRODUCT`). With n items each
    tuple has n // n_tuples or one more, which sets the false-negative rate of a batch.
    holdout: fraction of items in test.jsonl; every test tuple also appears in train.
    partial_captions: fraction of items whose caption names only a random non-empty proper
    subset of the four attributes (1-3 of them). Their manifest rows carry `caption_labels`,
    the named attributes: caption k is relevant to image a iff caption_labels[k] is a subset
    of labels[a], so ground truth stays exact. 0 = every caption names every attribute.
    objects: objects per image (1-4). Above 1 a "tuple" is a scene: that many attribute
    tuples in distinct quadrants, n_tuples distinct scenes (required). Labels then bind
    attributes to their object: labels[a] holds, per object, every combination of its
    attributes ("colour=red&shape=circle"), and a caption's labels one combination per object
    it names, so the same subset rule stays exact ("a red circle" does not match a red square
    beside a blue circle). Partial captions mention some of the objects, each with some of
    its attributes; full ones every object with every attribute.
    caption_attributes: when set (a non-empty proper subset of ATTRIBUTES), every caption
    names exactly these attributes, e.g. ("colour", "shape"): coarse captions, for a base
    model that learns those and nothing finer. Rows carry `caption_labels` as above. Not
    combined with partial_captions or several objects. () = every caption names all.
    """

    n: int = 6000
    seed: int = 0
    n_tuples: int | None = 120
    image_size: int = 64
    holdout: float = 0.1
    partial_captions: float = 0.0
    objects: int = 1
    caption_attributes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if (
            isinstance(self.objects, bool)
            or not isinstance(self.objects, int)
            or not 1 <= self.objects <= len(SCENE_POSITIONS)
        ):
            raise ValueError(
                f"objects must be an integer from 1 to {len(SCENE_POSITIONS)} (one per "
                f"quadrant), got {self.objects!r}"
            )
        most = scene_count(self.objects)
        if self.n_tuples is not None and (
            not isinstance(self.n_tuples, int) or not 0 <= self.n_tuples <= most
        ):
            every = " (or 0/None for all)" if self.objects == 1 else ""
            raise ValueError(f"n_tuples must be between 1 and {most}{every}, got {self.n_tuples!r}")
        if self.n_tuples == 0:  # one spelling for "all", so equal data sets compare equal
            object.__setattr__(self, "n_tuples", None)
        if self.objects > 1 and self.n_tuples is None:
            raise ValueError(
                f"with objects={self.objects} there are too many scenes to use them all: "
                "give n_tuples, the number of distinct scenes"
            )
        if self.n < self.tuple_count:
            raise ValueError(
                f"n={self.n} items cannot cover {self.tuple_count} tuples; "
                f"raise n or lower n_tuples"
            )
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 1024:
            raise ValueError(
                f"image_size must be an integer in [32, 1024] (smaller shapes are not "
                f"recognisable), got {self.image_size!r}"
            )
        if not isinstance(self.holdout, (int, float)) or not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be in [0, 0.5], got {self.holdout!r}")
        if (
            isinstance(self.partial_captions, bool)
            or not isinstance(self.partial_captions, (int, float))
            or not 0.0 <= self.partial_captions <= 1.0
        ):
            raise ValueError(
                f"partial_captions must be a fraction in [0, 1], got {self.partial_captions!r}"
            )
        named = tuple(self.caption_attributes)
        object.__setattr__(self, "caption_attributes", named)  # a list from JSON compares equal
        if named:
            unknown = [a for a in named if a not in ATTRIBUTES]
            if unknown or len(set(named)) != len(named) or len(named) >= len(ATTRIBUTES):
                raise ValueError(
                    f"caption_attributes must be distinct names from {', '.join(ATTRIBUTES)}, "
                    f"fewer than all of them; got {', '.join(named)}"
                )
            if self.partial_captions or self.objects > 1:
                raise ValueError(
                    "caption_attributes (every caption names the same attributes) does not "
                    "combine with partial_captions or objects > 1"
                )
            object.__setattr__(
                self, "caption_attributes", tuple(a for a in ATTRIBUTES if a in named)
            )

    @property
    def tuple_count(self) -> int:
        return self.n_tuples or FULL_PRODUCT

    @property
    def subset_captions(self) -> bool:
        """Whether some captions name fewer attributes than their image shows (rows then
        carry `caption_labels` and relevance is the subset rule)."""
        return bool(self.partial_captions or self.objects > 1 or self.caption_attributes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.partial_captions:  # sets made before the option existed stay identical
            del out["partial_captions"]
        if self.objects == 1:
            del out["objects"]
        if self.caption_attributes:
            out["caption_attributes"] = list(self.caption_attributes)
        else:
            del out["caption_attributes"]
        return out


@dataclass(frozen=True)
class SynthPaths:
    root: Path
    images: Path
    train: Path
    test: Path
    meta: Path

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> SynthPaths:
        root = Path(root)
        return cls(
            root, root / "images", root / "train.jsonl", root / "test.jsonl", root / "synth.json"
        )


@dataclass(frozen=True)
class SynthSummary:
    n_train: int
    n_test: int
    n_tuples: int
    seconds: float  # 0 when reused
    items_per_s: float  # 0 when reused
    paths: SynthPaths
    reused: bool = False


# --- tuples, assignment, split ---------------------------------------------------------


def labels_key(attributes: dict[str, str]) -> str:
    """Canonical tuple key: sorted key=value joined by '|'. Equal keys are true matches."""
    return "|".join(f"{k}={attributes[k]}" for k in sorted(attributes))


Scene = tuple[dict[str, str], ...]  # the objects of one image


def scene_labels(scene: Scene) -> str:
    """The image's labels: `labels_key` of a single object; with several, every non-empty
    combination of each object's attributes, "&"-joined, so attributes stay bound to their
    object (see SynthConfig.objects)."""
    if len(scene) == 1:
        return labels_key(scene[0])
    tags = {
        conjunction({k: o[k] for k in keys})
        for o in scene
        for r in range(1, len(o) + 1)
        for keys in itertools.combinations(sorted(o), r)
    }
    return "|".join(sorted(tags))


def conjunction(attributes: dict[str, str]) -> str:
    """One object's named attributes as one label: sorted key=value joined by '&'."""
    return "&".join(f"{k}={attributes[k]}" for k in sorted(attributes))


def _scene_key(scene: Scene) -> str:
    return "; ".join(labels_key(o) for o in scene)


def draw_scenes(config: SynthConfig) -> list[Scene]:
    """The config's scenes: its tuples as one-object scenes, or with objects > 1 n_tuples
    distinct scenes, each `objects` random tuples in distinct quadrants (quadrant order)."""
    if config.objects == 1:
        return [(t,) for t in draw_tuples(config)]
    rng = np.random.default_rng((config.seed, _STREAM_TUPLES))
    scenes: dict[str, Scene] = {}
    while len(scenes) < config.tuple_count:
        where = sorted(rng.choice(len(SCENE_POSITIONS), size=config.objects, replace=False))
        scene = tuple(
            dict(zip(_OBJECT_KEYS, _OBJECT_KINDS[int(rng.integers(len(_OBJECT_KINDS)))],
                     strict=True)) | {"position": SCENE_POSITIONS[w]}
            for w in where
        )  # fmt: skip
        scenes.setdefault(_scene_key(scene), scene)
    return list(scenes.values())


def draw_tuples(config: SynthConfig) -> list[dict[str, str]]:
    """The config's tuples, drawn without replacement from the full product, in product order."""
    product = list(itertools.product(*ATTRIBUTES.values()))
    rng = np.random.default_rng((config.seed, _STREAM_TUPLES))
    chosen = sorted(rng.choice(len(product), size=config.tuple_count, replace=False).tolist())
    return [dict(zip(ATTRIBUTES, product[i], strict=True)) for i in chosen]


def assign_tuples(config: SynthConfig) -> np.ndarray:
    """Tuple index of every item [n]; counts differ by at most one between tuples."""
    rng = np.random.default_rng((config.seed, _STREAM_ASSIGN))
    return rng.permutation(np.arange(config.n) % config.tuple_count)


def split_test(config: SynthConfig, assignment: np.ndarray) -> np.ndarray:
    """Boolean mask [n] of test items: stratified per tuple, at least one item kept in train."""
    rng = np.random.default_rng((config.seed, _STREAM_SPLIT))
    counts = np.bincount(assignment, minlength=config.tuple_count)
    target = round(config.holdout * config.n)
    room = np.maximum(counts - 1, 0)  # items a tuple can give up and stay in train
    quota = np.minimum(np.floor(config.holdout * counts).astype(int), room)
    # Largest-remainder rounding, ties broken by a seeded order, to hit the target exactly.
    order = rng.permutation(config.tuple_count)
    for t in order[np.argsort(-(config.holdout * counts - quota)[order], kind="stable")]:
        if quota.sum() >= target:
            break
        if quota[t] < room[t]:
            quota[t] += 1
    test = np.zeros(config.n, dtype=bool)
    for t in range(config.tuple_count):
        members = np.flatnonzero(assignment == t)
        test[rng.permutation(members)[: quota[t]]] = True
    return test


def expected_false_negatives_from_counts(batch_size: int, counts: Sequence[int]) -> float:
    """Expected same-tuple partners of an anchor in a batch drawn uniformly without replacement.

    Each of the other batch_size - 1 slots holds a same-tuple item with probability
    (m_t - 1) / (N - 1) for an anchor of tuple t; averaging over anchors gives
    (B - 1) * sum m_t (m_t - 1) / (N (N - 1)).
    """
    total = int(sum(counts))
    if batch_size < 1 or total < 2:
        return 0.0
    pairs = sum(int(m) * (int(m) - 1) for m in counts)
    return (min(batch_size, total) - 1) * pairs / (total * (total - 1))


def expected_false_negatives_per_anchor(batch_size: int, n: int, n_tuples: int) -> float:
    """Same, for n items spread evenly over n_tuples tuples (as `assign_tuples` does)."""
    if n_tuples < 1:
        raise ValueError(f"n_tuples must be positive, got {n_tuples}")
    base, extra = divmod(n, n_tuples)
    return expected_false_negatives_from_counts(
        batch_size, [base + 1] * extra + [base] * (n_tuples - extra)
    )


def expected_caption_matches(
    batch_size: int, caption_labels: Sequence[str], labels: Sequence[str]
) -> float:
    """Expected images in a uniform random batch, besides its own, that match an anchor's
    caption (every attribute the caption names is in the image): the text->image false
    negatives per anchor when captions are partial. Equals the same-tuple count for full ones.
    """
    n = len(labels)
    if n < 2 or batch_size < 2:
        return 0.0
    image_sets: dict[str, int] = {}
    for key in labels:
        image_sets[key] = image_sets.get(key, 0) + 1
    parsed = {k: set(k.split("|")) for k in image_sets}
    total = 0
    cache: dict[str, int] = {}
    for cap in caption_labels:
        if cap not in cache:
            need = set(cap.split("|"))
            cache[cap] = sum(m for k, m in image_sets.items() if need <= parsed[k])
        total += cache[cap] - 1  # every caption matches its own image
    return (min(batch_size, n) - 1) * total / (n * (n - 1))


# --- per-item randomness ---------------------------------------------------------------


def item_rng(seed: int, index: int) -> np.random.Generator:
    """Per-item generator: depends on (seed, index) only, so chunks render identically."""
    return np.random.default_rng((seed, _STREAM_ITEM, index))


def named_attributes(config: SynthConfig, index: int) -> tuple[str, ...]:
    """The attributes item `index`'s caption names (all of them unless it drew a partial one)."""
    if config.caption_attributes:
        return config.caption_attributes
    names = tuple(ATTRIBUTES)
    if not config.partial_captions:
        return names
    rng = np.random.default_rng((config.seed, _STREAM_CAPTION, index))
    if rng.random() >= config.partial_captions:
        return names
    k = int(rng.integers(1, len(names)))  # 1 .. len - 1: a proper subset
    return tuple(names[i] for i in sorted(rng.choice(len(names), size=k, replace=False)))


def named_objects(config: SynthConfig, index: int) -> list[tuple[str, ...]]:
    """Per object of a multi-object item, the attributes its caption names (empty: the
    object is not mentioned). Full captions name everything; a partial one mentions a random
    non-empty subset of the objects, each with a random non-empty subset of attributes."""
    names = tuple(ATTRIBUTES)
    rng = np.random.default_rng((config.seed, _STREAM_CAPTION, index))
    if rng.random() >= config.partial_captions:
        return [names] * config.objects
    mentioned = rng.choice(config.objects, size=int(rng.integers(1, config.objects + 1)),
                           replace=False)  # fmt: skip
    out: list[tuple[str, ...]] = [()] * config.objects
    for m in sorted(mentioned.tolist()):
        k = int(rng.integers(1, len(names) + 1))
        out[m] = tuple(names[i] for i in sorted(rng.choice(len(names), size=k, replace=False)))
    return out


def _scene_caption(config: SynthConfig, index: int, scene: Scene) -> tuple[str, str]:
    """(caption, caption_labels) of a multi-object item, one conjunction label per object
    the caption mentions."""
    named = named_objects(config, index)
    rng = np.random.default_rng((config.seed, _STREAM_CAPTION, index, 1))
    template = int(rng.integers(len(PARTIAL_TEMPLATES)))
    nouns = rng.integers(2, size=len(scene)).tolist()
    text = scene_caption(list(scene), [set(n) for n in named], template, nouns)
    tags = {conjunction({k: o[k] for k in n}) for o, n in zip(scene, named, strict=True) if n}
    return text, "|".join(sorted(tags))


def _item_caption(config: SynthConfig, index: int, scene: Scene, template: int) -> tuple[str, str]:
    """(caption, caption_labels) of an item; `template` comes from the item's own stream."""
    if len(scene) > 1:
        return _scene_caption(config, index, scene)
    attrs = scene[0]
    named = named_attributes(config, index)
    if len(named) == len(ATTRIBUTES):
        return caption(attrs, template), labels_key(attrs)
    rng = np.random.default_rng((config.seed, _STREAM_CAPTION, index, 1))
    text = partial_caption(
        attrs, set(named), int(rng.integers(len(PARTIAL_TEMPLATES))), int(rng.integers(2))
    )
    return text, labels_key({k: attrs[k] for k in named})


# --- generation ------------------------------------------------------------------------


def _id_width(n: int) -> int:
    return max(6, len(str(n - 1)))


def _render_chunk(
    args: tuple[SynthConfig, list[Scene], str, list[int], list[int]],
) -> list[tuple[str, str]]:
    """Render and save items; returns their (caption, caption_labels). Top-level so worker
    processes can run it."""
    config, tuples, images_dir, indices, tuple_ids = args
    width = _id_width(config.n)
    captions = []
    for index, t in zip(indices, tuple_ids, strict=True):
        rng = item_rng(config.seed, index)
        scene = tuples[t]
        captions.append(_item_caption(config, index, scene, int(rng.integers(len(TEMPLATES)))))
        image = render_scene(scene, config.image_size, rng)
        # Fixed encoder options and no metadata chunks: identical bytes run to run. One write
        # per file: creating files is the slow part here, not encoding.
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=3)
        with open(os.path.join(images_dir, f"{index:0{width}d}.png"), "wb") as f:
            f.write(buf.getbuffer())
    return captions


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(start + size, n)))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prepare(paths: SynthPaths) -> None:
    """Make the dirs; refuse a directory that holds anything but a (partial) synth set."""
    ours = {"images", "train.jsonl", "test.jsonl", "synth.json"}
    if paths.root.exists():
        if not paths.root.is_dir():
            raise ValueError(f"{paths.root} exists and is not a directory")
        foreign = sorted(
            p.name for p in paths.root.iterdir() if p.name.removesuffix(".tmp") not in ours
        )
        if foreign:
            raise ValueError(
                f"{paths.root} holds files that are not a synth data set ({', '.join(foreign[:3])}); "
                f"choose an empty or new directory"
            )
    # Manifests go first, so a run interrupted from here on leaves no manifest behind.
    for p in (paths.meta, paths.train, paths.test):
        p.unlink(missing_ok=True)
    paths.images.mkdir(parents=True, exist_ok=True)


def find_existing(config: SynthConfig, out_dir: str | os.PathLike[str]) -> SynthSummary | None:
    """Summary of a complete set with this exact config in out_dir, else None."""
    paths = SynthPaths.under(out_dir)
    try:
        meta = json.loads(paths.meta.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("config") != config.to_dict():
            return None
        counts = {}
        for name, manifest in (("train", paths.train), ("test", paths.test)):
            lines = manifest.read_text(encoding="utf-8").splitlines()
            if not all((paths.root / json.loads(line)["image"]).is_file() for line in lines):
                return None
            counts[name] = len(lines)
    except (OSError, ValueError, KeyError):
        return None
    if counts != {"train": meta["n_train"], "test": meta["n_test"]}:
        return None
    return SynthSummary(counts["train"], counts["test"], config.tuple_count, 0.0, 0.0, paths, True)


def generate(
    config: SynthConfig,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    *,
    workers: int | None = None,
    reuse: bool = False,
) -> SynthSummary:
    """Write the data set under out_dir (see module docstring); returns counts and speed.

    workers: render processes; None picks one per CPU (up to 4) for large sets. The output
    is byte-identical for any worker count.
    reuse=True returns at once if out_dir already holds this exact set.
    Raises ValueError if out_dir holds something other than a synth data set.
    """
    if reuse and (existing := find_existing(config, out_dir)) is not None:
        return existing
    if workers is None:
        # Below ~1000 items starting processes costs more than it saves.
        workers = 1 if config.n < 1000 else min(os.cpu_count() or 1, 4)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    paths = SynthPaths.under(out_dir)
    _prepare(paths)
    tuples = draw_scenes(config)
    assignment = assign_tuples(config)
    is_test = split_test(config, assignment)

    jobs = [
        (config, tuples, str(paths.images), idx, assignment[idx].tolist())
        for idx in _chunks(config.n, 256)
    ]
    captions: list[tuple[str, str]] = []
    bar = _progress_bar(config.n, progress)
    if workers == 1:
        results: Iterator[list[tuple[str, str]]] = map(_render_chunk, jobs)
        _collect(results, captions, bar)
    else:
        with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
            _collect(pool.map(_render_chunk, jobs), captions, bar)
    if bar is not None:
        bar.close()

    _remove_stale_images(paths, config.n)
    width = _id_width(config.n)
    lines: dict[bool, list[str]] = {False: [], True: []}
    for index in range(config.n):
        scene = tuples[assignment[index]]
        item_id = f"{index:0{width}d}"
        text, named = captions[index]
        record = {
            "id": item_id,
            "image": f"images/{item_id}.png",
            "caption": text,
            "labels": scene_labels(scene),
            "attributes": dict(scene[0]) if len(scene) == 1 else [dict(o) for o in scene],
        }
        if config.subset_captions:
            record["caption_labels"] = named
        lines[bool(is_test[index])].append(json.dumps(record, sort_keys=True))
    _write_atomic(paths.train, "".join(line + "\n" for line in lines[False]))
    _write_atomic(paths.test, "".join(line + "\n" for line in lines[True]))
    meta = _meta(config, tuples, assignment, is_test)
    if config.subset_captions:
        train_idx = np.flatnonzero(~is_test)
        meta["expected_caption_matches_per_anchor"] = {
            str(b): round(
                expected_caption_matches(
                    b,
                    [captions[i][1] for i in train_idx],
                    [scene_labels(tuples[assignment[i]]) for i in train_idx],
                ),
                6,
            )
            for b in (64, 128, 256)
        }
    _write_atomic(paths.meta, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    seconds = time.perf_counter() - start
    return SynthSummary(
        n_train=len(lines[False]),
        n_test=len(lines[True]),
        n_tuples=config.tuple_count,
        seconds=seconds,
        items_per_s=config.n / seconds if seconds > 0 else float("inf"),
        paths=paths,
    )


def _mp_context() -> Any:
    # fork where it exists: workers only touch numpy and PIL (never torch's thread pools), and
    # spawn would re-run the caller's __main__, breaking scripts without a __main__ guard.
    return get_context("fork" if "fork" in get_all_start_methods() else "spawn")


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="img")


def _collect(
    results: Iterator[list[tuple[str, str]]], captions: list[tuple[str, str]], bar: Any
) -> None:
    for chunk in results:
        captions.extend(chunk)
        if bar is not None:
            bar.update(len(chunk))


def _remove_stale_images(paths: SynthPaths, n: int) -> None:
    """Drop images left by an earlier, larger set so the directory matches its manifests."""
    width = _id_width(n)
    for p in paths.images.glob("*.png"):
        stem = p.stem
        if not (stem.isdigit() and len(stem) == width and int(stem) < n):
            p.unlink()


def _meta(
    config: SynthConfig, tuples: list[Scene], assignment: np.ndarray, is_test: np.ndarray
) -> dict[str, Any]:
    train_counts = np.bincount(assignment[~is_test], minlength=len(tuples)).tolist()
    test_counts = np.bincount(assignment[is_test], minlength=len(tuples)).tolist()
    return {
        "format": FORMAT,
        "config": config.to_dict(),
        "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
        "n_items": config.n,
        "n_train": int((~is_test).sum()),
        "n_test": int(is_test.sum()),
        "n_tuples": len(tuples),
        "tuples": [
            {"labels": _scene_key(t), "n_train": a, "n_test": b}
            for t, a, b in zip(tuples, train_counts, test_counts, strict=True)
        ],
        # For the train split, which is what training batches are drawn from.
        "expected_false_negatives_per_anchor": {
            str(b): round(expected_false_negatives_from_counts(b, train_counts), 6)
            for b in (64, 128, 256)
        },
    }
