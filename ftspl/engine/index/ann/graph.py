"""What the HNSW-graph backends share: the size-aware default beam, huge pages, payload clean-up.

All three graph backends (``hnsw``, ``faiss-hnsw``, ``usearch``) search a
beam of ``ef`` candidates. A fixed ``ef`` that is plenty at 100k shapes loses
recall as the graph grows (hnswlib M 32: recall@10 0.9995 at 100k but 0.931 at
1M with ef 128), so an index built without an explicit ``ef_search`` picks its
beam from its current size (:func:`auto_ef`), anchored on each backend's
measured figures (``benchmarks/run.py --ann-only N``, ``docs/PERFORMANCE.md``).

A graph search reads ~1 KB vectors at random all over an index of ~1.3 KB per
shape, so at 1M shapes nearly every hop misses the TLB when the index sits in
4 KiB pages. :func:`huge_pages_for_new_memory` moves what a load allocated into
2 MiB pages (Linux ``MADV_COLLAPSE``): queries got 22% faster at 300k vectors
here (faiss, ef 256: p50 0.82 -> 0.64 ms), for about 0.5 s per GB at load.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.ann.base import AnnIndex

#: Sizes at which the backends' default beams were measured.
EF_ANCHOR_SMALL = 100_000
EF_ANCHOR_LARGE = 1_000_000
#: Beam never wider than this, however large the index.
EF_AUTO_MAX = 4096

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # Linux >= 6.1
#: Regions below this are left alone (small allocations are not worth a collapse).
HUGE_PAGE_MIN_REGION = 16 << 20


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


def _anonymous_regions() -> set[tuple[int, int]]:
    """(start, end) of this process's writable anonymous mappings."""
    regions = set()
    with open("/proc/self/maps", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 5 and parts[1].startswith("rw"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                regions.add((start, end))
    return regions


@dataclass
class HugePageReport:
    """What :func:`huge_pages_for_new_memory` did: bytes moved to huge pages, bytes refused."""

    collapsed: int = 0
    refused: int = 0


@contextlib.contextmanager
def huge_pages_for_new_memory() -> Iterator[HugePageReport]:
    """Collapse the large anonymous mappings created inside the block into 2 MiB pages.

    Linux only, best effort: an older kernel, THP set to ``never`` or no free huge
    pages leave the memory as it is (counted in ``refused``, logged at debug level).
    The collapse works whatever ``/sys/kernel/mm/transparent_hugepage/enabled``
    says short of ``never``.
    """
    report = HugePageReport()
    try:
        before = _anonymous_regions() if sys.platform.startswith("linux") else None
    except OSError:
        before = None
    yield report
    if before is None:
        return
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, end in sorted(_anonymous_regions() - before):
            lo, hi = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
            if hi - lo < HUGE_PAGE_MIN_REGION:
                continue
            if madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
                report.collapsed += hi - lo
                continue
            # One refused piece (e.g. reserved but never written) fails the whole call: go 2 MiB at a time.
            for at in range(lo, hi, HUGE_PAGE):
                if madvise(at, HUGE_PAGE, MADV_COLLAPSE) == 0:
                    report.collapsed += HUGE_PAGE
                else:
                    report.refused += HUGE_PAGE
            if report.refused:
                log.debug("huge pages: %d MiB refused (errno %d)", report.refused >> 20, ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.debug("huge pages unavailable: %s", exc)


class KeyedLive:
    """A backend that keeps its live ids in a Python set or dict (``_keys``): its size, membership
    and sorted ids come from that container, the same way for every such backend."""

    @property
    def _keys(self):  # pragma: no cover - every user defines it
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._keys)

    def _has(self, key: int) -> bool:
        return key in self._keys

    def ids(self) -> np.ndarray:
        return np.sort(np.fromiter(self._keys, dtype=np.int64, count=len(self._keys)))


class GraphIndex(AnnIndex):
    """What the HNSW-style backends share: degree ``M``, build beam ``ef_construction``, and a query beam
    ``ef_search`` that, left unset (None), widens with the index's size (:func:`auto_ef` from
    ``EF_SMALL`` at 100k vectors to ``EF_LARGE`` at 1M)."""

    EF_SMALL: ClassVar[int]
    EF_LARGE: ClassVar[int]

    def __init__(self, dim: int, M: int, ef_construction: int, ef_search: int | None) -> None:
        super().__init__(dim)
        if M < 2 or ef_construction < 1:
            raise ValueError("need M >= 2 and ef_construction >= 1")
        self.M, self.ef_construction = int(M), int(ef_construction)
        self._ef = check_ef(ef_search)

    @property
    def ef_search(self) -> int:
        """The query beam: the explicit value, or the size-aware default when unset."""
        return self._ef if self._ef is not None else auto_ef(len(self), self.EF_SMALL, self.EF_LARGE)

    @ef_search.setter
    def ef_search(self, value: int | None) -> None:
        self._ef = check_ef(value)

    def config(self) -> dict[str, Any]:
        """Constructor keywords for an empty index with the same settings."""
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self._ef}


class ThreadedGraphIndex(GraphIndex):
    """A graph backend whose adds and queries run on ``num_threads`` worker threads (-1: all cores)."""

    def __init__(self, dim: int, M: int, ef_construction: int, ef_search: int | None, num_threads: int) -> None:
        super().__init__(dim, M, ef_construction, ef_search)
        self.num_threads = int(num_threads)

    @property
    def num_threads(self) -> int:
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        value = int(value)
        if value == 0 or value < -1:
            raise ValueError("num_threads must be -1 (all cores) or >= 1")
        self._num_threads = value
