"""Scoring: the paper's retrieval metrics and ``ftspl eval`` over a labelled index."""
