"""The index's source of truth: one SQLite file of shapes and embeddings, and the lock of its one writer.

* :mod:`.schema`: the SQL schema, how a database file is opened and created, the
  record types (:class:`ShapeRecord` in, :class:`ShapeRow` out);
* :mod:`.shapes`: :class:`ShapeStore`, the transactions (generations, tombstones,
  the changes an ANN cache catches up with);
* :mod:`.viewcodes`: per-view embeddings as int8 codes and a strip of the views,
  written in the same transaction as their shape;
* :mod:`.lock`: :class:`~.lock.WriterLock`, one writer per index folder (flock).
"""

from ftspl.engine.index.store.schema import COMPAT_KEYS, ShapeRecord, ShapeRow, normalize_path
from ftspl.engine.index.store.shapes import ShapeStore

__all__ = ["COMPAT_KEYS", "ShapeRecord", "ShapeRow", "ShapeStore", "normalize_path"]
