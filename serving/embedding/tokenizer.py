"""CLIP tokenisation for serving: open_clip's `SimpleTokenizer`, without torch.

Cleaning runs here in Python exactly as open_clip does it (``ftfy.fix_text``, ``html.unescape``
twice, strip, whitespace collapse, lowercase); BPE runs in the bundle's HF `tokenizers` file
(batch-encoded in Rust). `encode` never truncates: callers compare lengths with
`context_length` and reject over-long texts, naming them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import Tokenizer

from clipserve.serving.bundle import Manifest, load_manifest


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, double HTML unescape, whitespace collapse, lower."""
    # ftfy dominates tokenisation time and is the identity on printable ASCII without '&'
    # (its fixes target mojibake, non-ASCII forms, control characters and HTML entities),
    # as is html.unescape; most captions take this path.
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    text = text.strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Text -> CLIP token ids (with SOT/EOT), matching open_clip id for id."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        context_length: int,
        sot_token_id: int,
        eot_token_id: int,
        pad_token_id: int = 0,
    ) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.context_length = context_length
        self.sot_token_id = sot_token_id
        self.eot_token_id = eot_token_id
        self.pad_token_id = pad_token_id

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, manifest: Manifest | None = None) -> ClipTokenizer:
        """Load the bundle's tokenizer file; reads the manifest (unverified) when not given."""
        bundle_dir = Path(bundle_dir)
        manifest = manifest or load_manifest(bundle_dir, verify=False)
        tokenizer = Tokenizer.from_file(str(bundle_dir / manifest.tokenizer_file))
        return cls(
            tokenizer,
            context_length=manifest.context_length,
            sot_token_id=manifest.sot_token_id,
            eot_token_id=manifest.eot_token_id,
            pad_token_id=manifest.pad_token_id,
        )

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Full token ids per text, ``[SOT, ..., EOT]``, never truncated."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single str")
        cleaned = [clean_text(t) for t in texts]
        return [enc.ids for enc in self._tokenizer.encode_batch(cleaned)]

    def pad(self, ids_list: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
        """int64 [N, L], each row zero-padded after its EOT.

        L defaults to the longest row (serving trims to the batch); ValueError if a row is
        longer than `length` or the list is empty.
        """
        if not ids_list:
            raise ValueError("pad needs at least one sequence")
        longest = max(len(ids) for ids in ids_list)
        length = longest if length is None else length
        if longest > length:
            raise ValueError(f"a sequence has {longest} tokens, more than the length {length}")
        out = np.full((len(ids_list), length), self.pad_token_id, dtype=np.int64)
        for i, ids in enumerate(ids_list):
            out[i, : len(ids)] = ids
        return out
