"""The paper's ablation study (Tables III-V) on our benchmark data, with seeds.

    python benchmarks/quality.py [--seeds 0,1,2] [--rows CNN,source_only,...] [--quick]
                                 [--data DIR] [--work DIR] [--out DIR] [--served-check ROW] [--json]

Per seed: build the split (``ftspl.data`` builder, seeded), then every row:

* ``CNN`` - the ImageNet-pretrained encoders, no training (pooled backbone
  features, what ``ftspl export --pretrained`` serves);
* every other row - ``ftspl.train.train`` in head mode with that preset
  (``ftspl.train.config.PRESETS``), same split, same seed, same budget; the
  paper's Table I deep baselines are the ``CORAL``, ``DANN``, ``MMD`` and ``JAN`` rows;
  ``source_only_partial`` and ``FTSPL_partial`` (only when named in ``--rows``) train
  in partial mode (``--train-blocks``, ``--tail-lr-mult``, ``--tail-bn``) and record
  their seconds per round, beside the head-mode rows'.
  Each trained row is scored with the round the run chose on its validation
  photos (carved from the source; what ``ftspl export`` would serve).

The aggregation adds, per metric, the paired per-seed differences of every row
to ``source_only`` and to ``CNN`` (mean and sample std of the differences;
ANMRR as ``ref - row`` so a positive number is always a gain).

Each row's query photos are ranked against the whole unlabelled target gallery
(L2-normalised embeddings, Euclidean distance) and scored by
``ftspl.engine.scoring.metrics.retrieval_metrics`` - the MI3DOR scorer ``ftspl eval``
uses. Embeddings are computed in-process from the final network because 27
export + index passes do not fit on 2 CPU cores; ``--served-check ROW`` runs
that row (and ``CNN``) once through ``ftspl export`` + ``index add`` + ``eval``
and records both sets of numbers in ``quality.json`` so the equality is on
file, not assumed.

Writes ``OUT/quality.json`` (``{"rows": {ROW: {METRIC: [mean, std]}}, "config":
{...}, "per_seed": ..., "pseudo_acc": ...}``, std = sample std over seeds) and
``OUT/quality.md`` (the table beside the paper's MI3DOR numbers); per-run
results and embeddings stay under ``WORK`` so an interrupted study resumes, and
``benchmarks/figures.py`` draws the figures from them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# OpenMP workers that spin-wait steal the shared cores from each other (a head-mode
# step is 10-100x slower on a busy 2-core machine); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

ROWS = ("CNN", "source_only", "CORAL", "DANN", "MMD", "JAN", "IDCA", "ICAV", "FT", "FT_centroid_pl", "SPL", "FTSPL",
        "FTSPL_global", "source_only_partial", "FTSPL_partial")
#: the paper's Table I deep baselines: an alignment loss beside the source cross-entropy (``--align-weight``)
ALIGN_ROWS = ("CORAL", "DANN", "MMD", "JAN")
#: rows named PRESET + this train with ``--mode partial`` (the last ``--train-blocks`` blocks fine-tune)
PARTIAL = "_partial"
METRICS = ("NN", "FT", "ST", "F", "DCG", "ANMRR", "AUC")

#: The paper's MI3DOR numbers (NN, FT, ST, F, DCG, ANMRR) for the same rows:
#: Table IV (CNN, CNN+IDCA, CNN+ICAV, CNN+IDCA+ICAV = FT, CNN+SPL+IDCA+ICAV = FTSPL),
#: Table III (FT + Nearest Category Centroid) and Table V (SPL). The paper's
#: "CNN"/"AlexNet" row is AlexNet fine-tuned on the labelled 2D images only
#: (Sec. V-A), i.e. our ``source_only``; the paper has no untrained row and no
#: global-selection row.
PAPER_MI3DOR: dict[str, tuple[float, ...]] = {
    "source_only": (0.424, 0.323, 0.469, 0.099, 0.345, 0.667),
    "IDCA": (0.814, 0.631, 0.804, 0.153, 0.666, 0.353),
    "ICAV": (0.787, 0.601, 0.782, 0.146, 0.637, 0.379),
    "FT": (0.845, 0.649, 0.816, 0.156, 0.685, 0.334),
    "FT_centroid_pl": (0.866, 0.658, 0.837, 0.161, 0.697, 0.321),
    "SPL": (0.852, 0.653, 0.825, 0.157, 0.692, 0.328),
    "FTSPL": (0.874, 0.665, 0.844, 0.164, 0.704, 0.316),
}
PAPER_METRICS = ("NN", "FT", "ST", "F", "DCG", "ANMRR")


def study_home():
    """The repository's home (``$FTSPL_HOME``, else ``<repo>/.ftspl``), wherever the script is started:
    its cache holds the Debian packages, the rendered views and the backbone features of every run."""
    from ftspl.engine.home import Home

    return Home.resolve(cwd=ROOT)


def _default(name: str):
    from ftspl.train.config import TrainConfig

    return TrainConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class StudyConfig:
    """The training budget every trained row gets: :class:`TrainConfig`'s defaults, head mode, CPU.

    Those defaults are the budget that gives FTSPL its best mean val FT when this
    script tunes with ``--eval-on val`` on seeds 0 and 1 (held-out *source*
    models' photos; the query photos are never scored while tuning); source_only
    is insensitive to the warm-up (docs/QUALITY.md has the grid).
    """

    rounds: int = _default("rounds")
    epochs: int = _default("epochs")
    warmup_epochs: int = _default("warmup_epochs")
    lr: float = _default("lr")
    lam: float = _default("lam")
    augment_copies: int = _default("augment_copies")
    batch_size: int = _default("batch_size")
    target_ce_weight: float = _default("target_ce_weight")
    pl_space: str = _default("pl_space")
    keep_pretrained: float = _default("keep_pretrained")
    keep_pretrained_dims: int = _default("keep_pretrained_dims")
    #: validation photos carved from the source (the run keeps its best round on them); in the
    #: run key, so results trained before the carve are not reused
    val_frac: float = _default("val_frac")
    mode: str = "head"
    device: str = "cpu"


QUICK = StudyConfig(rounds=2, epochs=2, warmup_epochs=2, augment_copies=1, batch_size=8)


@dataclass
class Split:
    source: Path
    queries: Path
    target: Path
    classes: list[str]
    counts: dict
    val: Path | None = None
    photos: dict | None = None


def logger(tag: str):
    """A ``log(msg)`` that prints ``[TAG HH:MM:SS] msg`` to stderr (this study and the scripts built on it)."""
    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    return log


log = logger("quality")


def build_split(seed: int, work: Path, data: Path | None, bench: str = "full") -> Split:
    """``--data DIR``: an existing source/queries/target layout; else the SH3D benchmark (seeded split + renders)."""
    if data is not None:
        classes = sorted(p.name for p in (data / "source").iterdir() if p.is_dir())
        counts = {k: sum(1 for p in (data / k).rglob("*") if p.is_file()) for k in ("source", "queries")}
        counts["target"] = len({p.parent for p in (data / "target").rglob("*") if p.is_file()})
        val = data / "val" if (data / "val").is_dir() else None
        return Split(data / "source", data / "queries", data / "target", classes, counts, val)
    from ftspl.data.bench import BENCH_PRESETS, build_sh3d_benchmark

    cache = study_home().debian_cache
    cfg = replace(BENCH_PRESETS[bench], seed=seed)
    s = build_sh3d_benchmark(work / f"data-{bench}-s{seed}", cache, cfg)
    return Split(s.source, s.queries, s.target, s.classes, s.counts, s.val, s.photos)


@contextmanager
def seed_lock(data_root: Path, seed: int):
    """An exclusive lock on one seed's data folder (``fcntl.flock``; released if the process dies)."""
    import fcntl

    data_root.mkdir(parents=True, exist_ok=True)
    with open(data_root / f".seed{seed}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def warm_caches(split: Split, seed: int, study: StudyConfig) -> None:
    """Render the views and compute the frozen backbone's features every row of this seed reads."""
    from ftspl.train.config import TrainConfig
    from ftspl.train.loop import pretrained_embeddings

    t = time.perf_counter()
    for q in dict.fromkeys([split.queries, split.val or split.queries]):
        pretrained_embeddings(TrainConfig(source=str(split.source), target=str(split.target), queries=str(q),
                                          seed=seed, **asdict(study)), home=study_home())
    log(f"seed {seed}: caches warm in {time.perf_counter() - t:.0f}s")


def score(emb) -> tuple[dict, dict]:
    """(scalar metrics, PR curve) of query photos against the whole target gallery."""
    from ftspl.engine.scoring.metrics import (
        format_metrics,
        pairwise_euclidean,
        retrieval_metrics,
    )

    q = emb.query / np.linalg.norm(emb.query, axis=1, keepdims=True)
    t = emb.target / np.linalg.norm(emb.target, axis=1, keepdims=True)
    m = retrieval_metrics(pairwise_euclidean(q, t), np.asarray(emb.query_labels, dtype=object),
                          np.asarray(emb.target_labels, dtype=object))
    return format_metrics(m), {"precision": m["precision"].tolist(), "recall": m["recall"].tolist()}


def save_embeddings(path: Path, emb) -> None:
    """What the figures need: L2-normalised query/target embeddings, labels and paths."""
    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    np.savez_compressed(
        path, query=unit(emb.query), target=unit(emb.target),
        query_labels=np.asarray(emb.query_labels), target_labels=np.asarray([t or "" for t in emb.target_labels]),
        query_paths=np.asarray(emb.query_paths), target_paths=np.asarray(emb.target_paths),
    )


def align_weights(arg: str | None) -> dict[str, float]:
    """``--align-weight``: ``"0.3"`` (every Table I row) or ``"CORAL=3,DANN=0.3"`` -> {row: weight}."""
    if not arg:
        return {}
    if "=" not in arg:
        return dict.fromkeys(ALIGN_ROWS, float(arg))
    out = {}
    for part in arg.split(","):
        row, _, w = part.partition("=")
        if row not in ALIGN_ROWS:
            sys.exit(f"--align-weight: {row!r} is not one of {', '.join(ALIGN_ROWS)}")
        out[row] = float(w)
    return out


def run_row(row: str, seed: int, split: Split, study: StudyConfig, seed_dir: Path, partial: dict | None = None,
            align_weights: dict[str, float] | None = None) -> dict:
    """One (row, seed): train (unless CNN), score, save embeddings; the result dict is also written to disk.

    A ``*_partial`` row trains its preset in partial mode with ``partial``'s settings (``train_blocks``,
    ``backbone_lr_mult``, ``tail_bn``), which are part of its key only.
    """
    from ftspl.train.config import TrainConfig, apply_preset
    from ftspl.train.loop import pretrained_embeddings, train

    done = seed_dir / f"{row}.json"
    run_dir = seed_dir / f"run-{row}"
    is_partial = row.endswith(PARTIAL)
    cfg = TrainConfig(
        source=str(split.source), target=str(split.target), queries=str(split.queries), out=str(run_dir),
        seed=seed, **asdict(study),
    )
    if row != "CNN":
        if is_partial:
            cfg = replace(cfg, mode="partial", **(partial or {}))
        cfg = apply_preset(cfg, row.removesuffix(PARTIAL))
        if row in (align_weights or {}):  # --align-weight: the Table I rows' loss weight
            cfg = replace(cfg, align_weight=align_weights[row])
    # A finished result is reused only when it was made with this very training config (the
    # preset's switches and TrainConfig's defaults included) and split; otherwise a rerun with
    # other flags or other defaults in the same --work would report the old numbers.
    ident = {"row": row, "config": {k: v for k, v in asdict(cfg).items() if k != "out"}}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    if done.exists():
        prev = json.loads(done.read_text())
        if prev.get("run_key") == key:
            return prev
        log(f"{done}: made with another config or split; running {row} again")
    if run_dir.exists():  # a run killed before its result was written: start it again
        shutil.rmtree(run_dir)
    t = time.perf_counter()
    if row == "CNN":
        emb = pretrained_embeddings(cfg, home=study_home())
        rounds: list[dict] = []
    else:
        res = train(cfg, return_embeddings=True, home=study_home())
        emb, rounds = res.embeddings, res.rounds
    seconds = time.perf_counter() - t
    metrics, pr = score(emb)
    save_embeddings(seed_dir / f"{row}.npz", emb)
    out = {
        "row": row, "seed": seed, "seconds": round(seconds, 2), "metrics": metrics, "pr": pr,
        "pseudo_acc_per_round": [r.get("pseudo_acc") for r in rounds],
        "pseudo_acc_selected_per_round": [r.get("pseudo_acc_selected") for r in rounds],
        "selected_per_round": [r.get("selected") for r in rounds],
        "n_query": len(emb.query_labels), "n_target": len(emb.target_labels), "run_key": key,
        "val_per_round": [r.get("val") for r in rounds],
        "val_baseline": rounds[0].get("val_baseline") if rounds else None,
        "seconds_per_round": [r.get("seconds") for r in rounds],
    }
    if rounds:
        from ftspl.train.validation import verdict

        out["selection"] = verdict(rounds)
    done.write_text(json.dumps(out))
    return out


# -- the served pipeline, once ------------------------------------------------------------------
def _ftspl(home: Path, *args: str) -> dict:
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "ftspl", *args, "--json"], check=False, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"ftspl {' '.join(args)} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def served_check(row: str, seed_dir: Path, split: Split) -> dict:
    """``ftspl export`` + ``index add`` + ``eval`` for ``row``; returns served vs in-process metrics.

    Kept in ``served-<row>.json`` beside the run, so re-aggregating does not export again.
    """
    done = seed_dir / f"served-{row}.json"
    if done.exists():
        return json.loads(done.read_text())
    home = seed_dir / f"home-{row}"
    if home.exists():
        shutil.rmtree(home)
    if row == "CNN":
        _ftspl(home, "export", "--pretrained")
    else:
        _ftspl(home, "export", str(seed_dir / f"run-{row}"))
    _ftspl(home, "index", "add", str(split.target), "--rebuild")
    served = _ftspl(home, "eval", str(split.queries))["metrics"]
    inproc = json.loads((seed_dir / f"{row}.json").read_text())["metrics"]
    diff = max(abs(served[k] - inproc[k]) for k in METRICS)
    out = {"row": row, "served": served, "in_process": inproc, "max_abs_diff": diff}
    done.write_text(json.dumps(out))
    return out


# -- aggregation ---------------------------------------------------------------------------------
def aggregate(per_seed: dict[int, dict[str, dict]], rows: list[str]) -> dict:
    out = {}
    for row in rows:
        vals = [per_seed[s][row]["metrics"] for s in per_seed if row in per_seed[s]]
        if not vals:
            continue
        out[row] = {}
        for m in METRICS:
            a = np.asarray([v[m] for v in vals])
            out[row][m] = [round(float(a.mean()), 4), round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4)]
    return out


