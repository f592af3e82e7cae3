"""``ftspl eval``: labelled photos against the labelled index, with the paper's metrics.

Ranks the *whole* gallery for every photo with exact distances (metrics such
as ANMRR and the PR curve need the full ranking, not the HNSW top-k).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftspl.engine.errors import InputFileError, UsageError
from ftspl.engine.home import Home
from ftspl.engine.model.encoders import RuntimeConfig


def labelled_photos(root: Path) -> list[tuple[Path, str]]:
    """``root/<label>/**/<photo>`` -> [(path, label)], sorted."""
    from ftspl.engine.loading.photos import PHOTO_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder of labelled photos (QUERIES/<label>/*.jpg)")
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS:
            rel = p.relative_to(root).parts
            if len(rel) >= 2:
                out.append((p, rel[0]))
    if not out:
        raise UsageError(f"{root}: no photos found in label folders (QUERIES/<label>/*.jpg)")
    return out


def embed_labelled(root: Path, lib, batch: int = 32) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Embed every readable photo under ``root/<label>/``: (embeddings, labels, failed ``(path, reason)``)."""
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.model.preprocess import to_tensor

    photos = labelled_photos(root)
    pre = lib.encoders.preprocess
    tensors, labels, failed = [], [], []
    for p, label in photos:
        try:
            tensors.append(to_tensor(load_photo(p), pre))
            labels.append(label)
        except InputFileError as exc:
            failed.append((str(p), exc.reason))
    if not tensors:
        raise UsageError(f"{root}: none of the photos could be read")
    emb = np.concatenate([lib.encoders.embed_photos(np.stack(tensors[i : i + batch])) for i in range(0, len(tensors), batch)])
    return emb, labels, failed


def gallery_of(lib) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Every stored shape: (ids, embeddings, labels), from one consistent read."""
    with lib.open_reader() as reader:
        ids, gallery = reader.store.all_embeddings()
        rows = {r.id: r for r in reader.store.get([int(i) for i in ids])}
    return ids, gallery, [rows[int(i)].label for i in ids]


def evaluate_folder(root: Path, home: Home, runtime: RuntimeConfig = RuntimeConfig(), batch: int = 32) -> dict:
    from ftspl.engine.index.library import Library
    from ftspl.engine.scoring.metrics import (
        format_metrics,
        pairwise_euclidean,
        retrieval_metrics,
    )

    lib = Library(home, runtime)
    emb, labels, failed = embed_labelled(root, lib, batch)
    ids, gallery, glabels = gallery_of(lib)
    if not any(g is not None for g in glabels):
        raise UsageError(f"{lib.dir}: the index has no labels; add shapes in label folders (--label-from top)")
    dist = pairwise_euclidean(emb, gallery)
    m = retrieval_metrics(dist, np.asarray(labels, dtype=object), np.asarray(glabels, dtype=object))
    return {
        "queries": len(labels),
        "gallery": int(len(ids)),
        "model_id": lib.manifest.model_id,
        "metrics": format_metrics(m),
        "failed": failed,
    }
