"""The embedding path: tokenizer, bounded image decoding and preprocessing, the pixel budget, cross-request batching."""
