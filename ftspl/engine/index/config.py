"""The options of writing to an index (``ftspl index add``, ``merge``, ``remove``, ``reembed``) and of opening it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexConfig:
    """Options of ``ftspl index add`` and of opening the index."""

    label_from: str = "top"
    up: str | None = None  #: None: the index's up axis, or the model's default for a new index
    batch_shapes: int = 4  #: shapes per onnxruntime call (small: the last batch runs alone on one core)
    commit_every: int = 32  #: shapes per SQLite transaction
    save_ann_every_s: float = 30.0  #: how often a long add refreshes the HNSW file
    wait_lock: bool = False
    ann_backend: str | None = None  #: a key of ann.ANN_BACKENDS for a new index (None: ann.DEFAULT_BACKEND)
    ann_m: int | None = None  #: HNSW M (None: the ann module's default)
    ann_ef_construction: int | None = None
    ann_ef_search: int | None = None
    rebuild: bool = False  #: drop an index made by another model/spec and start again
    #: file size / face / vertex caps (None: MeshLimits' defaults; typed loosely so that
    #: a query never imports the mesh loaders and trimesh)
    limits: object | None = None
    file_timeout_s: float = 60.0  #: per-file load+render limit; slower files are skipped
    #: render children side by side (0: one per core, at most 4; see ftspl.engine.rendering.pool)
    render_processes: int = 0

    def graph_params(self) -> dict:
        """The ``--hnsw-*`` settings that were given, by the constructor keyword of the graph backends."""
        return {"M": self.ann_m, "ef_construction": self.ann_ef_construction, "ef_search": self.ann_ef_search}


__all__ = ["IndexConfig"]
