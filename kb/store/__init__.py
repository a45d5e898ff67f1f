"""Collections on disk: SQLite rows, FAISS vectors and BM25, committed as one generation."""
