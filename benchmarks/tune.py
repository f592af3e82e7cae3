"""Choose every tuned training default on the tuning splits, with the rule written down.

    python benchmarks/tune.py [--grids all|NAME,...] [--seeds 0,1,2,3,4] [--jobs 2] [--check] [--json]

Each grid (:data:`GRIDS`) is one row's knobs: every combination of their values
is a cell; each cell trains on every tuning seed and is scored on that seed's
val photos ranking its val gallery (:mod:`ftspl.data.protocol`: never the
reported gallery, never a report seed). Grids of one row run in stages: a
grid with ``after`` starts from the winner of that grid.

The rule, for every grid (:data:`studylib.RULE`): the cell with the best mean val FT over the tuning
seeds wins; a cell within :data:`studylib.TIE` of the best FT is a tie, broken by the
higher mean val NN, then by the grid's order (cheaper settings are listed
first). The rule is applied as is, whatever the size of the margin: the report
(``quality.py``) says which differences are noise.

Every row tuned here gets the same effort: three stages, 9 + 3 + 3 cells. Writes
``benchmarks/results/tune_<grid>.json`` (every cell per seed, the rule, the
winner and where the winner lives: TrainConfig's defaults for FTSPL, which the
ablation rows IDCA...FTSPL_global share, else the row's preset). ``--check``
exits 1 when a default differs from its grid's winner.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, load_torch_before_mesa, logger, quiet_openmp, study_home
from studylib import QUICK, RULE, pick

quiet_openmp()
log = logger("tune")


@dataclass(frozen=True)
class Grid:
    row: str
    knobs: dict  #: knob name -> list of (label, {TrainConfig field: value})
    after: str | None = None  #: start from that grid's winner
    note: str = ""
    #: fields a first stage pins beside :data:`START`
    base: dict = field(default_factory=dict)

    def cells(self, base: dict) -> list[tuple[str, dict]]:
        names = list(self.knobs)
        out = []
        for combo in itertools.product(*(self.knobs[n] for n in names)):
            fields = dict(base)
            for _, f in combo:
                fields.update(f)
            out.append((", ".join(label for label, _ in combo), fields))
        return out


def _vals(name: str, values) -> list[tuple[str, dict]]:
    return [(f"{name} {v}", {name: v}) for v in values]


_KEEP = {"keep_pretrained": _vals("keep_pretrained", (0.2, 0.4, 0.6))}
_ALIGN_WARMUP = [("no alignment", {"align": "none"}),
                 ("JAN 0.3 in the warm-up", {"align": "jan", "align_weight": 0.3, "align_phase": "warmup"}),
                 ("JAN 1 in the warm-up", {"align": "jan", "align_weight": 1.0, "align_phase": "warmup"})]

#: grid name -> Grid. Every tuned row gets three stages of the same size: a 3 x 3 grid over its own
#: two method knobs, then 3 training lengths at that winner, then 3 weights of the kept pretrained
#: features in the served embedding (13 distinct cells per row and seed).
GRIDS: dict[str, Grid] = {
    "FTSPL_method": Grid("FTSPL", {"lam": _vals("lam", (0.1, 0.25, 0.5)), "warm-up alignment": _ALIGN_WARMUP},
                         note="Eq. 4 strength x the alignment of the warm-up that round 1 pseudo-labels from"),
    "FTSPL_budget": Grid("FTSPL", {"epochs": _vals("epochs", (2, 4, 8))}, after="FTSPL_method",
                         note="epochs per round"),
    "FTSPL_keep": Grid("FTSPL", _KEEP, after="FTSPL_budget"),
    "source_only_method": Grid("source_only", {"lr": _vals("lr", (0.003, 0.01, 0.03)),
                                               "epochs": _vals("epochs", (2, 4, 8))},
                               note="learning rate x epochs per round (the whole budget is cross-entropy on photos)"),
    "source_only_budget": Grid("source_only", {"warmup_epochs": _vals("warmup_epochs", (2, 5, 10))},
                               after="source_only_method", note="warm-up epochs"),
    "source_only_keep": Grid("source_only", _KEEP, after="source_only_budget"),
}
for _row in ("CORAL", "DANN", "MMD", "JAN"):
    GRIDS[f"{_row}_method"] = Grid(_row, {"align_weight": _vals("align_weight", (0.1, 0.3, 1.0)),
                                          "lr": _vals("lr", (0.003, 0.01, 0.03))},
                                   note="alignment loss weight x learning rate")
    GRIDS[f"{_row}_budget"] = Grid(_row, {"epochs": _vals("epochs", (2, 4, 8))}, after=f"{_row}_method",
                                   note="epochs per round")
    GRIDS[f"{_row}_keep"] = Grid(_row, _KEEP, after=f"{_row}_budget")


def lives_in(row: str) -> str:
    """Where a row's winner is the default: TrainConfig (FTSPL, shared by the ablation presets) or TUNED[row]."""
    return "TrainConfig" if row == "FTSPL" else f"TUNED[{row!r}]"


