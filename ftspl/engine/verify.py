"""``ftspl index verify``: SQLite and the HNSW file agree, and SQLite is sound."""

from __future__ import annotations

import numpy as np

from ftspl.engine.home import Home


def verify_index(home: Home) -> tuple[list[str], dict]:
    """Return (problems, facts). No problems means the index is consistent.

    Checks: SQLite integrity; the store's model is the active model; the saved
    HNSW file holds exactly the store's ids (a file left stale by a killed add
    is reported as a note, not a failure, because every open reconciles it);
    every stored embedding is finite, of the right size, and is found by the
    index as its own nearest neighbour.
    """
    from ftspl.engine.ann import HnswIndex
    from ftspl.engine.library import Library, _read_ann_meta, _reconcile
    from ftspl.engine.store import ShapeStore

    lib = Library(home)
    problems: list[str] = []
    if not lib.exists():
        return [f"{lib.dir}: no index yet"], {}
    store = ShapeStore(lib.store_path, readonly=True)
    try:
        ic = store.integrity_check()
        if ic != "ok":
            problems.append(f"{lib.store_path}: SQLite integrity check: {ic}")
        info = store.get_info()
        if info.get("model_hash") and info["model_hash"] != lib.manifest.model_hash:
            problems.append(f"{lib.dir}: built by model {info.get('model_id')}, active is {lib.manifest.model_id}")
        ids, vecs = store.all_embeddings()
        facts = {"shapes": int(len(ids))}
        if len(ids) and vecs.shape[1] != lib.manifest.embed_dim:
            problems.append(f"{lib.store_path}: embeddings are {vecs.shape[1]}-d, model gives {lib.manifest.embed_dim}-d")
        if len(ids) and not np.isfinite(vecs).all():
            problems.append(f"{lib.store_path}: non-finite embeddings stored")
        stale = False
        if lib.ann_path.exists():
            ann = HnswIndex.load(lib.ann_path)
            meta = _read_ann_meta(lib.ann_path)
            saved = set(int(i) for i in ann.ids())
            if saved != set(int(i) for i in ids):
                stale = True
                if meta.get("generation") == store.generation():
                    problems.append(f"{lib.ann_path}: HNSW ids differ from SQLite at the same generation")
                _reconcile(ann, store)
        else:
            stale = len(ids) > 0
            ann = lib._open_ann(store, writable=False)
        facts["hnsw_file"] = "stale (reconciled on open)" if stale else "in sync"
        if len(ids) and not problems:
            sample = np.linspace(0, len(ids) - 1, num=min(len(ids), 200)).astype(int)
            got, _ = ann.query(vecs[sample], 1)
            hit = float(np.mean(got[:, 0] == ids[sample]))
            facts["self_recall_at_1"] = round(hit, 4)
            # duplicates (same mesh twice) may legitimately return the twin first
            dup_ok = hit >= 0.95
            if not dup_ok:
                problems.append(f"{lib.ann_path}: only {hit:.1%} of shapes find themselves first")
    finally:
        store.close()
    return problems, facts
