"""Hard-negative mining from the index: `clipserve mine` (`cli`) over `mine` (neighbours
through `clipserve.index`, k-means `kmeans`, the offline FN `filters`, the `plan` of
negatives and hard-batch groups) and `embed` (a checkpoint or an ONNX bundle)."""
