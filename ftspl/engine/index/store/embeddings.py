"""The embedding reads of :class:`~ftspl.engine.index.store.shapes.ShapeStore`: what an ANN cache is built from.

Every stored embedding in id order (streamed in chunks into one matrix), or only
the changes after a generation (:meth:`EmbeddingReads.changes_since`), so a
cache saved at generation *g* catches up without a full rebuild
(:mod:`ftspl.engine.index.anncache`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.store.schema import REBUILD_HINT, chunks, sqlite_errors


class EmbeddingReads:
    """Mixed into :class:`~ftspl.engine.index.store.shapes.ShapeStore` (uses its connection, ``snapshot`` and ``count``)."""

    def iter_embeddings(self, chunk: int = 8192, since: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, float32 matrix)`` chunks in id order; ``since``: only rows changed after that generation.

        Streams with keyset pagination so memory stays at one chunk. Wrap in
        :meth:`snapshot` for a consistent view across chunks.
        """
        dim = self._embed_dim()
        last = -1
        sql = "SELECT id, embedding FROM shapes WHERE id > ?"
        extra: tuple[int, ...] = ()
        if since is not None:
            sql += " AND changed_gen > ?"
            extra = (int(since),)
        sql += " ORDER BY id LIMIT ?"
        while True:
            rows = self._conn.execute(sql, (last, *extra, int(chunk))).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
            if dim is None:
                dim = len(rows[0][1]) // 4
            if mat.size != len(rows) * dim:
                raise IndexStateError(f"{self.path}: stored embeddings do not all have {dim} values; {REBUILD_HINT}")
            yield ids, mat.reshape(len(rows), dim).astype(np.float32)
            last = int(ids[-1])

    @sqlite_errors
    def all_embeddings(self, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Every ``(ids, matrix)``, id order, filled chunk by chunk into one preallocated matrix."""
        with self.snapshot():
            n = self.count()
            dim = self._embed_dim()
            if dim is None:
                row = self._conn.execute("SELECT length(embedding) FROM shapes LIMIT 1").fetchone()
                dim = int(row[0]) // 4 if row else 0
            ids = np.zeros(n, dtype=np.int64)
            mat = np.zeros((n, dim), dtype=np.float32)
            pos = 0
            for cid, cmat in self.iter_embeddings(chunk):
                ids[pos : pos + len(cid)] = cid
                mat[pos : pos + len(cid)] = cmat
                pos += len(cid)
        return ids[:pos], mat[:pos]

    @sqlite_errors
    def embeddings_of(self, ids: list[int]) -> dict[int, np.ndarray]:
        """``id -> embedding`` of the given shapes (ids no longer stored are left out): exact distances
        for a handful of candidates (regional search) without reading the whole matrix."""
        out: dict[int, np.ndarray] = {}
        for chunk in chunks(sorted({int(i) for i in ids}), 500):
            marks = ",".join("?" * len(chunk))
            for i, blob in self._conn.execute(f"SELECT id, embedding FROM shapes WHERE id IN ({marks})", chunk):
                out[int(i)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return out

    @sqlite_errors
    def changes_since(self, generation: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What an ANN cache saved at ``generation`` must apply: ``(upsert_ids, vectors, removed_ids)``."""
        with self.snapshot() as now:
            if generation > now:
                raise IndexStateError(
                    f"{self.path}: vector index is newer (generation {generation}) than its store ({now}); "
                    + REBUILD_HINT
                )
            parts = list(self.iter_embeddings(since=generation))
            removed = np.fromiter(
                (r[0] for r in self._conn.execute("SELECT id FROM removed WHERE gen > ? ORDER BY id", (generation,))),
                dtype=np.int64,
            )
        dim = self._embed_dim() or (parts[0][1].shape[1] if parts else 0)
        if parts:
            ids = np.concatenate([p[0] for p in parts])
            mat = np.concatenate([p[1] for p in parts])
        else:
            ids, mat = np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        return ids, mat, removed

    def _embed_dim(self) -> int | None:
        row = self._conn.execute("SELECT value FROM info WHERE key = 'embed_dim'").fetchone()
        return int(row[0]) if row and row[0] is not None else None