def grid_order(names: list[str]) -> list[str]:
    """Grids in an order where every ``after`` runs first."""
    out: list[str] = []

    def visit(n: str) -> None:
        if n in out:
            return
        if GRIDS[n].after:
            visit(GRIDS[n].after)
        out.append(n)

    for n in names:
        visit(n)
    return out


#: Where every first stage starts: the values the tuned fields had before any grid chose them, pinned
#: in each cell (except the fields a row's preset switches set, e.g. the Table I rows' alignment),
#: so a cell's config, and its cached result, never depend on a default another grid chose.
START = {"lam": 0.25, "align": "jan", "align_weight": 0.3, "align_phase": "warmup", "epochs": 4, "warmup_epochs": 5,
         "lr": 0.01, "keep_pretrained": 0.4}
EXTRA: dict = {}  #: fields every cell gets on top (``--quick``)


def _base(g: Grid, winners: dict) -> dict:
    if g.after:
        return winners[g.after]["winner"]["fields"]
    from ftspl.train.config import PRESETS

    return {**{k: v for k, v in START.items() if k not in PRESETS[g.row]}, **g.base, **EXTRA}


def run_grid(name: str, splits: list, work: Path, winners: dict, shard: tuple[int, int] | None) -> dict | None:
    """All cells x seeds of one grid (or this shard's share); the result record, or None for a shard."""
    from studylib import mean_std, run_cell

    g = GRIDS[name]
    base = _base(g, winners)
    cells = []
    jobs = [(i, label, fields, s) for i, (label, fields) in enumerate(g.cells(base)) for s in splits]
    for j, (i, label, fields, split) in enumerate(jobs):
        if shard and j % shard[1] != shard[0]:
            continue
        run_cell(g.row, split, "tune", fields, work)
    if shard:
        return None
    for i, (label, fields) in enumerate(g.cells(base)):
        res = [run_cell(g.row, s, "tune", fields, work) for s in splits]
        cells.append({"order": i, "label": label, "fields": fields, "mean": mean_std(res),
                      "per_seed": {str(r["seed"]): r["metrics"] for r in res},
                      "seconds": round(sum(r["seconds"] for r in res), 1)})
    win = pick(cells)
    return {"grid": name, "row": g.row, "note": g.note, "after": g.after, "base": base,
            "seeds": [s.seed for s in splits], "scored": "val photos (held-out source models) ranking the val gallery "
            "(the source models' meshes); ftspl.data.protocol", "rule": RULE, "cells": cells,
            "winner": {"label": win["label"], "fields": win["fields"], "FT": win["mean"]["FT"], "NN": win["mean"]["NN"]},
            "lives_in": lives_in(g.row)}


