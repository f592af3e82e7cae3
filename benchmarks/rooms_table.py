"""The one table of docs/QUALITY.md "Photos of real rooms", assembled from the result files that measured it.

    python benchmarks/rooms_table.py [--json]

Every cell comes from a result file that its own script wrote (nothing here
measures or trains): ``looks.json`` (``benchmarks/looks.py``: CNN, source_only
and FTSPL with grey and material views), ``scenes.json``
(``benchmarks/scenes.py``: trained with and without scene photos, scored on
val_scenes too) and ``regions.json`` (``benchmarks/regions.py``: the default
FTSPL model queried with the whole photo or its regions). Each row names the
look its views had: a script that trains with ``TrainConfig``'s defaults used
the look that the config held at the commit its result file records.

Columns: tuning seeds' val photos and scene val photos, both ranking the val
gallery; the benchmark's query photos of the report seeds 5-9 ranking their
target gallery (each script's ``--report-seeds``: every network trained again
on those seeds, reported only); and the real
development photos (interior scenes and object photos apart) ranking each
tuning seed's 152-mesh target gallery; NN and FT, mean over the seeds. ``-``:
not measured by that script.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess

from common import RESULTS, ROOT

BLOCKS = ("val", "val_scenes", "queries", "real_interior", "real_object")
COMMAND = {"looks": "python benchmarks/looks.py --seeds {seeds} --real ../shared/data/real_photos --cost 20"
                    " --report-seeds 5,6,7,8,9",
           "scenes": "python benchmarks/scenes.py --seeds {seeds} --real ../shared/data/real_photos"
                     " --report-seeds 5,6,7,8,9",
           "regions": "python benchmarks/regions.py --seeds {seeds} --real ../shared/data/real_photos --cost-size 100000"
                      " --report-seeds 5,6,7,8,9"}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def default_look(record: dict) -> str:
    """The look ``TrainConfig`` defaulted to when ``record`` was measured (its config, else its commit's file)."""
    if record.get("config", {}).get("look"):
        return record["config"]["look"]
    commit = record.get("git", {}).get("commit")
    text = subprocess.run(["git", "show", f"{commit}:ftspl/train/config.py"], cwd=ROOT, capture_output=True,
                          text=True).stdout if commit else ""
    m = re.search(r'^\s+look: str = "(\w+)"', text, re.M)
    return m.group(1) if m else "grey"  # before the field existed every view was grey


def _cell(mean: dict | None) -> dict | None:
    """{NN, FT} from a summary record (``[mean, std]`` lists or plain numbers)."""
    if not mean:
        return None
    val = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
    return {"NN": round(float(val(mean["NN"])), 3), "FT": round(float(val(mean["FT"])), 3)}


def rows() -> list[dict]:
    """Table rows: {row, look, training photos, query, source, seeds, cells: {block: {NN, FT} | None}}."""
    out: list[dict] = []
    looks = _load("looks")
    if looks:
        seeds = looks["config"]["seeds"]
        for row, by_look in looks["val"].items():
            for look in ("grey", "materials"):
                cells = {"val": _cell(by_look[look]["mean"])}
                rep = looks.get("report", {}).get(row, {}).get(look)
                cells["queries"] = _cell(rep["mean"]) if rep else None
                for kind in ("interior", "object"):
                    rec = looks.get("real", {}).get(kind, {}).get(row, {}).get(look)
                    cells[f"real_{kind}"] = _cell(rec["mean"]) if rec else None
                out.append({"row": row, "look": look, "photos": "base", "query": "whole photo", "source": "looks",
                            "seeds": seeds, "cells": cells})
    scenes = _load("scenes")
    if scenes:
        look, seeds = default_look(scenes), scenes["config"]["seeds"]
        for row in scenes["val"]:
            for variant, photos in (("-", "base"), ("without", "base"), ("with", "base + scenes")):
                if variant not in scenes["val"][row]:
                    continue
                cells = {b: _cell(scenes.get(b, {}).get(row, {}).get(variant, {}).get("mean")) for b in BLOCKS}
                out.append({"row": row, "look": look, "photos": photos, "query": "whole photo", "source": "scenes",
                            "seeds": seeds, "cells": cells})
    regions = _load("regions")
    if regions:
        look = default_look(regions) if regions["config"].get("model", "FTSPL") == "FTSPL" else "grey"
        seeds = regions["config"]["seeds"]
        summary = regions["summary"]
        best = {"none": "none", "rmac": None, "crops": None}
        for mode in ("rmac", "crops"):  # each mode's best variant on the blocks the decision read
            names = [n for n in summary["val"] if n.startswith(mode + "-")]
            blocks = regions["decision"].get("blocks", ["val"])
            best[mode] = max(names, key=lambda n: (sum(summary[b][n]["FT"][0] for b in blocks),
                                                   sum(summary[b][n]["NN"][0] for b in blocks)))
        for mode, name in best.items():
            cells = {b: _cell(summary.get(b, {}).get(name)) for b in BLOCKS}
            out.append({"row": "FTSPL", "look": look, "photos": "base", "query": f"regions {name}",
                        "source": "regions", "seeds": seeds, "cells": cells})
    return out


def merged(table: list[dict]) -> list[dict]:
    """One row per (row, look, training photos, query, seeds): a block measured by several scripts (the same
    cached cells) keeps the first script's figure, and the row names every script it draws on."""
    out: dict[tuple, dict] = {}
    for r in table:
        key = (r["row"], r["look"], r["photos"], r["query"].replace("regions none", "whole photo"), tuple(r["seeds"]))
        if key not in out:
            out[key] = {**r, "query": key[3], "cells": dict(r["cells"]), "source": [r["source"]]}
            continue
        have = out[key]
        for b, c in r["cells"].items():
            if have["cells"].get(b) is None and c is not None:
                have["cells"][b] = c
        if r["source"] not in have["source"]:
            have["source"].append(r["source"])
    return list(out.values())


def markdown(table: list[dict]) -> str:
    head = ("| row | views | training photos | query | val NN / FT | val_scenes NN / FT | queries (report) NN / FT "
            "| real interior NN / FT | real object NN / FT | from |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        cells = [f"{c['NN']:.3f} / {c['FT']:.3f}" if c else "-" for c in (r["cells"].get(b) for b in BLOCKS)]
        lines.append(f"| {r['row']} | {r['look']} | {r['photos']} | {r['query']} | " + " | ".join(cells)
                     + " | " + ", ".join(f"`{src}.py`" for src in r["source"]) + " |")
    commands = sorted({(src, ",".join(map(str, r["seeds"]))) for r in table for src in r["source"]})
    lines += ["", "Commands: " + "; ".join(f"`{COMMAND[s].format(seeds=seeds)}`" for s, seeds in commands) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    table = merged(rows())
    print(json.dumps(table) if args.json else markdown(table), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
