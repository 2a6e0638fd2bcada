"""Side inputs of the `lexical` estimator: each caption's visual words, each image's neighbours.

The estimator reads the training pairs as evidence: image b matches caption a when every
visual word of a appears in the caption b came with (that caption entails a, word for word),
or in the captions of most of b's nearest images. This module computes what that needs, once
per mining, from the captions and the mining model's image embeddings.

**Visual words.** A word counts only if images show it. Template words ("a picture of",
"there is") and placeholder nouns ("an object") are used with every kind of image, so the
images paired with their captions are as spread as a random sample; attribute words ("red",
"circle") gather their images together. For word w used by n captions, let d_w be the mean of
their image embeddings minus the corpus mean. For n images drawn at random,
E|d|^2 = v / n (v: the corpus's total variance), so the ratio |d_w| / sqrt(v / n) is about 1
for a word that says nothing about the image, and grows with how far its images sit from the
rest. w is visual when the ratio is at least `visual_ratio` (default 1.5; a word that says
nothing scatters about 1 with a spread that shrinks as the embedding's effective dimension
grows). The test trusts the mining model: a word for something its image tower cannot see (a
position, a size) fails it, and captions that differ only in that word then read alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipserve.training.mining.neighbours import exact_neighbours

_WORD = re.compile(r"[^\W_]+")


def words(caption: str) -> list[str]:
    """Lower-cased runs of letters and digits, in order."""
    return _WORD.findall(caption.lower())


@dataclass(frozen=True)
class LexicalInputs:
    """caption_words [N, L] int64: ids (into `vocabulary`) of each caption's visual words,
    ascending, -1 padded (L >= 1). image_neighbours [N, k] int64 rows of each image's k
    nearest images (None for k = 0). ratios: every word's concentration ratio."""

    caption_words: np.ndarray
    image_neighbours: np.ndarray | None
    vocabulary: list[str]
    ratios: dict[str, float]


def word_ratios(captions: Sequence[str], image: np.ndarray) -> dict[str, float]:
    """Each word's ratio |d_w| / sqrt(v / n_w) (module doc). image [N, D], row i paired with
    captions[i]."""
    x = np.asarray(image, dtype=np.float64)
    x = x - x.mean(0)
    var = float(np.square(x).sum(1).mean())
    if len(x) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(x)} images")
    index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, caption in enumerate(captions):
        for w in dict.fromkeys(words(caption)):  # each word once per caption
            rows.append(index.setdefault(w, len(index)))
            cols.append(i)
    sums = np.zeros((len(index), x.shape[1]))
    np.add.at(sums, np.asarray(rows, dtype=np.int64), x[np.asarray(cols, dtype=np.int64)])
    counts = np.bincount(np.asarray(rows, dtype=np.int64), minlength=len(index))
    if var <= 0:  # every image alike: no word can say anything about them
        return dict.fromkeys(index, 0.0)
    return {
        w: float(np.linalg.norm(sums[k])) / counts[k] / math.sqrt(var / counts[k])
        for w, k in index.items()
    }


def caption_word_ids(captions: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """[N, L] int64: the ids of each caption's words that are in `vocabulary`, ascending,
    each once, -1 padded to the longest (L >= 1)."""
    vocab = {w: i for i, w in enumerate(vocabulary)}
    ids = [sorted({vocab[w] for w in words(c) if w in vocab}) for c in captions]
    out = np.full((len(ids), max([1, *map(len, ids)])), -1, dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
    return out


def lexical_inputs(
    captions: Sequence[str], image: np.ndarray, neighbours: int, visual_ratio: float
) -> LexicalInputs:
    """Visual words (ratio >= visual_ratio, by descending ratio) and each image's
    `neighbours` nearest images (at most N - 1; 0 = none)."""
    ratios = word_ratios(captions, image)
    visual = [w for w, r in ratios.items() if r >= visual_ratio]
    vocabulary = sorted(visual, key=lambda w: -ratios[w])
    k = min(neighbours, len(captions) - 1)
    return LexicalInputs(
        caption_words=caption_word_ids(captions, vocabulary),
        image_neighbours=exact_neighbours(image, k) if k >= 1 else None,
        vocabulary=vocabulary,
        ratios=ratios,
    )