def markdown(results: dict) -> str:
    """Every grid as a table (mean ± sample std over the tuning seeds), the winner in bold."""
    from studylib import pm

    lines = [f"Tuning: val photos ranking the val gallery on tuning seeds; rule: {RULE}.", ""]
    for name, rec in results.items():
        lines += [f"### {name} ({rec['row']}; {rec['note'] or 'kept pretrained features'}; seeds "
                  f"{', '.join(map(str, rec['seeds']))}; winner -> {rec['lives_in']})", "",
                  "| cell | val FT | NN | ST | DCG | ANMRR |", "|---|---|---|---|---|---|"]
        for c in rec["cells"]:
            win = c["label"] == rec["winner"]["label"]
            vals = [pm(c["mean"][m]) for m in ("FT", "NN", "ST", "DCG", "ANMRR")]
            lines.append(f"| {'**' + c['label'] + '**' if win else c['label']} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def current_defaults(row: str) -> dict:
    from dataclasses import asdict

    from ftspl.train.config import TrainConfig, apply_preset

    return asdict(apply_preset(TrainConfig(), row))


def check(results: dict) -> list[str]:
    """Lines naming each default that differs from the winner of its row's last stage (empty: all agree)."""
    from ftspl.train.config import PRESETS, TUNED

    bad = []
    earlier = {g.after for g in GRIDS.values() if g.after}
    for name, rec in results.items():
        if name in earlier:  # a later stage of the row carries this winner forward; its last stage is checked
            continue
        have = current_defaults(rec["row"])
        for k, v in rec["winner"]["fields"].items():
            if have[k] != v:
                bad.append(f"{name}: {rec['lives_in']}.{k} is {have[k]!r}, the grid chose {v!r}")
            if rec["row"] == "FTSPL" and (k in PRESETS["FTSPL"] or k in TUNED.get("FTSPL", {})):
                bad.append(f"{name}: the FTSPL preset overrides {k}; the winner must be TrainConfig's default")
    return bad


def load_results(names: list[str], folder: Path = RESULTS) -> dict:
    out = {}
    for n in names:
        p = folder / f"tune_{n}.json"
        if p.exists():
            out[n] = json.loads(p.read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default="all", help=f"all, or some of: {', '.join(GRIDS)}")
    ap.add_argument("--seeds", default=None, help="tuning seeds (default: ftspl.data.protocol.TUNE_SEEDS)")
    ap.add_argument("--jobs", type=int, default=1, help="processes that train cells side by side (one core each)")
    ap.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # K/N: a child of --jobs
    ap.add_argument("--work", type=Path, default=None, help="per-cell results (default: <home>/cache/study)")
    ap.add_argument("--data-root", type=Path, default=None, help="benchmark builds (default: <home>/cache/quality-data)")
    ap.add_argument("--bench", default="full", choices=("small", "full", "folders"),
                    help="folders: --data-root holds s<SEED>/ builds (source, val, val_gallery, queries, target, manifest)")
    ap.add_argument("--check", action="store_true", help="only compare the committed winners with the defaults")
    ap.add_argument("--quick", action="store_true", help="a tiny training budget in every cell (smoke test, not a choice)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where tune_<grid>.json go")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    names = list(GRIDS) if args.grids == "all" else [n.strip() for n in args.grids.split(",") if n.strip()]
    unknown = [n for n in names if n not in GRIDS]
    if unknown:
        sys.exit(f"--grids: unknown {', '.join(unknown)}; valid: all, {', '.join(GRIDS)}")
    if args.quick:
        EXTRA.update(QUICK)
    if args.check:
        results = load_results(list(GRIDS), args.out)
        bad = [f"{n}: no {args.out / f'tune_{n}.json'}; run benchmarks/tune.py --grids {n}" for n in GRIDS if n not in results]
        bad += check(results)
        print("\n".join(bad) if bad else "every tuned default equals its grid's winner")
        return 1 if bad else 0

    from protocollib import tuning_seeds
    from studylib import build_split, data_of

    seeds = tuning_seeds(args.seeds or None)
    home = study_home()
    work = (args.work or home.cache / "study").resolve()
    data_root = (args.data_root or home.cache / "quality-data").resolve()
    load_torch_before_mesa()
    splits = [build_split(s, data_root, args.bench) for s in seeds]
    order = grid_order(names)

    shard = tuple(int(x) for x in args.shard.split("/")) if args.shard else None
    children = []
    if args.jobs > 1 and not shard:
        base = [sys.executable, __file__, "--grids", ",".join(order), "--seeds", ",".join(map(str, seeds)),
                "--work", str(work), "--data-root", str(data_root), "--bench", args.bench, *(["--quick"] if args.quick else [])]
        children = [subprocess.Popen([*base, "--shard", f"{k}/{args.jobs}"]) for k in range(1, args.jobs)]
        shard = (0, args.jobs)
    winners: dict = {}
    for name in order:
        if shard:  # this process's share, then (a stage needs the earlier stage's winner) everyone's
            run_grid(name, splits, work, winners, shard)
            _wait_for_grid(name, splits, work, winners, children)
        winners[name] = {**run_grid(name, splits, work, winners, None), "data": data_of(args.bench)}
        if not args.shard:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"tune_{name}.json").write_text(json.dumps(winners[name], indent=1) + "\n")
            w = winners[name]["winner"]
            log(f"{name}: winner {w['label']} (val FT {w['FT'][0]:.3f}, NN {w['NN'][0]:.3f}) -> {winners[name]['lives_in']}")
    for c in children:
        c.wait()
    if args.shard:
        return 0
    if not args.shard and args.grids == "all":
        (args.out / "tune.md").write_text(markdown({n: winners[n] for n in order}))
    bad = check({n: winners[n] for n in order})
    summary = {n: winners[n]["winner"] for n in order}
    print(json.dumps({"winners": summary, "defaults_differ": bad}) if args.json else
          "\n".join([f"{n}: {w['label']}" for n, w in summary.items()] + bad))
    return 0


def _wait_for_grid(name: str, splits: list, work: Path, winners: dict, children: list) -> None:
    """Block until every cell of ``name`` has a cached result (the other shards write them); a failed child ends it."""
    import time

    from studylib import cell_key, train_config

    g = GRIDS[name]
    base = _base(g, winners)
    wanted = [work / f"seed{s.seed}" / "tune" / f"{g.row}-{cell_key(g.row, train_config(g.row, s, f), 'tune')}.json"
              for _, f in g.cells(base) for s in splits]
    while not all(p.exists() for p in wanted):
        failed = [c for c in children if c.poll() not in (None, 0)]
        if failed:
            sys.exit(f"a --jobs child failed (exit {failed[0].returncode}); its cells are missing")
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
