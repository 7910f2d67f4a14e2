"""Data loaders: every data set becomes the generic in-memory / JSONL shape of `server.data.base`."""
