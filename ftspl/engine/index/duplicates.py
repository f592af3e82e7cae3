"""``index duplicates``: the same model stored twice, as exact copies and as near duplicates.

Two passes over a read-only view of the index (a writer may run meanwhile):

1. **Exact**: shapes whose files have the same content hash (the same bytes
   under another name), one group per hash, in the store's order.
2. **Near**: every distinct content is searched in the ANN index for its
   ``neighbours`` nearest shapes; a pair closer than ``max_distance`` (the
   Euclidean distance of unit embeddings, as in query answers) is an edge,
   and the connected components (union-find) of two or more contents are the
   groups. A search whose last hit is still within ``max_distance`` while
   copies of itself crowd its list is widened (up to :data:`MAX_NEIGHBOURS`),
   so a file copied many times does not hide its near duplicates. Cost: one
   k-NN search per distinct shape, never the n^2 pairs.

Each group names a representative: the first indexed shape of an exact
group; for a near group the medoid (the member with the smallest summed
distance to the others), so the group reads as "these look like that one".
:data:`DEFAULT_MAX_DISTANCE` is chosen by ``benchmarks/duplicates.py`` on a
tuning split (docs/LIBRARY.md has the measured precision and recall).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ftspl.engine.errors import UsageError

#: pairs closer than this are near duplicates: ``benchmarks/duplicates.py`` picks it on the tuning split
#: (the middle of the distances with the best F1 on planted duplicates of SH3D models, pretrained
#: encoders: 0.14 to 0.29); on the report split it keeps precision 0.99 at recall 1.0 (docs/LIBRARY.md)
DEFAULT_MAX_DISTANCE = 0.22
#: nearest shapes searched per distinct shape (widened for crowded lists, up to MAX_NEIGHBOURS)
DEFAULT_NEIGHBOURS = 10
MAX_NEIGHBOURS = 1024
#: the ANN beam for these searches: near duplicates sit very close, so a narrow beam finds them
#: (``benchmarks/duplicates.py --scale`` measures the pairs it misses against an exact search)
DUPLICATE_EF = 64
_BATCH = 2048  #: shapes per ANN call (progress granularity)


@dataclass(frozen=True)
class Member:
    id: int
    path: str
    label: str | None
    distance: float  #: to the group's representative (0 for the representative and its exact copies)


@dataclass(frozen=True)
class Group:
    kind: str  #: "exact" (same content hash) or "near" (embeddings closer than max_distance)
    members: list[Member]  #: the representative first, then by distance to it

    @property
    def representative(self) -> Member:
        return self.members[0]


@dataclass
class DuplicateScan:
    shapes: int
    max_distance: float
    neighbours: int
    exact: list[Group] = field(default_factory=list)
    near: list[Group] = field(default_factory=list)
    searches: int = 0  #: k-NN searches run (widened ones counted again)
    generation: int | None = None


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _medoid(vecs: np.ndarray) -> int:
    """Index of the row with the smallest summed distance to the others (the mean's nearest for large groups)."""
    if len(vecs) > 2048:
        return int(np.argmin(np.linalg.norm(vecs - vecs.mean(axis=0), axis=1)))
    g = vecs @ vecs.T
    sq = np.clip(np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g, 0, None)
    return int(np.argmin(np.sqrt(sq).sum(axis=1)))


def find_duplicates(store, ann, max_distance: float = DEFAULT_MAX_DISTANCE, neighbours: int = DEFAULT_NEIGHBOURS,
                    progress: Callable[[str, int, int], None] | None = None) -> DuplicateScan:
    """Exact and near duplicate groups of the shapes in ``store`` (read-only), searched in ``ann``."""
    if not max_distance >= 0:
        raise UsageError(f"--max-distance must be 0 or more (unit embeddings are 0 to 2 apart), got {max_distance}")
    if neighbours < 1:
        raise UsageError(f"--neighbours must be at least 1, got {neighbours}")
    with store.snapshot() as gen:
        ids, vecs = store.all_embeddings()
        hashes = {i: h for i, h in store.entries().values()}
        exact_rows = store.same_content()
    scan = DuplicateScan(len(ids), float(max_distance), int(neighbours), generation=gen)
    if not len(ids):
        return scan
    row_of = {int(i): r for r, i in enumerate(ids)}
    # one class per content: every copy of a file maps to its first id's row
    first_of_hash: dict[str, int] = {}
    cls = np.empty(len(ids), np.int64)
    for r, i in enumerate(ids):
        cls[r] = first_of_hash.setdefault(hashes.get(int(i), f"#{i}"), r)
    heads = np.unique(cls)
    uf = _UnionFind(len(ids))
    ann.ef_search = max(DUPLICATE_EF, neighbours)
    for start in range(0, len(heads), _BATCH):
        batch = heads[start:start + _BATCH]
        k = neighbours + 1
        todo = batch
        while len(todo):
            got, dist = ann.query(vecs[todo], min(k, len(ann)))
            scan.searches += len(todo)
            again = []
            for r, row_ids, row_d in zip(todo, got, dist):
                seen = set()
                for i, d in zip(row_ids, row_d):
                    other = row_of.get(int(i))
                    if other is None or d > max_distance:
                        continue
                    c = int(cls[other])
                    seen.add(c)
                    if c != r:
                        uf.union(int(r), c)
                crowded = len(row_ids) == k and row_d[-1] <= max_distance and len(seen) < neighbours + 1
                if crowded and k < MAX_NEIGHBOURS and k < len(ann):
                    again.append(r)
            todo, k = np.asarray(again, np.int64), min(2 * k, MAX_NEIGHBOURS)
        if progress:
            progress("duplicates", min(start + _BATCH, len(heads)), len(heads))
    scan.exact = _exact_groups(exact_rows)
    scan.near = _near_groups(store, ids, vecs, cls, uf)
    return scan


def _exact_groups(rows: list[list[tuple[int, str, str | None]]]) -> list[Group]:
    return [Group("exact", [Member(i, p, lab, 0.0) for i, p, lab in g]) for g in rows]


def _near_groups(store, ids: np.ndarray, vecs: np.ndarray, cls: np.ndarray, uf: _UnionFind) -> list[Group]:
    """Components of two or more contents: the medoid content's first shape, then the others by distance."""
    comps: dict[int, list[int]] = {}
    for r in range(len(ids)):
        comps.setdefault(uf.find(int(cls[r])), []).append(r)
    groups = []
    for rows in comps.values():
        heads = sorted({int(cls[r]) for r in rows})
        if len(heads) < 2:
            continue
        rep = heads[_medoid(vecs[heads])]
        dist = np.linalg.norm(vecs[rows] - vecs[rep], axis=1)
        order = sorted(range(len(rows)), key=lambda j: (rows[j] != rep, float(dist[j]), int(ids[rows[j]])))
        groups.append([(int(ids[rows[j]]), float(dist[j])) for j in order])
    meta = {r.id: r for r in store.get([i for g in groups for i, _ in g])}
    out = [Group("near", [Member(i, meta[i].path, meta[i].label, round(d, 6)) for i, d in g if i in meta])
           for g in groups]
    return sorted((g for g in out if len(g.members) > 1), key=lambda g: (-len(g.members), g.members[0].id))


def scan_index(lib, max_distance: float = DEFAULT_MAX_DISTANCE, neighbours: int = DEFAULT_NEIGHBOURS,
               progress: Callable[[str, int, int], None] | None = None) -> DuplicateScan:
    """:func:`find_duplicates` on the index of ``lib`` (an engine :class:`~ftspl.engine.index.library.Library`),
    read-only: the ANN file is loaded and caught up in memory, a running writer is not disturbed."""
    from ftspl.engine.errors import IndexStateError
    from ftspl.engine.index.store import ShapeStore

    if not lib.exists():
        raise IndexStateError(f"{lib.dir}: no index yet; run 'ftspl index add FOLDER' first")
    with ShapeStore(lib.store_path, readonly=True) as store:
        lib.check_model(store)
        return find_duplicates(store, lib.open_ann(store), max_distance, neighbours, progress)


#: a contact sheet shows at most this many groups, and this many members of each
SHEET_GROUPS, SHEET_MEMBERS = 40, 8


def sheet_rows(store, groups: list) -> list:
    """Contact-sheet rows (:mod:`ftspl.engine.rendering.sheet`): each group's representative, then its members."""
    import io

    from PIL import Image

    from ftspl.engine.rendering.sheet import SheetRow

    shown = groups[:SHEET_GROUPS]
    ids = [m.id for g in shown for m in g.members[: SHEET_MEMBERS + 1]]
    previews = {r.id: r.preview for r in store.get(ids, previews=True)}
    rows = []
    for n, g in enumerate(shown, start=1):
        rep = g.members[0]
        png = previews.get(rep.id)
        picture = Image.open(io.BytesIO(png)) if png else Image.new("RGB", (128, 128), "white")
        rows.append(SheetRow(picture, f"{g.kind} #{n} ({len(g.members)})", rep.label,
                             [(previews.get(m.id), m.label, m.distance) for m in g.members[1: SHEET_MEMBERS + 1]]))
    return rows


__all__ = ["DEFAULT_MAX_DISTANCE", "DEFAULT_NEIGHBOURS", "DUPLICATE_EF", "DuplicateScan", "Group", "Member",
           "find_duplicates", "scan_index", "sheet_rows"]
