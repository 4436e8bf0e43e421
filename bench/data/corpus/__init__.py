"""The embedded corpus: an offline-synthesised audiovisual isolated-word corpus (see build.py)."""
