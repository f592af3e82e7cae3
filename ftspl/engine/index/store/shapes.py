"""SQLite shape store: metadata and embeddings, the index's source of truth.

The HNSW file is a derived cache that can always be rebuilt from this store.
To make that cheap and crash-safe, every committed change bumps a
``generation`` counter and stamps the rows it touched (``changed_gen``); removed
ids leave a tombstone. An ANN cache saved with generation *g* catches up with
:meth:`ShapeStore.changes_since` instead of a full rebuild, and a crash between
"store committed" and "cache saved" is detected by comparing generations.

Ids come from ``INTEGER PRIMARY KEY AUTOINCREMENT`` so an id is never reused:
a stale cache can never map an old id to a different shape.

Concurrency: one writer (guarded by :class:`ftspl.engine.index.store.lock.WriterLock`), any
number of readers. The database runs in WAL mode, so a read-only handle
(``readonly=True``) sees the last committed state and never blocks or is
blocked by a running ``index add``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.store import viewcodes
from ftspl.engine.index.store.embeddings import EmbeddingReads
from ftspl.engine.index.store.housekeeping import Housekeeping
from ftspl.engine.index.store.schema import (
    REBUILD_HINT,
    ShapeRecord,
    ShapeRow,
    sqlite_errors,
    chunks,
    connect,
    normalize_path,
    under_clause,
    prepare,
    validate_record,
)

if TYPE_CHECKING:  # typing.Self needs Python 3.11; annotations are not evaluated
    from typing_extensions import Self

log = logging.getLogger(__name__)

_SQL_CHUNK = 500  # stay well below SQLite's bound-variable limit

class ShapeStore(EmbeddingReads, Housekeeping):
    """Shapes, their embeddings and the index's model identity, in one SQLite file.

    Write verbs run in one transaction each (or join an enclosing
    :meth:`batch`) and bump the generation once per committed change.
    """

    def __init__(self, path: str | Path, readonly: bool = False, busy_timeout_s: float = 30.0,
                 check_same_thread: bool = True) -> None:
        """``check_same_thread=False``: other threads may use (and close) it; the caller serialises that use."""
        self.path = Path(path)
        self.readonly = readonly
        self._txn_depth = 0
        self._dirty = False
        self._gen = 0
        try:
            self._conn = connect(self.path, readonly, busy_timeout_s, check_same_thread)
        except sqlite3.DatabaseError as exc:
            raise IndexStateError(f"{self.path}: cannot open index database ({exc}); {REBUILD_HINT}") from None
        try:
            prepare(self._conn, self.path, readonly)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise IndexStateError(f"{self.path}: not a valid index database ({exc}); {REBUILD_HINT}") from None
        except IndexStateError:
            self._conn.close()
            raise

    # ---- lifecycle ----
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions ----
    @contextlib.contextmanager
    def batch(self) -> Iterator[int]:
        """One write transaction for several verbs; yields the generation it will commit.

        Verbs called inside join it; the generation is bumped once, and only if
        something changed. An exception rolls everything back.
        """
        if self.readonly:
            raise IndexStateError(f"{self.path}: opened read-only; cannot write")
        if self._txn_depth:
            self._txn_depth += 1
            try:
                yield self._gen
            finally:
                self._txn_depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._txn_depth, self._dirty = 1, False
        try:
            self._gen = self._read_generation() + 1
            yield self._gen
            if self._dirty:
                self._conn.execute("UPDATE info SET value = ? WHERE key = 'generation'", (self._gen,))
            self._conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) has already rolled back; a second ROLLBACK
            # would raise "no transaction is active" and hide the real error.
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise
        finally:
            self._txn_depth, self._dirty = 0, False

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[int]:
        """A consistent read view (one read transaction); yields its generation.

        Use it to pair ``generation()`` with ``all_embeddings()`` when
        (re)building an ANN cache from a store another process may be writing.
        """
        if self._conn.in_transaction:  # inside batch() or another snapshot: already consistent
            yield self._read_generation()
            return
        self._conn.execute("BEGIN")
        try:
            yield self._read_generation()
        finally:
            self._conn.execute("COMMIT")

    def _read_generation(self) -> int:
        row = self._conn.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    # ---- info ----
    @sqlite_errors
    def get_info(self) -> dict[str, Any]:
        """All ``info`` keys: model_id, model_hash, render_spec_hash, embed_dim, created, generation."""
        return {k: v for k, v in self._conn.execute("SELECT key, value FROM info")}

    @sqlite_errors
    def set_info(self, key: str | None = None, value: str | float | None = None, /,
                 **values: str | float | None) -> None:
        """Set ``info`` keys: ``set_info("k", v)`` or ``set_info(k=v, ...)`` (``generation`` is refused)."""
        if key is not None:
            values[key] = value
        if "generation" in values:
            raise ValueError("generation is managed by the store")
        with self.batch():
            self._conn.executemany(
                "INSERT INTO info (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )
            self._dirty = True

    @sqlite_errors
    def ensure_compatible(
        self, model_id: str, model_hash: str, render_spec_hash: str, embed_dim: int
    ) -> dict[str, Any]:
        """Claim an empty store for this model/spec, or refuse one built by another.

        A store holding no shapes is (re)claimed; otherwise all of
        :data:`COMPAT_KEYS` must match, because embeddings from another model or
        render spec are not comparable. Returns the info dict.
        """
        wanted = {
            "model_id": str(model_id),
            "model_hash": str(model_hash),
            "render_spec_hash": str(render_spec_hash),
            "embed_dim": int(embed_dim),
        }
        info = self.get_info()
        if not self.readonly and (info.get("model_hash") is None or self.count() == 0):
            if any(info.get(k) != v for k, v in wanted.items()):
                self.set_info(**wanted)
            return self.get_info()
        if info.get("model_hash") is None:
            raise IndexStateError(f"{self.path}: shape index is empty; build it with `ftspl index add FOLDER`")
        diffs = [f"{k} {info.get(k)!r} (now {v!r})" for k, v in wanted.items() if info.get(k) != v]
        if diffs:
            raise IndexStateError(
                f"{self.path}: index was built with another model or render spec: {', '.join(diffs)}; {REBUILD_HINT}"
            )
        return info

    # ---- reads ----
    @sqlite_errors
    def generation(self) -> int:
        """Counter bumped by every committed change (compare with an ANN cache's)."""
        return self._read_generation()

    @sqlite_errors
    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM shapes").fetchone()[0])

    @sqlite_errors
    def lookup(self, path: str | Path) -> tuple[int, str] | None:
        """``(id, content_hash)`` of the shape stored for ``path``, or None."""
        row = self._conn.execute(
            "SELECT id, content_hash FROM shapes WHERE path = ?", (normalize_path(path),)
        ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    @sqlite_errors
    def entries(self, prefix: str | Path | None = None) -> dict[str, tuple[int, str]]:
        """``path -> (id, content_hash)`` for every shape (under ``prefix`` if given).

        One query instead of a ``lookup`` per file when scanning a folder; the
        paths absent from the scan are the ones to remove.
        """
        sql, args = "SELECT path, id, content_hash FROM shapes", ()
        if prefix is not None:
            where, args = under_clause(prefix)
            sql += " WHERE " + where
        return {p: (int(i), str(h)) for p, i, h in self._conn.execute(sql, args)}

    @sqlite_errors
    def get(self, ids: Iterable[int], previews: bool = False) -> list[ShapeRow]:
        """Rows for ``ids`` in the given order, skipping ids that no longer exist."""
        wanted = [int(i) for i in (ids.ravel() if isinstance(ids, np.ndarray) else ids)]
        cols = "id, path, content_hash, label, faces, kind, added" + (", preview" if previews else "")
        found: dict[int, ShapeRow] = {}
        with self.snapshot():
            for chunk in chunks(sorted(set(wanted)), _SQL_CHUNK):
                marks = ",".join("?" * len(chunk))
                for r in self._conn.execute(f"SELECT {cols} FROM shapes WHERE id IN ({marks})", chunk):
                    found[int(r[0])] = ShapeRow(
                        id=int(r[0]), path=r[1], content_hash=r[2], label=r[3],
                        faces=None if r[4] is None else int(r[4]), kind=r[5], added=float(r[6]),
                        preview=r[7] if previews else None,
                    )
        return [found[i] for i in wanted if i in found]

    @sqlite_errors
    def labels(self) -> dict[str, int]:
        """``label -> number of shapes``, most frequent first (unlabelled shapes are not listed)."""
        rows = self._conn.execute(
            "SELECT label, count(*) AS n FROM shapes WHERE label IS NOT NULL GROUP BY label ORDER BY n DESC, label"
        )
        return {str(lab): int(n) for lab, n in rows}

    # ---- writes ----
    @sqlite_errors
    def upsert_batch(self, records: Sequence[ShapeRecord]) -> list[int]:
        """Insert or update shapes (keyed by resolved path) in one transaction; their ids in order.

        An updated path keeps its id, so an ANN index just replaces the vector.
        """
        if not records:
            return []
        dim = self._embed_dim()
        rows = []
        seen: set[str] = set()
        for rec in records:
            path = normalize_path(rec.path)
            if path in seen:
                raise ValueError(f"{path}: listed twice in one batch")
            seen.add(path)
            rows.append((path, *validate_record(rec, dim, path)))
        now = time.time()
        ids: list[int] = []
        with self.batch() as gen:
            for path, content_hash, label, faces, kind, blob, preview in rows:
                row = self._conn.execute(
                    """INSERT INTO shapes
                         (path, content_hash, label, faces, kind, added, embedding, preview, changed_gen)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (path) DO UPDATE SET
                         content_hash = excluded.content_hash, label = excluded.label,
                         faces = excluded.faces, kind = excluded.kind, added = excluded.added,
                         embedding = excluded.embedding, preview = excluded.preview,
                         changed_gen = excluded.changed_gen
                       RETURNING id""",
                    (path, content_hash, label, faces, kind, now, blob, preview, gen),
                ).fetchone()
                ids.append(int(row[0]))
            viewcodes.write(self._conn, ids, records)
            self._dirty = True
        return ids

    @sqlite_errors
    def view_embeddings(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """``id -> (V, D)`` per-view embeddings of the shapes that have them; ``view_strip``: their views."""
        return viewcodes.read(self._conn, ids)

    @sqlite_errors
    def view_strip(self, shape_id: int) -> tuple[bytes, int] | None:
        return viewcodes.read_strip(self._conn, shape_id)

    @sqlite_errors
    def remove_paths(self, paths: Iterable[str | Path]) -> list[int]:
        """Delete the shapes stored for ``paths`` (unknown paths are ignored); the ids removed."""
        keys = sorted({normalize_path(p) for p in paths})
        removed: list[int] = []
        if not keys:
            return removed
        with self.batch():
            for chunk in chunks(keys, _SQL_CHUNK):
                marks = ",".join("?" * len(chunk))
                removed += [int(r[0]) for r in self._conn.execute(
                    f"DELETE FROM shapes WHERE path IN ({marks}) RETURNING id", chunk
                ).fetchall()]
            self._tombstone(removed)
        return sorted(removed)

    @sqlite_errors
    def remove_under(self, prefix: str | Path) -> list[int]:
        """Delete every shape whose path is ``prefix`` or lies below that folder; the ids removed."""
        where, args = under_clause(prefix)
        with self.batch():
            removed = [int(r[0]) for r in self._conn.execute(
                f"DELETE FROM shapes WHERE {where} RETURNING id", args
            ).fetchall()]
            self._tombstone(removed)
        return sorted(removed)

    def _tombstone(self, ids: list[int]) -> None:
        if ids:
            self._conn.executemany(
                "INSERT OR REPLACE INTO removed (id, gen) VALUES (?, ?)", [(i, self._gen) for i in ids]
            )
            self._dirty = True

    # ---- health ----
    def integrity_check(self) -> list[str]:
        """Problems found by ``PRAGMA quick_check`` (empty list: the file is sound)."""
        try:
            rows = [str(r[0]) for r in self._conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [] if rows == ["ok"] else rows
