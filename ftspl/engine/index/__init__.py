"""Index: the shape library (add, remove, query), its SQLite store, ANN backends, writer lock and verify."""
