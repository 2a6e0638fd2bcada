"""The index side of the server: `IndexService` (Upsert, Query and the collection API), provenance checks, dedup, MMR, page tokens."""
