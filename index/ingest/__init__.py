"""Bulk ingest into a clipserve index: sources (manifests, image folders), a crash-safe
journal, retries, and the embed/write pipeline behind `clipserve index` and `clipserve reindex`."""
