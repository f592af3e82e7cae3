"""The view that matched: which rendered view of each hit is closest to the photo, and re-ranking by it.

A shape's embedding max-pools its 12 views, so a hit does not say which view
looks like the photo. Models exported with per-view output store each view's
embedding (int8 codes, :mod:`ftspl.engine.index.store.viewcodes`); for the hits of a
query this module reads them, takes the view with the highest cosine
similarity to the photo, and reports its index and similarity.

Re-ranking rules (a registry; ``--rerank`` in the CLI, ``rerank`` in the API)
score the top ``depth`` candidates of the pooled search, higher is better:

* ``none``: the pooled order (the paper's);
* ``view``: the best view's cosine similarity alone;
* ``blend``: ``(1 - w) * pooled cosine + w * best view cosine``.

A candidate without codes (stored by an older model) scores its pooled cosine
under every rule. Reported distances stay the pooled ones, so the open-set
threshold means the same thing with or without re-ranking.

The default is ``none`` (no re-ranking); ``benchmarks/matched_view.py``
measures ``view`` and ``blend`` against it (docs/QUALITY.md, "Studies not yet
re-run under this protocol").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ftspl.engine.errors import UnknownKeyError


def _none(pooled: np.ndarray, view: np.ndarray, w: float) -> np.ndarray:
    return pooled


def _view(pooled: np.ndarray, view: np.ndarray, w: float) -> np.ndarray:
    return view


def _blend(pooled: np.ndarray, view: np.ndarray, w: float) -> np.ndarray:
    return (1.0 - w) * pooled + w * view


#: Re-ranking rules by name: (pooled cosine, best-view cosine, blend weight) -> score, higher first.
RERANKS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "none": _none, "view": _view, "blend": _blend}
DEFAULT_RERANK = "none"
DEFAULT_DEPTH = 50
DEFAULT_BLEND_WEIGHT = 0.5

NO_VIEW_OUTPUT = ("matched view unavailable: model {model} was exported without per-view embeddings; "
                  "export it again (ftspl export) and rebuild the index (ftspl index add FOLDER --rebuild)")
NO_CODES = ("matched view unavailable for {n} hit(s): their shapes were indexed without per-view codes; "
            "rebuild the index (ftspl index add FOLDER --rebuild)")


@dataclass(frozen=True)
class MatchConfig:
    """How a query reports matched views and re-ranks: rule, candidates re-ranked, blend weight."""

    rerank: str = DEFAULT_RERANK
    depth: int = DEFAULT_DEPTH
    blend_weight: float = DEFAULT_BLEND_WEIGHT
    views: bool = True  #: look up matched views at all (False: the plain pooled search)

    def __post_init__(self) -> None:
        if self.rerank not in RERANKS:
            raise UnknownKeyError("rerank", self.rerank, RERANKS)
        if not 0.0 <= self.blend_weight <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {self.blend_weight}")

    def candidates(self, k: int) -> int:
        """How many pooled neighbours to fetch for a top-``k`` answer."""
        return max(k, self.depth) if self.rerank != "none" else k


def cosine_of(distance: np.ndarray | float) -> np.ndarray:
    """Cosine similarity of unit vectors from their Euclidean distance."""
    return 1.0 - np.square(np.asarray(distance, np.float64)) / 2.0


def best_views(photo: np.ndarray, views: np.ndarray) -> tuple[int, float]:
    """(index, cosine similarity) of the view closest to one unit photo embedding."""
    sims = np.asarray(views, np.float32) @ np.asarray(photo, np.float32)
    i = int(np.argmax(sims))
    return i, float(sims[i])


def rerank(hits: list, k: int, cfg: MatchConfig) -> list:
    """The top ``k`` of ``hits`` (with ``view_similarity`` filled where known) by ``cfg.rerank``, ranks renumbered."""
    if cfg.rerank == "none" or not hits:
        return [replace(h, rank=r) for r, h in enumerate(hits[:k], 1)]
    pooled = cosine_of([h.distance for h in hits])
    view = np.array([p if h.view_similarity is None else h.view_similarity for h, p in zip(hits, pooled)])
    score = RERANKS[cfg.rerank](pooled, view, cfg.blend_weight)
    order = np.argsort(-score, kind="stable")[:k]
    return [replace(hits[j], rank=r) for r, j in enumerate(order, 1)]


def match_views(reader, emb: np.ndarray, results: list[list], k: int, cfg: MatchConfig = MatchConfig()) -> list[list]:
    """Each photo's hits with their matched view filled in, re-ranked by ``cfg`` and cut to ``k``.

    ``results[i]`` are the pooled hits of photo embedding ``emb[i]``. Codes are
    read for the hits that can reach the answer only: the top ``k`` without
    re-ranking, every candidate with it.
    """
    if not cfg.views or not reader.lib.encoders.has_view_output:
        return [rerank(hits, k, MatchConfig()) for hits in results]
    look = [hits if cfg.rerank != "none" else hits[:k] for hits in results]
    codes = reader.view_embeddings([h.id for hits in look for h in hits])
    out = []
    for photo, hits in zip(np.asarray(emb, np.float32), look):
        filled = []
        for h in hits:
            v = codes.get(h.id)
            if v is not None:
                i, s = best_views(photo, v)
                h = replace(h, view=i, view_similarity=s)
            filled.append(h)
        out.append(rerank(filled, k, cfg))
    return out


def search_matched(reader, emb: np.ndarray, k: int, cfg: MatchConfig = MatchConfig()) -> tuple[list[list], int]:
    """Search, then :func:`match_views`: the top ``k`` per photo embedding and the store generation."""
    hits, gen = reader.search_at(emb, cfg.candidates(k))
    return match_views(reader, emb, hits, k, cfg), gen


def view_fields(hit) -> dict:
    """A hit's matched view as JSON fields (``view``, ``view_similarity``; None when unknown)."""
    sim = hit.view_similarity
    return {"view": hit.view, "view_similarity": None if sim is None else round(float(sim), 6)}


def views_note(model_id: str, has_view_output: bool, results: list) -> str | None:
    """One line saying why matched views are missing from an answer, or None when every hit has one."""
    if not has_view_output:
        return NO_VIEW_OUTPUT.format(model=model_id)
    missing = sum(1 for r in results for h in r.hits if h.view is None)
    return NO_CODES.format(n=missing) if missing else None
