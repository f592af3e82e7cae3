"""What the Python API answers: typed records that the CLI's ``--json`` and the HTTP API serialise.

One ``to_dict()`` per record is the single JSON form of each answer, so
``ftspl query --json``, ``POST /api/query`` and ``lib.query(...)`` cannot drift:
the CLI adds its timings around it, the server its preview URLs and warnings.
Field names are those the CLI and the server have always emitted; new fields
are only ever added. Plain dataclasses over the standard library: importing
this module costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: distances and similarities are rounded to this many decimals in JSON
DECIMALS = 6


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), DECIMALS)


@dataclass(frozen=True)
class Region:
    """The part of the photo a hit was matched in, in pixels (``x0, y0, x1, y1``)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def to_dict(self) -> dict[str, int]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}


@dataclass(frozen=True)
class Hit:
    """One shape in an answer, nearest first.

    ``distance`` is the Euclidean distance of unit embeddings (0 to 2; smaller
    is nearer). ``match`` is False when the hit is beyond the open-set cut
    (``max_distance``, ``min_score`` or the calibrated threshold). ``view`` is
    the rendered view closest to the photo (None for models without per-view
    output). ``region`` is the part of the photo searched with (the ``box``), or
    None for the whole photo; with regional search, the window of the photo
    the hit matched best.
    """

    rank: int
    id: int
    path: str
    label: str | None
    distance: float
    kind: str
    view: int | None = None
    view_similarity: float | None = None
    match: bool = True
    region: Region | None = None
    content_hash: str | None = None

    @classmethod
    def from_engine(cls, h: Any, cut: float | None, region: Region | None = None) -> Hit:
        """From a reader hit (:class:`ftspl.engine.index.reader.Hit`) and the open-set cut (None: none)."""
        return cls(rank=h.rank, id=h.id, path=h.path, label=h.label, distance=float(h.distance), kind=h.kind,
                   view=h.view, view_similarity=None if h.view_similarity is None else float(h.view_similarity),
                   match=cut is None or float(h.distance) <= cut, region=region, content_hash=h.content_hash)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "path": self.path, "label": self.label,
                "distance": _round(self.distance), "kind": self.kind, "match": self.match,
                "view": self.view, "view_similarity": _round(self.view_similarity),
                "region": None if self.region is None else self.region.to_dict()}


@dataclass(frozen=True)
class PhotoResult:
    """The hits of one photo (or, fused, of several photos of one object, named ``a + b``)."""

    photo: str
    hits: list[Hit]
    decode_ms: float = 0.0
    generation: int | None = None  #: the index generation the answer comes from

    @property
    def match(self) -> bool:
        """Whether the best hit is within the open-set cut (False: "no match")."""
        return bool(self.hits and self.hits[0].match)

    def to_dict(self) -> dict[str, Any]:
        return {"photo": self.photo, "decode_ms": round(self.decode_ms, 2), "match": self.match,
                "hits": [h.to_dict() for h in self.hits]}


@dataclass(frozen=True)
class Failure:
    """An input that could not be used, and why (one line)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class QueryAnswer:
    """The answer to :meth:`ftspl.api.Library.query`.

    ``results`` has one entry per photo that decoded, or, with ``fuse=True``,
    one entry for all of them (named ``a + b``). ``fused`` is the fused list
    when fusion was asked for or several photos came without ``fuse``; ``hits``
    is the answer in one list: the fused one if any, else the first photo's.
    """

    model_id: str
    results: list[PhotoResult]
    rerank: str
    fusion: str | None = None
    fused: PhotoResult | None = None
    generation: int | None = None
    max_distance: float | None = None
    max_distance_from: str | None = None
    views_note: str | None = None
    failed: list[Failure] = field(default_factory=list)
    open_s: float = 0.0  #: opening the model and the index in this call (0 once they are open)
    decode_s: float = 0.0  #: decoding and cropping the photos
    search_s: float = 0.0  #: embedding and searching
    #: the decoded (and cropped) photos, for :meth:`ftspl.api.Library.contact_sheet`; never serialised
    images: tuple = field(default=(), repr=False, compare=False)
    regions: str = "none"  #: the regions searched (none, crops, rmac: :mod:`ftspl.engine.scoring.regions`)
    #: where each of ``images`` lies in its photo (a ``box``'s top left corner; 0, 0 uncropped); never serialised
    origins: tuple = field(default=(), repr=False, compare=False)

    @property
    def hits(self) -> list[Hit]:
        if self.fused is not None:
            return self.fused.hits
        return self.results[0].hits if self.results else []

    @property
    def match(self) -> bool:
        """Whether the answer's best hit is within the open-set cut."""
        return bool(self.hits and self.hits[0].match)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "generation": self.generation,
            "max_distance": _round(self.max_distance),
            "max_distance_from": self.max_distance_from,
            "rerank": self.rerank,
            "regions": self.regions,
            **({} if self.fusion is None else {"fusion": self.fusion}),
            "views_note": self.views_note,
            "match": self.match,
            "hits": [h.to_dict() for h in self.hits],
            "results": [r.to_dict() for r in self.results],
            "failed": [f.to_dict() for f in self.failed],
        }