def paired_differences(per_seed: dict[int, dict[str, dict]], rows: list[str],
                       refs: tuple[str, ...] = ("source_only", "CNN")) -> dict:
    """{row: {"vs_<ref>": {metric: [mean, std, n]}}}: per-seed differences row - ref (ANMRR: ref - row).

    Paired on the seed: only seeds where both the row and the reference ran count;
    std is the sample std of the differences (0 with one seed).
    """
    out: dict = {}
    for row in rows:
        for ref in refs:
            if row == ref:
                continue
            seeds = [s for s in per_seed if row in per_seed[s] and ref in per_seed[s]]
            if not seeds:
                continue
            d = out.setdefault(row, {}).setdefault(f"vs_{ref}", {})
            for m in METRICS:
                diffs = np.asarray([per_seed[s][row]["metrics"][m] - per_seed[s][ref]["metrics"][m] for s in seeds])
                if m == "ANMRR":
                    diffs = -diffs
                d[m] = [round(float(diffs.mean()), 4), round(float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0, 4),
                        len(seeds)]
    return out


def markdown(rows: dict, n_seeds: int) -> str:
    head = ["row", *METRICS, "paper MI3DOR (NN FT ST F DCG ANMRR)"]
    lines = [
        f"Ours: mean ± sample std over {n_seeds} seed(s); ANMRR lower is better, all else higher.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(METRICS) + ["---"]) + "|",
    ]
    for row, ms in rows.items():
        cells = [f"{ms[m][0]:.3f} ± {ms[m][1]:.3f}" for m in METRICS]
        paper = PAPER_MI3DOR.get(row)
        ref = " ".join(f"{v:.3f}" for v in paper) if paper else "-"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {ref} |")
    lines += [
        "",
        "Paper: MI3DOR numbers from Tables III-V (AlexNet backbone, 21 classes). The paper's CNN/AlexNet row is",
        "AlexNet fine-tuned on the labelled images only, so it sits beside our `source_only`; our `CNN` row",
        "(ImageNet features, no training) and `FTSPL_global` have no paper counterpart. The paper reports no AUC.",
    ]
    return "\n".join(lines) + "\n"


