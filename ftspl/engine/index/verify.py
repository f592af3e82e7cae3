"""``ftspl index verify``: SQLite is sound and the HNSW index agrees with it."""

from __future__ import annotations

import numpy as np

from ftspl.engine.home import Home


def verify_index(home: Home) -> tuple[list[str], dict]:
    """Return (problems, facts); no problems means the index is consistent.

    Checks: SQLite integrity; the store's model is the active model; stored
    embeddings are finite and of the model's size; the HNSW cache (after
    catching up with the store, as every open does) holds exactly the store's
    ids; and each sampled shape finds itself as its own nearest neighbour. A
    cache saved at an older generation (a killed add) is a note, not a failure.
    """
    from ftspl.engine.errors import IndexStateError
    from ftspl.engine.index.ann import read_manifest
    from ftspl.engine.index.library import Library
    from ftspl.engine.index.store import ShapeStore

    lib = Library(home)
    if not lib.exists():
        return [f"{lib.dir}: no index yet"], {}
    problems: list[str] = []
    facts: dict = {}
    store = ShapeStore(lib.store_path, readonly=True)
    try:
        problems += [f"{lib.store_path}: SQLite: {p}" for p in store.integrity_check()]
        info = store.get_info()
        if info.get("model_hash") and info["model_hash"] != lib.manifest.model_hash:
            problems.append(f"{lib.dir}: built by model {info.get('model_id')}, active is {lib.manifest.model_id}")
            return problems, facts
        with store.snapshot() as gen:
            ids, vecs = store.all_embeddings()
            facts["shapes"] = len(ids)
            facts["generation"] = int(gen)
            saved_gen = None
            if lib.ann_path.exists():
                try:
                    saved_gen = int(read_manifest(lib.ann_path).get("meta", {}).get("generation", -1))
                except IndexStateError as exc:
                    facts["hnsw_file"] = f"unreadable, rebuilt on open ({exc})"
            if saved_gen is not None:
                facts["hnsw_file"] = "in sync" if saved_gen == gen else f"saved at generation {saved_gen}, caught up on open"
            ann = lib.open_ann(store)
        if len(ids) and vecs.shape[1] != lib.manifest.embed_dim:
            problems.append(f"{lib.store_path}: embeddings are {vecs.shape[1]}-d, model gives {lib.manifest.embed_dim}-d")
        if len(ids) and not np.isfinite(vecs).all():
            problems.append(f"{lib.store_path}: non-finite embeddings stored")
        ann_ids = np.asarray(ann.ids(), np.int64)
        if not np.array_equal(np.sort(ann_ids), np.sort(ids)):
            problems.append(f"{lib.ann_path}: HNSW holds {len(ann_ids)} ids, SQLite {len(ids)}; ids differ")
        if len(ids) and not problems:
            sample = np.unique(np.linspace(0, len(ids) - 1, num=min(len(ids), 200)).astype(int))
            got, dist = ann.query(vecs[sample], 1)
            # an exact duplicate mesh may come first instead of the shape itself: distance 0 either way
            ok = (got[:, 0] == ids[sample]) | (dist[:, 0] <= 1e-4)
            facts["self_recall_at_1"] = round(float(ok.mean()), 4)
            if ok.mean() < 0.99:
                problems.append(f"{lib.ann_path}: only {ok.mean():.1%} of sampled shapes find themselves first")
    finally:
        store.close()
    return problems, facts
