"""Indexing on a Ray cluster (``ftspl index add ROOT --ray``); needs the ``[ray]`` extra.

Ray is imported only in this package, and only when a command asks for it:

* :mod:`ftspl.scale.cluster` connects to (or starts) Ray and sizes the actor pools;
* :mod:`ftspl.scale.stages` holds the two actor classes: render (the render
  worker's child process, with its time limit, crash isolation and caps) and
  encode (one onnxruntime session per actor, running the engine's encode step,
  :func:`ftspl.engine.index.pipeline.encode.encode_views`);
* :mod:`ftspl.scale.driver` builds the Ray Data pipeline and hands the encoded
  shapes, through the engine's :class:`~ftspl.engine.index.pipeline.commit.Committer`,
  to the same sinks as the local path (SQLite + HNSW through the single writer,
  or Parquet shards).
"""