def beats(rows: dict, a: str = "FTSPL", b: str = "source_only") -> dict:
    """Per metric: does ``a`` beat ``b`` by more than one std (the larger of the two)?"""
    out = {}
    if a not in rows or b not in rows:
        return out
    for m in METRICS:
        (ma, sa), (mb, sb) = rows[a][m], rows[b][m]
        gain = (mb - ma) if m == "ANMRR" else (ma - mb)
        out[m] = {"gain": round(gain, 4), "std": round(max(sa, sb), 4), "beats_by_1std": bool(gain > max(sa, sb))}
    return out


def versions() -> dict:
    import onnxruntime
    import torch

    import ftspl

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "ftspl": getattr(ftspl, "__version__", "?"), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default=",".join(r for r in ROWS if not r.endswith(PARTIAL)),
                    help=f"default: every row but the *{PARTIAL} ones (--mode partial, slower; name them)")
    ap.add_argument("--quick", action="store_true", help="a tiny training budget (smoke test)")
    ap.add_argument("--data", type=Path, default=None, help="use this source/queries/target folder for every seed")
    ap.add_argument("--bench", default="full", choices=("small", "full"), help="ftspl.data.bench preset")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="where the per-seed benchmark folders are built (reused when the config matches; "
                         "default: <home>/cache/quality-data)")
    ap.add_argument("--eval-on", default="queries", choices=("queries", "val"),
                    help="val: score on the held-out SOURCE models' photos (tuning; the queries stay untouched)")
    ap.add_argument("--prepare", action="store_true", help="only build the data and warm the view/feature caches")
    ap.add_argument("--work", type=Path, default=None, help="per-run results and embeddings "
                    "(default: <home>/cache/quality)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--served-check", default=None, metavar="ROW", help="also run ROW and CNN through export+index+eval")
    for name, typ in (("rounds", int), ("epochs", int), ("warmup-epochs", int), ("lr", float), ("lam", float),
                      ("augment-copies", int), ("target-ce-weight", float)):
        ap.add_argument(f"--{name}", type=typ, default=None)
    ap.add_argument("--pl-space", default=None, choices=("embedding", "unit"))
    ap.add_argument("--keep-pretrained", type=float, default=None)
    ap.add_argument("--align-weight", default=None,
                    help="loss weight of the CORAL/DANN/MMD/JAN rows (default: each preset's): one number for all, or ROW=W,ROW=W")
    ap.add_argument("--keep-pretrained-dims", type=int, default=None)
    ap.add_argument("--train-blocks", type=int, default=_default("train_blocks"), help="*_partial rows: blocks trained")
    ap.add_argument("--tail-lr-mult", type=float, default=_default("backbone_lr_mult"),
                    help="*_partial rows: the trained blocks' learning rate as a multiple of --lr")
    ap.add_argument("--tail-bn", default=_default("tail_bn"), choices=("frozen", "train"),
                    help="*_partial rows: BatchNorm statistics of the trained blocks")
    ap.add_argument("--name", default="quality", help="write OUT/NAME.json and OUT/NAME.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        sys.exit(f"unknown row(s) {', '.join(bad)}; valid: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    study = QUICK if args.quick else StudyConfig()
    overrides = {k: getattr(args, k) for k in ("rounds", "epochs", "warmup_epochs", "lr", "lam", "augment_copies",
                                               "target_ce_weight", "pl_space", "keep_pretrained",
                                               "keep_pretrained_dims")
                 if getattr(args, k) is not None}
    study = replace(study, **overrides)
    partial = {"train_blocks": args.train_blocks, "backbone_lr_mult": args.tail_lr_mult, "tail_bn": args.tail_bn}
    aligns = align_weights(args.align_weight)  # parsed (and a bad row name refused) before any data is built
    cache = study_home().cache
    work = (args.work or cache / "quality").resolve()
    data_root = (args.data_root or cache / "quality-data").resolve()

    # Triton's LLVM must load before Mesa's (the photo renderer's EGL context); see
    # ftspl.engine.rendering.renderer._load_torch_llvm_first - the other order segfaults.
    import importlib

    importlib.import_module("torch._dynamo")
    t0 = time.perf_counter()
    per_seed: dict[int, dict[str, dict]] = {}
    splits: dict[int, dict] = {}
    checks = []
    for seed in seeds:
        t = time.perf_counter()
        with seed_lock(data_root, seed):  # two studies at once build and warm one seed's data in turn
            split = build_split(seed, data_root, args.data.resolve() if args.data else None, args.bench)
            if args.prepare:
                warm_caches(split, seed, study)
        if args.eval_on == "val":
            if split.val is None or not split.val.is_dir():
                sys.exit(f"{split.source.parent}: no val/ split to tune on")
            split = replace(split, queries=split.val)
        splits[seed] = {"counts": split.counts, "photos": split.photos, "classes": split.classes}
        log(f"seed {seed}: split {split.counts} ({len(split.classes)} classes) in {time.perf_counter() - t:.0f}s")
        seed_dir = work / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        per_seed[seed] = {}
        if args.prepare:
            continue
        for row in rows:
            res = run_row(row, seed, split, study, seed_dir, partial, aligns)
            per_seed[seed][row] = res
            m = res["metrics"]
            log(f"seed {seed} {row:>15}: NN {m['NN']:.3f} FT {m['FT']:.3f} DCG {m['DCG']:.3f} "
                f"ANMRR {m['ANMRR']:.3f} ({res['seconds']:.0f}s)")
        if args.served_check and seed == seeds[0]:
            for row in dict.fromkeys(["CNN", args.served_check]):
                if row in rows:
                    c = served_check(row, seed_dir, split)
                    checks.append(c)
                    log(f"served check {row}: max |served - in-process| = {c['max_abs_diff']:.2e}")

    if args.prepare:
        return 0
    agg = aggregate(per_seed, rows)
    out = {
        "rows": agg,
        "config": {
            "study": asdict(study), "seeds": seeds, "splits": splits, "eval_on": args.eval_on,
            **({"partial": partial} if any(r.endswith(PARTIAL) for r in rows) else {}),
            "budget_chosen_on": "val photos (held-out source models) with --eval-on val: the budget on seeds 0 and 1, "
                                "keep_pretrained on seeds 0-2, the Table I rows' align weights on seeds 0 and 1, "
                                "the pseudo-labelling rows' JAN warm-up on seeds 0-4; "
                                "the query photos were never scored while tuning",
            "align_weights": aligns or "each preset's (ftspl.train.config.PRESETS)",
            "data": str(args.data) if args.data else f"ftspl.data.bench BENCH_PRESETS[{args.bench!r}], seed = study seed",
            "scoring": "query photos vs the whole target gallery, L2-normalised embeddings, Euclidean; "
                       "ftspl.engine.scoring.metrics.retrieval_metrics (MI3DOR scorer); std = sample std over seeds",
            "versions": versions(), "minutes_this_call": round((time.perf_counter() - t0) / 60, 1),
            "minutes_training_and_scoring": round(sum(v["seconds"] for d in per_seed.values() for v in d.values()) / 60, 1),
            "served_check": checks,
        },
        "ftspl_vs_source_only": beats(agg),
        "paired_differences": paired_differences(per_seed, rows),
        "per_seed": {str(s): {r: v["metrics"] for r, v in d.items()} for s, d in per_seed.items()},
        "pseudo_acc": {str(s): {r: v["pseudo_acc_per_round"] for r, v in d.items() if v["pseudo_acc_per_round"]}
                       for s, d in per_seed.items()},
        "seconds": {str(s): {r: v["seconds"] for r, v in d.items()} for s, d in per_seed.items()},
        "seconds_per_round": {str(s): {r: v.get("seconds_per_round") for r, v in d.items() if v.get("seconds_per_round")}
                              for s, d in per_seed.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(agg, len(seeds)))
    if args.json:
        print(json.dumps(out))
    else:
        print(markdown(agg, len(seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
