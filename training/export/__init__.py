"""`clipserve export`: a checkpoint (or an open_clip model) to a serving bundle.

- `bundle`: the command (`main`), `export_bundle` and the parity check against PyTorch;
- `attention`: nn.MultiheadAttention re-stated batch-first for the dynamo exporter;
- `pooled`: the last transformer block at the pooled token only (also used by training,
  through `clipserve.training.towers`);
- `tokenizer`: open_clip's BPE written as a `tokenizers` tokenizer.json;
- `variants`: fp16 and int8 copies of the towers beside the fp32 ones;
- `patch_matmul`: the ViT patch convolution as a MatMul, so int8 quantisation covers it.

Importing this package imports none of them (training imports `pooled` without onnx).
"""
