"""The variants of regional search that ``benchmarks/regions.py`` compares, how each ranks, and the decision.

A variant is a mode (``none``: the whole photo; ``rmac``: the graph's pooled
windows; ``crops``: windows cut out of the photo), a subset of window scales
and a fusion rule. :func:`distances` ranks a gallery with the engine's own
:func:`~ftspl.engine.scoring.regions.fuse_regions` on exact distances,
:func:`score_block` scores every variant on one photo set, :func:`served_check`
compares a variant with what ``Library.query(regions=...)`` answers, and
:func:`decide` applies :data:`studylib.RULE` over the tuning seeds. The
script keeps the models, indexes, embeddings and timing; the scoring lives
here so that it reads, and can be reused, apart from the work that feeds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCALE_SETS = ((0.6,), (0.6, 0.4))
FUSIONS = ("max", "mean", "top3")
MODES = ("crops", "rmac")


def variants() -> list[dict]:
    """Every variant in the decision's cost order: none, then rmac, then crops (fewer windows first)."""
    out = [{"name": "none", "mode": "none", "scales": (), "fusion": None}]
    for mode in ("rmac", "crops"):
        for scales in SCALE_SETS:
            for fusion in FUSIONS:
                out.append({"name": f"{mode}-{'+'.join(map(str, scales))}-{fusion}", "mode": mode,
                            "scales": scales, "fusion": fusion})
    return [dict(v, order=i) for i, v in enumerate(out)]


def distances(var: dict, sets: dict, gal: np.ndarray) -> np.ndarray:
    """(photos x shapes) fused distances of one variant (the engine's rule on exact distances)."""
    from ftspl.engine.scoring.regions import fuse_regions, unit_distances

    mode = "crops" if var["mode"] == "none" else var["mode"]
    rows = []
    for emb, scales in sets[mode]:
        keep = [j for j, s in enumerate(scales) if s == 0.0 or round(float(s), 6) in var["scales"]]
        d = unit_distances(emb[keep], gal)
        rows.append(d[0] if var["mode"] == "none" else fuse_regions(d, var["fusion"]))
    return np.stack(rows)


def score_block(sets: dict, labels: list[str], names: list[str], gal: np.ndarray, glabels: np.ndarray) -> dict:
    """Every variant's metrics (and per-query values) on one photo set, and the any-region oracle."""
    from ftspl.engine.scoring.metrics import format_metrics, retrieval_metrics
    from ftspl.engine.scoring.regions import unit_distances
    from studylib import PAIRED, query_groups

    ql = np.asarray(labels, dtype=object)
    out = {}
    for var in variants():
        m = retrieval_metrics(distances(var, sets, gal), ql, glabels, per_query=True)
        out[var["name"]] = {"metrics": format_metrics(m), "per_query": {
            k: [None if np.isnan(v) else round(float(v), 5) for v in m["per_query"][k]] for k in PAIRED}}
    oracle = {}
    for mode in MODES:
        hits = [any(glabels[int(np.argmin(row))] == lab for row in unit_distances(emb, gal))
                for (emb, _), lab in zip(sets[mode], labels)]
        oracle[mode] = round(float(np.mean(hits)), 4)
    return {"photos": len(labels), "groups": query_groups(names), "variants": out,
            "any_region_right_first": oracle}


def served_check(home: Path, photos: list[tuple[Path, str]], sets: dict, gal_ids: np.ndarray, gal: np.ndarray,
                 picks: list[dict], n: int = 6) -> dict:
    """``Library.query(regions=...)`` against the benchmark's own ranking, on the first ``n`` photos."""
    import ftspl
    from ftspl.engine.scoring import regions as R

    out = {}
    with ftspl.open(home, device="cpu") as lib:
        for var in picks:
            if var["mode"] == "none" or tuple(var["scales"]) != tuple(R.DEFAULT_SCALES):
                continue  # the API searches the default scales
            d = distances(var, {k: v[:n] for k, v in sets.items()}, gal)
            same = 0
            for row, (p, _) in zip(d, photos[:n]):
                ans = lib.query(str(p), 10, regions=var["mode"], region_fusion=var["fusion"])
                same += [h.id for h in ans.hits] == [int(gal_ids[j]) for j in np.argsort(row, kind="stable")[:10]]
            out[var["name"]] = {"photos": n, "same_top10": same}
    return out

# -- the decision ----------------------------------------------------------------------------------------
def decide(per_seed: list[dict], *blocks: str) -> dict:
    """:data:`studylib.RULE` over the mean of ``blocks`` (val, and val_scenes where every seed has it)."""
    from studylib import RULE, pick

    blocks = blocks or ("val",)
    cells = []
    for var in variants():
        vals = [s[b]["variants"][var["name"]]["metrics"] for s in per_seed for b in blocks]
        cells.append({**var, "mean": {k: [round(float(np.mean([v[k] for v in vals])), 4)] for k in ("NN", "FT", "ST")}})
    best = pick(cells)
    regional = pick([c for c in cells if c["mode"] != "none"])
    return {"rule": RULE, "blocks": list(blocks), "regions": best["mode"], "winner": best["name"], "best_regional": regional["name"],
            "region_fusion": regional["fusion"], "scales": list(regional["scales"]),
            "table": {c["name"]: c["mean"] for c in cells}}


def mean_table(entries: list[dict], block: str) -> dict:
    """{variant: {NN, FT, ST}}: each variant's metrics on ``block``, mean over ``entries`` (seeds)."""
    return {v["name"]: {k: round(float(np.mean([e[block]["variants"][v["name"]]["metrics"][k] for e in entries])), 4)
                        for k in ("NN", "FT", "ST")} for v in variants()}


def paired_vs_none(per_seed: list[dict], name: str, block: str) -> dict:
    from studylib import paired

    def rows(v: str) -> list[dict]:
        return [{"seed": s["seed"], "per_query": s[block]["variants"][v]["per_query"],
                 "query_groups": s[block]["groups"]} for s in per_seed]

    return paired(rows(name), rows("none"))
