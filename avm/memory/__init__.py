"""The content-addressed store: hot (dict), warm (zstd), cold (LMDB)."""
