"""Inference backends behind `EmbeddingBackend`: ONNX Runtime in-process, Triton through tritonclient, and the Triton model repository writer."""
