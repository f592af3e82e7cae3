"""Photo queries against the index: a read-only view that is safe while a writer runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ftspl.engine.errors import IndexStateError, UsageError

if TYPE_CHECKING:
    from ftspl.engine.index.library import Library


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    distance: float
    label: str | None
    kind: str


@dataclass
class QueryResult:
    photo: str
    hits: list[Hit]


class Reader:
    """Read-only view of the index for queries; safe while a writer runs."""

    def __init__(self, lib: Library) -> None:
        from ftspl.engine.index.store import ShapeStore

        if not lib.exists():
            raise IndexStateError(f"{lib.dir}: no index yet; run 'ftspl index add FOLDER' first")
        self.lib = lib
        from ftspl.engine.model.encoders import IMAGE_ENCODER

        self.store = ShapeStore(lib.store_path, readonly=True)
        try:
            lib.check_model(self.store)
            lib.encoders.warm(IMAGE_ENCODER)  # photo queries need it: build it while the index loads
            self.ann = lib.open_ann(self.store)
        except BaseException:
            # never exit while onnxruntime is still building a session in the warm thread:
            # tearing down its thread pool mid-build aborts the process (SIGABRT)
            lib.encoders.wait_warm()
            self.store.close()
            raise

    def close(self) -> None:
        self.lib.encoders.wait_warm()  # see __init__: no exit while a session is being built
        self.store.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Nearest shapes for each embedding; ``k`` is clamped to the index size."""
        if k < 1:
            raise UsageError("--top must be at least 1")
        n = len(self.ann)
        if n == 0 or len(embeddings) == 0:
            return [[] for _ in range(len(embeddings))]
        kk = min(n, k)
        ids, dists = self.ann.query(np.asarray(embeddings, np.float32), kk)
        out: list[list[Hit]] = []
        for row_ids, row_d in zip(ids, dists):
            rows = {r.id: r for r in self.store.get([int(i) for i in row_ids])}
            hits = []
            for i, d in zip(row_ids, row_d):
                r = rows.get(int(i))
                if r is None:  # removed by a writer since this reader opened
                    continue
                hits.append(Hit(len(hits) + 1, int(i), r.path, float(d), r.label, r.kind))
            out.append(hits[:k])
        return out

    def query_photos(self, photos: list[str | Path], k: int) -> list[QueryResult]:
        """Decode the photos and search in one batch; a bad photo raises ImageLoadError."""
        from ftspl.engine.loading.photos import load_photo

        return self.query_images([load_photo(p) for p in photos], [str(p) for p in photos], k)

    def query_images(self, images: list, names: list[str], k: int) -> list[QueryResult]:
        """Search with already decoded RGB images (one batch), e.g. after per-file checks."""
        from ftspl.engine.model.preprocess import to_tensor

        pre = self.lib.encoders.preprocess
        if not images:
            return []
        emb = self.lib.encoders.embed_photos(np.stack([to_tensor(im, pre) for im in images]))
        return [QueryResult(n, h) for n, h in zip(names, self.search(emb, k))]


__all__ = ["Reader", "Hit", "QueryResult"]
