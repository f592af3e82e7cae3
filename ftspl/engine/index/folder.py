"""The files of an index folder (``<home>/index``), by name, and what ``--rebuild`` deletes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftspl.engine.errors import IndexStateError

STORE_NAME = "shapes.sqlite"  #: the SQLite store, the source of truth
ANN_NAME = "shapes.hnsw"  #: the ANN cache's manifest (its payload files sit beside it)
LOCK_NAME = "writer.lock"  #: the one writer's lock file (never deleted)
PARTS_DIR = "reembed"  #: a re-embed's part files, until its swap


@dataclass(frozen=True)
class IndexFolder:
    """Where an index's files live (:meth:`at` names them all from the folder)."""

    dir: Path
    store: Path
    ann: Path
    lock: Path
    parts: Path

    @classmethod
    def at(cls, folder: str | Path) -> IndexFolder:
        d = Path(folder)
        return cls(d, d / STORE_NAME, d / ANN_NAME, d / LOCK_NAME, d / PARTS_DIR)

    def exists(self) -> bool:
        return self.store.exists()

    def require(self) -> None:
        """Refuse a folder that holds no index yet."""
        if not self.exists():
            raise IndexStateError(f"{self.dir}: no index yet; run 'ftspl index add FOLDER' first")

    def wipe(self) -> None:
        """Delete the store, its WAL/SHM files and the ANN cache (``--rebuild``; call it under the lock)."""
        if not self.store.exists():
            return
        for p in [self.store, self.ann, *self.dir.glob(STORE_NAME + "-*"), *self.dir.glob(ANN_NAME + ".*")]:
            p.unlink(missing_ok=True)


__all__ = ["ANN_NAME", "LOCK_NAME", "PARTS_DIR", "STORE_NAME", "IndexFolder"]
