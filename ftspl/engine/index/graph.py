"""What the HNSW-graph backends share: the size-aware default beam and payload clean-up.

All three graph backends (``hnsw``, ``faiss-hnsw``, ``usearch``) search a
beam of ``ef`` candidates. A fixed ``ef`` that is plenty at 100k shapes loses
recall as the graph grows (hnswlib M 32: recall@10 0.9995 at 100k but 0.931 at
1M with ef 128), so an index built without an explicit ``ef_search`` picks its
beam from its current size (:func:`auto_ef`), anchored on each backend's
measured figures (``benchmarks/run.py --ann-only N``, ``docs/PERFORMANCE.md``).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
from pathlib import Path
from types import ModuleType

from ftspl.engine.errors import IndexStateError

#: Sizes at which the backends' default beams were measured.
EF_ANCHOR_SMALL = 100_000
EF_ANCHOR_LARGE = 1_000_000
#: Beam never wider than this, however large the index.
EF_AUTO_MAX = 4096


def auto_ef(n: int, ef_small: int, ef_large: int) -> int:
    """The default beam for an index of ``n`` vectors.

    ``ef_small`` up to 100k vectors; from there it grows as a power of ``n``
    through ``ef_large`` at 1M (a straight line in log-log, extrapolated past 1M),
    capped at :data:`EF_AUTO_MAX`. The beam needed for a fixed recall grows
    roughly like that with the graph's size.
    """
    if n <= EF_ANCHOR_SMALL:
        return int(ef_small)
    slope = math.log(ef_large / ef_small) / math.log(EF_ANCHOR_LARGE / EF_ANCHOR_SMALL)
    ef = ef_small * (n / EF_ANCHOR_SMALL) ** slope
    return int(min(EF_AUTO_MAX, math.ceil(ef / 8) * 8))


def check_ef(ef_search: int | None) -> int | None:
    """``None`` (size-aware) or a beam of at least 1."""
    if ef_search is None:
        return None
    if int(ef_search) < 1:
        raise ValueError(f"ef_search must be >= 1 or None (size-aware), got {ef_search}")
    return int(ef_search)


def drop_stale_payloads(path: str | Path, suffix: str, keep: str) -> None:
    """Delete payloads of earlier saves of ``path`` with ``suffix``, except ``keep``.

    :meth:`AnnIndex.save` cleans up the ``.hnsw`` and ``.npz`` payloads itself;
    the backends with other suffixes call this after their save commits.
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{16}" + re.escape(suffix))
    for cand in path.parent.iterdir():
        if cand.name != keep and pattern.fullmatch(cand.name):
            with contextlib.suppress(FileNotFoundError):
                cand.unlink()


def import_wheel(module: str, pip_name: str, backend: str) -> ModuleType:
    """Import a backend's optional wheel, or say which one to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise IndexStateError(
            f"the {backend!r} vector index needs {pip_name} ({exc}); `pip install {pip_name}`, "
            "or rebuild with another backend"
        ) from None
