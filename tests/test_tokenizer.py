"""The bundle tokenizer (HF tokenizers + Python cleaning) against open_clip's SimpleTokenizer."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from clipserve.serving.embedding.tokenizer import ClipTokenizer

CORPUS = [
    "a photo of a cat",
    "A PHOTO OF A DOG",
    "MiXeD CaSe WoRdS and CamelCaseIdentifiers",
    "Hello, world! How's it going? (fine) [ok] {yes} <tag> ...!!!",
    "it's they're we've I'm you'll he'd",
    "prices: $12.99, 3.14159, 1,000,000 and 2024-05-17 at 10:30am",
    "naïve café résumé façade jalapeño Zürich Ångström",
    "Ελληνικά κείμενα ΣΊΣΥΦΟΣ, русский текст, العربية, עברית",
    "日本語のテキスト 中文文本 한국어 텍스트",
    "emoji 🐱🚀🎉 👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "tom &amp; jerry &lt;3 &quot;quoted&quot; &amp;amp; double &#39;apos&#39;",
    "  extra   whitespace\tand\ttabs\nand\nnewlines  \u00a0nbsp\u2003em space ",
    "mojibake: cafÃ© â€œquotesâ€\x9d",
    "ﬁ ligature, full-width ＡＢＣ１２３, combining e\u0301",
    "İstanbul DİYARBAKIR straße ß",
    "<start_of_text> literal special tokens <end_of_text>",
    "",
    "   ",
    "!!!???...,,,;;;",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["a long caption with many words"] * 20),
    "under_score snake_case kebab-case path/to/file.jpg http://example.com/x?y=1",
    "tabs\u200bzero\u200bwidth and soft\u00adhyphen",
    "Ⅻ ① ½ ² x² H₂O",
]


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer()


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> ClipTokenizer:
    return ClipTokenizer.from_bundle(tiny_bundle)


def test_ids_equal_open_clip_on_corpus(tokenizer: ClipTokenizer, reference) -> None:
    got = tokenizer.encode(CORPUS)
    for text, ids in zip(CORPUS, got, strict=True):
        want = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
        assert ids == want, f"mismatch for {text!r}"


def test_random_ascii_equals_open_clip(tokenizer: ClipTokenizer, reference) -> None:
    """Printable ASCII skips ftfy (a fast path); prove it changes nothing, '&' included."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.printable))
    texts = ["".join(rng.choice(alphabet, int(rng.integers(0, 60)))) for _ in range(500)]
    texts += ["&amp;&#x27;&lt;b&gt;", "\x1b[31mred\x1b[0m", "a\x00b\x7fc", "line\r\nbreak"]
    for text, ids in zip(texts, tokenizer.encode(texts), strict=True):
        want = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
        assert ids == want, f"mismatch for {text!r}"


def test_padded_ids_equal_open_clip_call_up_to_eot(tokenizer: ClipTokenizer, reference) -> None:
    """open_clip's __call__ (the training path) pads to context length; compare up to EOT."""
    short = [t for t in CORPUS if len(reference.encode(t)) + 2 <= tokenizer.context_length]
    ref = reference(short, context_length=tokenizer.context_length).numpy()
    ours = tokenizer.pad(tokenizer.encode(short), length=tokenizer.context_length)
    np.testing.assert_array_equal(ours, ref)


def test_no_truncation(tokenizer: ClipTokenizer) -> None:
    (ids,) = tokenizer.encode(["word " * 100])
    assert len(ids) == 102 and ids[0] == tokenizer.sot_token_id
    assert ids[-1] == tokenizer.eot_token_id


def test_pad_trims_to_longest_and_checks_length(tokenizer: ClipTokenizer) -> None:
    ids = tokenizer.encode(["a", "a photo of a cat"])
    out = tokenizer.pad(ids)
    assert out.dtype == np.int64 and out.shape == (2, 7)
    np.testing.assert_array_equal(out[0], [49406, 320, 49407, 0, 0, 0, 0])
    assert tokenizer.pad(ids, length=10).shape == (2, 10)
    with pytest.raises(ValueError, match="more than the length"):
        tokenizer.pad(ids, length=5)
    with pytest.raises(ValueError, match="at least one"):
        tokenizer.pad([])


def test_single_string_is_rejected(tokenizer: ClipTokenizer) -> None:
    with pytest.raises(TypeError):
        tokenizer.encode("not a list")  # type: ignore[arg-type]
