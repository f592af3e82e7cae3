"""The ANN interface every backend implements: few verbs, validation, and the on-disk manifest.

Every backend (:mod:`ftspl.engine.index.ann`) implements one interface
(``add``, ``remove``, ``query``, ``save``, ``load``, ``len``, ``in``, ``ids``,
``config``) so the engine swaps them by name. This module imports none of them:
the registry sits above it, so there is no import circle.

All store L2-normalised embeddings and report the *Euclidean* distance
(float32). Ids are int64 labels chosen by the caller: the SQLite store's row
ids, so a query result maps straight back to shape metadata.

On disk an index is a small JSON *manifest* at the path the caller names, plus
one payload file next to it whose name carries a random token
(``<name>.<token>.hnsw`` or ``.npz``). ``save`` writes and fsyncs the new payload
under a fresh name, then atomically replaces the manifest: that single
``os.replace`` is the commit point, so a crash or error at any moment leaves
either the old index or the new one, never a mix. Superseded payloads are
deleted after the commit. The manifest also carries caller metadata (e.g. the
store generation the index was built from) readable without loading the
payload (:func:`read_manifest`).

The HNSW index is a derived, rebuildable cache; SQLite is the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.files import atomic_write_bytes, fsync_file

log = logging.getLogger(__name__)

REBUILD = "rebuild with `ftspl index add FOLDER --rebuild`"

MANIFEST_FORMAT = "ftspl-ann"
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------
# Input validation shared by both backends
# --------------------------------------------------------------------------
def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Ids as a 1-d int64 array; negative ids are refused (hnswlib labels are unsigned)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a 1-d integer array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if (arr < 0).any():
        raise ValueError("ids must be non-negative")
    return arr


def as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Vectors as a C-contiguous float32 (n, dim) matrix; a 1-d vector is one row."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def check_batch(ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids within one add() call must be unique")


def check_k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k




def read_manifest(path: str | Path) -> dict[str, Any]:
    """The JSON manifest of a saved index (backend, params, ``meta``), without the payload.

    Cheap: lets the engine compare ``meta`` (e.g. the store generation the index
    was built from) before deciding to load or rebuild.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexStateError(f"{path}: no vector index here; build it with `ftspl index add FOLDER`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexStateError(
            f"{path}: unreadable vector index manifest ({exc}); " + REBUILD
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise IndexStateError(f"{path}: not an ftspl vector index; " + REBUILD)
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise IndexStateError(f"{path}: vector index written by a newer ftspl; upgrade ftspl or " + REBUILD)
    return manifest


def _payload_path(path: Path, manifest: dict[str, Any]) -> Path:
    name = manifest.get("payload")
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        raise IndexStateError(f"{path}: vector index manifest names no payload; " + REBUILD)
    payload = path.with_name(name)
    if not payload.is_file():
        raise IndexStateError(f"{payload}: vector index payload is missing; " + REBUILD)
    return payload


def _stale_payloads(path: Path, keep: str) -> Iterator[Path]:
    """Payload files of earlier saves of ``path`` (and interrupted ones), except ``keep``."""
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{16}\.(hnsw|npz)")
    for cand in path.parent.iterdir():
        if cand.name != keep and pattern.fullmatch(cand.name):
            yield cand


# --------------------------------------------------------------------------
# Common interface
# --------------------------------------------------------------------------
class AnnIndex(ABC):
    """The verbs every backend offers. ``meta`` travels with ``save``/``load``."""

    backend: ClassVar[str]
    payload_suffix: ClassVar[str]

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        #: free-form JSON-able metadata saved in the manifest (e.g. store generation)
        self.meta: dict[str, Any] = {}

    # ---- verbs ----
    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under ``ids``; an id already present is replaced."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids``; ids that are not present are ignored."""

    @abstractmethod
    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ids (int64) and Euclidean distances (float32), each (nq, min(k, len))."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """All live ids, sorted ascending (int64)."""

    @abstractmethod
    def __len__(self) -> int: ...

    def __contains__(self, id_: object) -> bool:
        try:
            key = int(id_)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
        return key >= 0 and self._has(key)

    @abstractmethod
    def _has(self, key: int) -> bool:
        """Whether the non-negative id ``key`` is live."""

    def _batch(self, ids: Iterable[int] | np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``add``'s arguments checked: ``(ids, vectors)``, or None for an empty batch."""
        ids = as_ids(ids)
        if len(ids) == 0:
            return None
        vectors = as_vectors(vectors, self.dim)
        check_batch(ids, vectors)
        return ids, vectors

    # ---- persistence ----
    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """Backend parameters for the manifest."""

    @abstractmethod
    def _write_payload(self, path: Path) -> None:
        """Write the payload (vectors / graph) to ``path`` (not yet fsynced)."""

    @classmethod
    @abstractmethod
    def _from_payload(cls, payload: Path, manifest: dict[str, Any]) -> "AnnIndex":
        """Rebuild an instance from a payload file and its manifest."""

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Save atomically: the manifest at ``path`` is replaced only once the payload is durable.

        ``meta`` (JSON-able) replaces ``self.meta`` and is stored in the manifest.
        """
        path = Path(path)
        if meta is not None:
            self.meta = dict(meta)
        token = secrets.token_hex(8)
        payload = path.with_name(f"{path.name}.{token}{self.payload_suffix}")
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "backend": self.backend,
            "dim": self.dim,
            "count": len(self),
            "payload": payload.name,
            "params": self._params(),
            "meta": self.meta,
        }
        blob = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        try:
            self._write_payload(payload)
            fsync_file(payload)
            atomic_write_bytes(path, blob)  # the commit point
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                payload.unlink()
            raise
        for stale in _stale_payloads(path, keep=payload.name):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def config(self) -> dict[str, Any]:
        """Constructor keywords (besides ``dim``) for an empty index with the same settings."""
        return {}

    @classmethod
    def load(cls, path: str | Path) -> "AnnIndex":
        """Load an index of this backend saved by ``save``; refuses a manifest of another backend.

        :func:`ftspl.engine.index.ann.load_index` loads whichever backend a manifest names.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("backend") != cls.backend:
            raise IndexStateError(
                f"{path}: vector index backend is {manifest.get('backend')!r}, not {cls.backend!r}; " + REBUILD
            )
        for attempt in range(3):
            try:
                payload = _payload_path(path, manifest)
                break
            except IndexStateError:
                # A writer may have committed a newer save and deleted this payload
                # between our two reads: follow the fresh manifest.
                fresh = read_manifest(path)
                if attempt == 2 or fresh.get("payload") == manifest.get("payload"):
                    raise
                manifest = fresh
        index = cls._from_payload(payload, manifest)
        index.meta = dict(manifest.get("meta") or {})
        return index
