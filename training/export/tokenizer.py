"""Build an HF `tokenizers` JSON equivalent to open_clip's `SimpleTokenizer` (CLIP BPE).

The JSON covers everything after open_clip's text cleaning: pre-tokenisation with CLIP's
regex, byte-to-unicode mapping, BPE with the ``</w>`` end-of-word suffix, and the
``<start_of_text> ... <end_of_text>`` template. Cleaning (``ftfy.fix_text``, ``html.unescape``
twice, whitespace collapse, lowercase) runs in Python in `clipserve.serving.embedding.tokenizer`,
because ftfy has no `tokenizers` equivalent; the JSON's normaliser repeats the idempotent
whitespace/lowercase steps so the file is also usable on its own for plain text.

No truncation and no padding are configured: serving rejects over-long texts instead of
silently truncating them, and pads per batch.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# open_clip's SimpleTokenizer pattern, minus the special-token alternatives (added tokens
# are split out before pre-tokenisation by `tokenizers` itself).
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# open_clip reads this many merges from its bpe file (49152 - 256 - 2).
NUM_MERGES = 49152 - 256 - 2


def default_bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (same as open_clip's)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def clip_bpe(path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    """open_clip's vocabulary before its two special tokens (256 byte symbols, the same with
    ``</w>``, then every merge's symbol in rank order) and the merges, from its bpe file."""
    with gzip.open(path) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    return vocab + ["".join(m) for m in merges], merges


def build_clip_tokenizer(bpe_path: str | Path | None = None) -> Tokenizer:
    """Return a `tokenizers.Tokenizer` producing the same ids as open_clip's SimpleTokenizer.

    Ids match open_clip's vocabulary layout: 256 byte symbols, the same with ``</w>``, the
    merges in rank order, then ``<start_of_text>`` (49406) and ``<end_of_text>`` (49407).
    """
    path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
    vocab_list, merges = clip_bpe(path)
    vocab_list += [SOT_TOKEN, EOT_TOKEN]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):
        raise ValueError(f"{path}: duplicate vocabulary entries; not a CLIP bpe file")

    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for a, b in merges],
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Keep only the regex matches; whitespace between them is dropped, as in open_clip.
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    tok.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
    sot, eot = vocab[SOT_TOKEN], vocab[EOT_TOKEN]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}",
        special_tokens=[(SOT_TOKEN, sot), (EOT_TOKEN, eot)],
    )
    return tok


def write_clip_tokenizer(path: str | Path, bpe_path: str | Path | None = None) -> dict[str, int]:
    """Write tokenizer.json to `path`; returns the special ids {sot, eot, pad, vocab_size}."""
    tok = build_clip_tokenizer(bpe_path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    vocab = tok.get_vocab(with_added_tokens=True)
    return {
        "sot": vocab[SOT_TOKEN],
        "eot": vocab[EOT_TOKEN],
        "pad": 0,  # open_clip zero-pads after EOT
        "vocab_size": tok.get_vocab_size(),
    }
