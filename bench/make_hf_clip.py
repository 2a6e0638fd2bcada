"""Save a random-initialised Hugging Face `CLIPModel` of the ViT-B-32 configuration, with its
tokenizer and image processor, to a directory: the peer model for bench/bench_serve.py.

    .bench-venv/infinity/bin/python bench/make_hf_clip.py --bpe BPE_GZ --out DIR

Runs in the peer's own virtualenv (transformers, torch). No hub access: the tokenizer's
vocab.json / merges.txt are rebuilt from open_clip's bpe_simple_vocab_16e6.txt.gz exactly as
open_clip's SimpleTokenizer builds its encoder (256 byte symbols, the same with "</w>", the
first 48,894 merges, then <|startoftext|> and <|endoftext|>: 49,408 ids), which is how the
original CLIP vocabulary on the hub was made. Speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

VOCAB_SIZE = 49408


def _tokenizer_export():
    """clipserve's training/export/tokenizer.py, loaded by path: this script runs in the peer's
    venv, where clipserve is not installed (the module needs only `tokenizers`)."""
    path = Path(__file__).resolve().parent.parent / "training" / "export" / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("clipserve_tokenizer_export", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clip_vocab(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """HF CLIP's vocab.json and merges.txt entries: open_clip's vocabulary with HF's names
    for the two special tokens."""
    vocab, pairs = _tokenizer_export().clip_bpe(bpe_gz)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(p) for p in pairs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bpe", type=Path, required=True, help="open_clip's bpe_simple_vocab_16e6.txt.gz"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizerFast,
    )

    encoder, merges = clip_vocab(args.bpe)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(encoder))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizerFast(
            vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=77
        )
    # CLIPConfig() defaults are openai/clip-vit-base-patch32's architecture: ViT-B/32 vision
    # (768 wide, 12 layers, 224 px, patch 32) and a 512-wide 12-layer text tower, dim 512.
    torch.manual_seed(args.seed)
    model = CLIPModel(CLIPConfig()).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        tokenizer=tokenizer,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert ids[0] == VOCAB_SIZE - 2 and ids[-1] == VOCAB_SIZE - 1, ids
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote random-init CLIPModel ViT-B-32 ({n_params / 1e6:.1f} M params) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
