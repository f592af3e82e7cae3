"""``index remove``: shapes out of the store and the ANN cache, by file, view folder or folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import IndexFolder
from ftspl.engine.index.pipeline.plan import known_under
from ftspl.engine.index.session import check_model, write_session
from ftspl.engine.index.store.schema import normalize_path
from ftspl.engine.loading.scan import scan


def remove(folder: IndexFolder, manifest, paths: list[str], cfg: IndexConfig) -> list[str]:
    """Remove shapes by path (a file, a view folder, or every shape under a folder); the paths removed.

    A folder also removes what its scan reaches through symbolic links. One
    transaction for all of ``paths``.
    """
    folder.require()
    with write_session(folder, manifest, cfg) as session:
        store = session.store
        check_model(store, manifest, folder.dir)
        ann = session.open_ann()
        removed_paths: list[str] = []
        removed_ids: list[int] = []
        with store.batch():
            for p in paths:
                under = store.entries(Path(p).expanduser().resolve())
                if Path(p).is_dir():  # and what the folder reaches through symbolic links
                    reached = scan(p, cfg.label_from)
                    keys = {normalize_path(src.path) for src in reached}
                    under.update({k: v for k, v in known_under(store, p, reached).items() if k in keys})
                if under:
                    removed_paths += sorted(under)
                    removed_ids += store.remove_paths(list(under))
        if removed_ids:
            ann.remove(np.asarray(removed_ids, np.int64))
    return removed_paths


__all__ = ["remove"]
