"""`lexical`: the training pairs say what an image shows; a caption those words entail matches.

Image b is a suspected match of caption a when every visual word of a (mining's
`clipserve.training.mining.lexical`: words the mining model's images show, not template words)
is in the caption b is paired with, or in the captions of at least a `loss.lexical_votes`
fraction of b's k nearest images. The first reads one pair; the second lets b's neighbours
speak for it when its own caption names less than a does. A caption with no visual word
matches nothing. FFF mines positives from text-text and image-image similarity; this reads the
text side as word containment, which is exact for compositional captions (attribute lists,
product titles, tags) and blind to paraphrase and negation.

Reads `LossBatch.caption_words` (B, L) and, when mined with neighbours,
`LossBatch.neighbour_words` (B, k, L). Scores are 0/1; the i2t score of (image a, caption k)
is the t2i score of (caption k, image a).
"""

from __future__ import annotations

import torch

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput


def _bags(lists: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """(n, L) word ids (-1 = none) -> (n, |vocab|) 0/1 float, vocab ascending, holding them."""
    out = torch.zeros(lists.shape[0], len(vocab) + 1, dtype=torch.float32, device=lists.device)
    at = torch.searchsorted(vocab, lists) + 1
    out.scatter_(1, torch.where(lists < 0, 0, at), 1.0)
    return out[:, 1:]


def entails(captions: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(P, Q) bool: every word of caption p (with at least one) is in word list q.
    captions (P, L), others (Q, L'): word ids, -1 padded, each id once per row."""
    vocab = torch.unique(torch.cat([captions.reshape(-1), others.reshape(-1)]))
    vocab = vocab[vocab >= 0]
    a, b = _bags(captions, vocab), _bags(others, vocab)
    need = a.sum(1, keepdim=True)
    return (a @ b.T == need) & (need > 0)


class LexicalEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.votes = cfg.lexical_votes

    def matches(
        self, captions: torch.Tensor, own: torch.Tensor, neighbours: torch.Tensor | None
    ) -> torch.Tensor:
        """(P, Q) bool: caption p vs image q, given q's own caption words `own` (Q, L) and
        its neighbours' captions' words `neighbours` (Q, k, L) or None."""
        hit = entails(captions, own)
        if neighbours is not None and neighbours.shape[1] > 0:
            q, k, _ = neighbours.shape
            votes = entails(captions, neighbours.reshape(q * k, -1)).view(-1, q, k)
            hit |= votes.float().mean(-1) >= self.votes
        return hit

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        words = x.batch.require("caption_words", "lexical").to(x.cos_i2t.device)
        near = x.batch.neighbour_words
        near = None if near is None else near.to(words.device)
        mine = words[x.rows]
        t2i = self.matches(mine, words, near)  # caption row a, image column k
        if len(mine) == len(words):  # every item is a row: image a vs caption k is t2i[k, a]
            i2t = t2i.T
        else:
            i2t = self.matches(words, mine, None if near is None else near[x.rows]).T
        dtype = x.cos_i2t.dtype
        return i2t.to(dtype), t2i.to(dtype)
