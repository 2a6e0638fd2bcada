"""`EdgeIndex`: Qdrant's engine in-process (`qdrant_edge`), its metadata, filters and background HNSW builds."""
