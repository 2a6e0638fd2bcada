"""How training batches are drawn (`batches`: random, hard batches, mined negatives), the
loss's per-item side inputs (`side_inputs`), and re-mining with the current weights
(`remine`)."""