@dataclass(frozen=True)
class AddReport:
    """What :meth:`ftspl.api.Library.add` did: counts, the files that failed (one line each), time."""

    added: int
    updated: int
    unchanged: int
    failures: list[Failure]
    seconds: float
    shards: list[str] | None = None  #: the Parquet files written (``shards=`` mode), else None
    ray: dict[str, Any] | None = None  #: the Ray plan and timings (``ray=`` mode), else None

    @property
    def processed(self) -> int:
        return self.added + self.updated

    @property
    def shapes_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_engine(cls, report: Any, shards: list[str] | None = None, ray: dict[str, Any] | None = None) -> AddReport:
        """From the index's own report (``added, updated, unchanged, failed: [(path, reason)], seconds``)."""
        return cls(report.added, report.updated, report.unchanged, [Failure(p, r) for p, r in report.failed],
                   float(report.seconds), shards, ray)

    def to_dict(self) -> dict[str, Any]:
        out = {"added": self.added, "updated": self.updated, "unchanged": self.unchanged,
               "failed": len(self.failures), "failures": [f.to_dict() for f in self.failures],
               "seconds": round(self.seconds, 3), "shapes_per_s": round(self.shapes_per_s, 3)}
        if self.shards is not None:
            out["shards"] = list(self.shards)
        if self.ray is not None:
            out["ray"] = dict(self.ray)
        return out


@dataclass(frozen=True)
class IndexStats:
    """Count, model, size on disk and labels of an index."""

    count: int
    model_id: str | None  #: the model that built the index
    active_model_id: str  #: the home's active model
    embed_dim: int | None
    render_spec_hash: str | None
    bytes: int
    index_dir: str
    labels: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "model_id": self.model_id, "active_model_id": self.active_model_id,
                "embed_dim": self.embed_dim, "render_spec_hash": self.render_spec_hash, "bytes": self.bytes,
                "index_dir": self.index_dir, "labels": dict(self.labels)}


@dataclass(frozen=True)
class VerifyReport:
    """Whether SQLite and the ANN index agree: the problems found (none: ok) and what was checked."""

    problems: list[str]
    facts: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), **self.facts}


@dataclass(frozen=True)
class ExportReport:
    """What :func:`ftspl.export` wrote: the model (now active), where, and how closely ONNX matches PyTorch."""

    model_id: str
    model_dir: str
    backbone: str
    embed_dim: int
    parity_max_abs_diff: float
    seconds: float
    selection: dict | None = None  #: a run's choice of round on validation (None: pretrained, or none made)
    look: str = "grey"  #: how the model's gallery views are coloured (``grey`` or ``materials``)

    def to_dict(self) -> dict[str, Any]:
        out = {"model_id": self.model_id, "model_dir": self.model_dir, "backbone": self.backbone,
               "embed_dim": self.embed_dim, "look": self.look, "parity_max_abs_diff": self.parity_max_abs_diff,
               "seconds": round(self.seconds, 2)}
        if self.selection:
            out.update(round=self.selection.get("best_round"), adapted_better=self.selection.get("adapted_better"))
        return out


@dataclass(frozen=True)
class DuplicateMember:
    """One shape of a duplicate group and its distance to the group's representative (0 for exact copies)."""

    id: int
    path: str
    label: str | None
    distance: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "label": self.label, "distance": _round(self.distance)}


@dataclass(frozen=True)
class DuplicateGroup:
    """Shapes that are one model: ``exact`` (the same file content) or ``near`` (embeddings within the cut).

    ``members[0]`` is the representative: the first indexed copy of an exact
    group, the medoid of a near one.
    """

    kind: str
    members: list[DuplicateMember]

    @property
    def representative(self) -> DuplicateMember:
        return self.members[0]

    @classmethod
    def from_engine(cls, g: Any) -> DuplicateGroup:
        """From :class:`ftspl.engine.index.duplicates.Group`."""
        return cls(g.kind, [DuplicateMember(m.id, m.path, m.label, float(m.distance)) for m in g.members])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": len(self.members), "representative": self.representative.to_dict(),
                "members": [m.to_dict() for m in self.members]}


@dataclass(frozen=True)
class DuplicateReport:
    """What :meth:`ftspl.api.Library.duplicates` found: exact groups first, then near ones, largest first."""

    shapes: int
    max_distance: float
    neighbours: int
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup]
    seconds: float
    searches: int = 0  #: k-NN searches run (one per distinct content, more where lists were crowded)
    generation: int | None = None

    @property
    def groups(self) -> list[DuplicateGroup]:
        return self.exact + self.near

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": self.shapes, "max_distance": _round(self.max_distance), "neighbours": self.neighbours,
                "generation": self.generation, "exact_groups": len(self.exact), "near_groups": len(self.near),
                "seconds": round(self.seconds, 3), "searches": self.searches,
                "exact": [g.to_dict() for g in self.exact], "near": [g.to_dict() for g in self.near]}


@dataclass(frozen=True)
class SyncReport:
    """What :meth:`ftspl.api.Library.sync` did (or, ``dry_run``, would do): the add's counts, the paths
    pruned because their files are gone, and the moved files re-pointed (``(old, new)``) without a render."""

    add: AddReport
    removed: list[str]
    moved: list[tuple[str, str]]
    dry_run: bool = False

    @classmethod
    def from_engine(cls, report: Any) -> SyncReport:
        """From :class:`ftspl.engine.index.sync.SyncReport`."""
        return cls(AddReport.from_engine(report), list(report.removed), [tuple(m) for m in report.moved],
                   bool(report.dry_run))

    def to_dict(self) -> dict[str, Any]:
        return {**self.add.to_dict(), "dry_run": self.dry_run, "removed": len(self.removed),
                "moved": len(self.moved), "removed_paths": list(self.removed),
                "moves": [{"from": a, "to": b} for a, b in self.moved]}


__all__ = ["AddReport", "DuplicateGroup", "DuplicateMember", "DuplicateReport", "ExportReport", "Failure", "Hit",
           "IndexStats", "PhotoResult", "QueryAnswer", "Region", "SyncReport", "VerifyReport"]
