"""What the shape store holds: its SQL schema, how a database file is opened and created, the record
types, and how SQLite's errors map to ours.

Kept apart from :mod:`ftspl.engine.index.store.shapes` (which runs the transactions) so
the data model reads on one page and callers that only build records (the add
pipeline, shard writers) need not know about connections.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ftspl.engine.errors import IndexStateError, WriteError

SCHEMA_VERSION = 1
KINDS = ("mesh", "views")  #: a shape indexed from a mesh file, or from pre-rendered views
#: keys of ``info`` that decide whether embeddings are comparable
COMPAT_KEYS = ("model_id", "model_hash", "render_spec_hash", "embed_dim")

REBUILD_HINT = "rebuild with `ftspl index add FOLDER --rebuild` or delete the index folder"

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE info (key TEXT PRIMARY KEY, value);
CREATE TABLE shapes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,
    label TEXT,
    faces INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('mesh', 'views')),
    added REAL NOT NULL,
    embedding BLOB NOT NULL,
    preview BLOB,
    changed_gen INTEGER NOT NULL
);
CREATE INDEX shapes_changed_gen ON shapes (changed_gen);
CREATE INDEX shapes_label ON shapes (label);
CREATE TABLE removed (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX removed_gen ON removed (gen);
"""


@dataclass(frozen=True)
class ShapeRecord:
    """One shape to insert or update (keyed by ``path``)."""

    path: str | Path
    content_hash: str
    label: str | None
    faces: int | None
    kind: str
    embedding: np.ndarray
    preview: bytes | None = None
    #: (V, D) per-view embeddings and a strip of the views (models with per-view output;
    #: stored as int8 codes in the same transaction, see :mod:`ftspl.engine.index.store.viewcodes`)
    view_embeddings: np.ndarray | None = None
    view_strip: bytes | None = None


@dataclass(frozen=True)
class ShapeRow:
    """A stored shape's metadata, as returned for query results."""

    id: int
    path: str
    content_hash: str
    label: str | None
    faces: int | None
    kind: str
    added: float
    preview: bytes | None = None


def normalize_path(path: str | Path) -> str:
    """The store's key for a file: absolute, symlinks resolved."""
    return str(Path(path).expanduser().resolve())


def validate_record(rec: ShapeRecord, dim: int | None, path: str) -> tuple[Any, ...]:
    """Check one record; returns the column values after ``path``."""
    if rec.kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {rec.kind!r}")
    if not isinstance(rec.content_hash, str) or not rec.content_hash:
        raise ValueError(f"{path}: content_hash must be a non-empty string")
    emb = np.asarray(rec.embedding, dtype=np.float32)
    if emb.ndim != 1 or emb.size == 0:
        raise ValueError(f"{path}: embedding must be a non-empty 1-d vector, got shape {emb.shape}")
    if dim is not None and emb.size != dim:
        raise ValueError(f"{path}: embedding has {emb.size} values, the index stores {dim}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{path}: embedding contains NaN or infinite values")
    if rec.preview is not None and not isinstance(rec.preview, (bytes, bytearray, memoryview)):
        raise ValueError(f"{path}: preview must be PNG bytes or None")
    faces = None if rec.faces is None else int(rec.faces)
    preview = None if rec.preview is None else bytes(rec.preview)
    return rec.content_hash, rec.label, faces, rec.kind, emb.astype("<f4").tobytes(), preview


def connect(path: Path, readonly: bool, busy_timeout_s: float, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode: read-only (query_only) or the writer's, in WAL mode.

    ``check_same_thread=False`` lets other threads use it; the caller then serialises that use.
    """
    if readonly:
        if not path.is_file():
            raise IndexStateError(f"{path}: no shape index here; build one with `ftspl index add FOLDER`")
        uri = path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout_s,
                               check_same_thread=check_same_thread)
        conn.execute("PRAGMA query_only = ON")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=check_same_thread)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise IndexStateError(f"{path}: cannot switch the database to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn

def prepare(conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Create the schema in a fresh file; check the version of an existing one."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        if readonly:
            raise IndexStateError(f"{path}: shape index is empty; build it with `ftspl index add FOLDER`")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another writer may have just created it.
            if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.executemany(
                    "INSERT INTO info (key, value) VALUES (?, ?)",
                    [("generation", 0), ("created", time.time())],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"schema_version", "info", "shapes", "removed"} <= tables:
        raise IndexStateError(f"{path}: not an ftspl shape index; {REBUILD_HINT}")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    if version is None or version > SCHEMA_VERSION:
        raise IndexStateError(
            f"{path}: index schema version {version} is not supported (this ftspl reads "
            f"{SCHEMA_VERSION}); upgrade ftspl or {REBUILD_HINT}"
        )


# -- how SQLite's errors and queries map to ours --------------------------------------------
_F = TypeVar("_F", bound=Callable[..., Any])


#: SQLite messages for a write the file system refused (ENOSPC is "full", EFBIG/EIO "disk I/O error").
_WRITE_FAILURES = ("database or disk is full", "disk i/o error", "attempt to write a readonly database")


def sqlite_errors(method: _F) -> _F:
    """Turn SQLite's 'not a (valid) database' into IndexStateError and a refused write into WriteError.

    A refused write (disk full, file-size limit, I/O error) rolls the open
    transaction back, so the message can promise that every batch committed
    before is intact.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and any(m in str(exc).lower() for m in _WRITE_FAILURES):
                raise WriteError(self.path, f"SQLite: {exc}") from exc
            if isinstance(exc, (sqlite3.OperationalError, sqlite3.IntegrityError)):
                raise
            raise IndexStateError(f"{self.path}: corrupt index database ({exc}); {REBUILD_HINT}") from None

    return wrapper  # type: ignore[return-value]


def under_clause(prefix: str | Path) -> tuple[str, tuple[str, ...]]:
    """SQL for 'path is prefix or below it', as a range scan on the path index (no LIKE escaping)."""
    base = normalize_path(prefix)
    folder = base if base.endswith("/") else base + "/"
    # Every path below ``folder`` sorts in [folder, folder[:-1] + '0'): '0' follows '/' in ASCII.
    return "(path = ? OR (path >= ? AND path < ?))", (base, folder, folder[:-1] + "0")


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
