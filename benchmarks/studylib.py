"""The study's machinery, shared by ``tune.py`` (choose defaults) and ``quality.py`` (report them).

A row is a way of embedding photos and shapes: ``CNN`` (the ImageNet
encoder's pooled features, what ``ftspl export --pretrained`` serves),
``CNN_centred`` (the same features centred and projected on the unlabelled
target shapes, the step every trained row's served embedding also has) or a
training preset of :data:`ftspl.train.config.PRESETS`, trained in head mode.

A cell is a row with some :class:`~ftspl.train.config.TrainConfig` fields set.
:func:`run_cell` trains it on one seed's benchmark build (source photos,
unlabelled target shapes: the same for tuning and reporting) and scores it for
one purpose (:mod:`ftspl.data.protocol`):

* ``tune``: the val photos (held-out source models) rank the val gallery (the
  source models' meshes), through :func:`ftspl.train.apply.embed_run`;
* ``report``: the query photos rank the target gallery.

Results are cached per (cell, seed, purpose) under the work folder, keyed by
the whole training config, so an interrupted study resumes and a changed
default never reuses an old number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from common import logger, study_home

METRICS = ("NN", "FT", "ST", "F", "DCG", "ANMRR", "AUC")
PAIRED = ("NN", "FT", "ST", "DCG", "ANMRR")  #: per-query metrics (bootstrap); ANMRR is lower-better
PRETRAINED_ROWS = ("CNN", "CNN_centred")
#: ``--quick``: a tiny training budget in every cell (a smoke test of tune.py and quality.py, never a choice)
QUICK = {"rounds": 2, "epochs": 2, "warmup_epochs": 2, "augment_copies": 1, "batch_size": 8}
log = logger("study")


def trained_rows() -> tuple[str, ...]:
    from ftspl.train.config import PRESETS

    return tuple(PRESETS)


def all_rows() -> tuple[str, ...]:
    return (*PRETRAINED_ROWS, *trained_rows())


@dataclass(frozen=True)
class Split:
    seed: int
    root: Path
    source: Path
    val: Path
    val_gallery: Path
    queries: Path
    target: Path
    classes: list
    counts: dict
    photos: dict

    def scored(self, purpose: str) -> tuple[Path, Path]:
        """(photos, gallery) a purpose scores; refused unless the build's manifest gives them that role."""
        from ftspl.data.protocol import check_use

        name = "val" if purpose == "tune" else "queries"
        check_use(self.root, purpose, name)
        return (self.val, self.val_gallery) if purpose == "tune" else (self.queries, self.target)


@contextmanager
def _seed_lock(data_root: Path, seed: int):
    """An exclusive lock on one seed's data folder (two studies build one seed's data in turn)."""
    import fcntl

    data_root.mkdir(parents=True, exist_ok=True)
    with open(data_root / f".seed{seed}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def folder_split(root: Path, seed: int) -> Split:
    """A build laid out like the benchmark's (source/, val/, val_gallery/, queries/, target/, manifest.json)."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").exists() else {}
    return Split(seed, root, root / "source", root / "val", root / "val_gallery", root / "queries", root / "target",
                 manifest.get("classes", []), manifest.get("counts", {}), manifest.get("photos", {}))


def build_split(seed: int, data_root: Path, bench: str = "full", variety: str | None = None) -> Split:
    """The SH3D benchmark of ``seed`` (built once under ``data_root``, reused when the config matches).

    ``variety``: the source photos' :data:`ftspl.data.variety.PHOTO_VARIETY` preset (default: the bench
    preset's :data:`~ftspl.data.variety.DEFAULT_VARIETY`). A ``base`` build lives in
    ``data-<bench>-s<seed>``, any other in ``data-<bench>-<variety>-s<seed>``, which hard-links the
    base build's identical files when that exists: a folder never changes config, so cached cells
    (keyed by the source folder) stay valid. ``bench="folders"``: ``data_root/s<seed>`` is an
    existing build (tests, or data made elsewhere).
    """
    from ftspl.data.bench import build_sh3d_benchmark, preset_config
    from ftspl.data.variety import DEFAULT_VARIETY

    if bench == "folders":
        return folder_split(data_root / f"s{seed}", seed)
    variety = variety or DEFAULT_VARIETY[bench]
    cfg = preset_config(bench, seed, variety)
    base = data_root / f"data-{bench}-s{seed}"
    out = base if variety == "base" else data_root / f"data-{bench}-{variety}-s{seed}"
    link = base if out != base and (base / "manifest.json").exists() else None
    with _seed_lock(data_root, seed):
        s = build_sh3d_benchmark(out, study_home().debian_cache, cfg, link_from=link)
    return Split(seed, s.root, s.source, s.val, s.val_gallery, s.queries, s.target, s.classes, s.counts, s.photos)


def data_of(bench: str) -> str:
    """The builds a result rests on, in words: the bench preset and the variety of its source photos."""
    from ftspl.data.variety import DEFAULT_VARIETY

    if bench == "folders":
        return "existing builds (--data-root s<seed>/)"
    return f"BENCH_PRESETS[{bench!r}] + source-photo variety {DEFAULT_VARIETY[bench]!r} (studylib.build_split)"


def train_config(row: str, split: Split, fields: dict | None = None, out: Path | None = None):
    """TrainConfig's defaults, then the row's preset, then ``fields`` (a grid cell's settings)."""
    from ftspl.train.config import TrainConfig, apply_preset

    cfg = TrainConfig(source=str(split.source), target=str(split.target), out=str(out or "unused"),
                      seed=split.seed, device="cpu", mode="head")
    if row not in PRETRAINED_ROWS:
        cfg = apply_preset(cfg, row)
    return replace(cfg, **(fields or {}))


def run_dir_of(row: str, cfg, split: Split, purpose: str, work: Path) -> Path:
    """The run folder a trained cell leaves under ``work``."""
    return work / f"seed{split.seed}" / purpose / f"run-{row}-{cell_key(row, cfg, purpose)}"


#: config fields left out of a cell's key while they hold the value every config had before the field existed
_KEY_NEUTRAL = {"look": "grey", "queries_shapes": None}
_ABSENT = object()


#: settings a head-mode run never reads (only partial and full modes train backbone blocks): a head cell's key
#: holds them at these fixed values, so a change of their defaults does not retrain the head cells
_HEAD_IGNORES = {"backbone_lr_mult": 0.1, "train_blocks": 1, "tail_bn": "frozen"}


def cell_key(row: str, cfg, purpose: str) -> str:
    config = {k: v for k, v in asdict(cfg).items()
              if k not in ("out", "queries") and _KEY_NEUTRAL.get(k, _ABSENT) != v}
    if cfg.mode == "head":
        config.update(_HEAD_IGNORES)
    ident = {"row": row, "purpose": purpose, "config": config}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def query_groups(paths: list[str]) -> list[str]:
    """The model each query photo shows (``<model>__r<k>.jpg`` / ``<model>__icon.png``): the bootstrap's unit."""
    return [Path(p).name.split("__")[0] for p in paths]


def score(q: np.ndarray, q_labels, t: np.ndarray, t_labels) -> tuple[dict, dict, dict]:
    """(scalar metrics, per-query values, PR curve) of query embeddings ranking gallery embeddings."""
    from ftspl.engine.scoring.metrics import format_metrics, pairwise_euclidean, retrieval_metrics

    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    m = retrieval_metrics(pairwise_euclidean(q, t), np.asarray(q_labels, dtype=object),
                          np.asarray(t_labels, dtype=object), per_query=True)
    per = {k: [None if np.isnan(v) else round(float(v), 5) for v in m["per_query"][k]] for k in PAIRED}
    return format_metrics(m), per, {"precision": m["precision"].tolist(), "recall": m["recall"].tolist()}


def _centred(fit_on: np.ndarray, dims: int, *xs: np.ndarray) -> list[np.ndarray]:
    """``CNN_centred``: the kept-pretrained branch alone (ftspl.train.keep), fitted on the target shapes."""
    import torch

    from ftspl.train.keep import KeepPretrained

    keep = KeepPretrained(fit_on.shape[1], dims, 0.5)
    keep.fit(torch.from_numpy(fit_on))
    with torch.no_grad():
        return [keep(torch.from_numpy(x)).numpy() for x in xs]


def embed_finished(row: str, cfg, split: Split, photos: Path, gallery: Path, run_dir: Path | None):
    """(query embeddings, labels, paths, gallery embeddings, labels, paths) of ``photos`` ranking ``gallery``:
    a pretrained row, or a trained row through its finished ``run_dir`` (the round export would serve).
    ``CNN_centred`` is fitted on the split's unlabelled target shapes, as training's branch is."""
    from ftspl.train.loop import pretrained_embeddings

    home = study_home()
    if row in PRETRAINED_ROWS:
        emb = pretrained_embeddings(replace(cfg, target=str(gallery), queries=str(photos)), home=home)
        q, t = emb.query, emb.target
        if row == "CNN_centred":
            fit = emb.target if gallery == split.target else pretrained_embeddings(cfg, home=home).target
            q, t = _centred(fit, cfg.keep_pretrained_dims, q, t)
    else:
        from ftspl.train.apply import embed_run

        emb = embed_run(run_dir, photos, gallery, home=home)
        q, t = emb.query, emb.target
    return q, emb.query_labels, emb.query_paths, t, emb.target_labels, emb.target_paths


def embed_cell(row: str, cfg, split: Split, purpose: str, run_dir: Path):
    """(query embeddings, labels, paths, gallery embeddings, labels, paths, training record) of one cell."""
    from ftspl.train.loop import train

    photos, gallery = split.scored(purpose)
    if row in PRETRAINED_ROWS:
        return (*embed_finished(row, cfg, split, photos, gallery, None), {})
    if run_dir.exists():  # a run killed before its result was written: start again
        shutil.rmtree(run_dir)
    res = train(replace(cfg, out=str(run_dir), queries=str(photos) if purpose == "report" else None),
                return_embeddings=purpose == "report", home=study_home())
    from ftspl.train.validation import verdict

    record = {"pseudo_acc_per_round": [r.get("pseudo_acc") for r in res.rounds],
              "pseudo_acc_selected_per_round": [r.get("pseudo_acc_selected") for r in res.rounds],
              "val_per_round": [r.get("val") for r in res.rounds], "selection": verdict(res.rounds),
              "seconds_per_round": [r.get("seconds") for r in res.rounds]}
    if purpose == "report":  # the run already embedded its queries and target with the served network
        emb = res.embeddings
        return emb.query, emb.query_labels, emb.query_paths, emb.target, emb.target_labels, emb.target_paths, record
    return (*embed_finished(row, cfg, split, photos, gallery, run_dir), record)


def run_cell(row: str, split: Split, purpose: str, fields: dict | None, work: Path, keep_embeddings: bool = False) -> dict:
    """Train (unless a pretrained row) and score one cell on one seed; cached under ``work``."""
    cfg = train_config(row, split, fields)
    key = cell_key(row, cfg, purpose)
    folder = work / f"seed{split.seed}" / purpose
    done = folder / f"{row}-{key}.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    q, ql, qp, t, tl, tp, record = embed_cell(row, cfg, split, purpose, run_dir_of(row, cfg, split, purpose, work))
    metrics, per, pr = score(q, ql, t, tl)
    out = {"row": row, "seed": split.seed, "purpose": purpose, "fields": fields or {}, "key": key,
           "seconds": round(time.perf_counter() - t0, 2), "metrics": metrics, "per_query": per,
           "query_groups": query_groups(qp), "n_query": len(ql), "n_gallery": len(tl), "pr": pr, **record}
    if keep_embeddings:
        unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
        np.savez_compressed(folder / f"{row}-{key}.npz", query=unit(q), target=unit(t), query_labels=np.asarray(ql),
                            target_labels=np.asarray([x or "" for x in tl]), query_paths=np.asarray(qp),
                            target_paths=np.asarray(tp))
    done.write_text(json.dumps(out))
    m = metrics
    log(f"seed {split.seed} {purpose} {row} {fields or ''}: NN {m['NN']:.3f} FT {m['FT']:.3f} ST {m['ST']:.3f} "
        f"({out['seconds']:.0f}s)")
    return out


# -- real photos ---------------------------------------------------------------------------------------
def real_photo_sets(src: Path, classes: list[str], dest: Path) -> dict[str, Path]:
    """Label folders (symlinks) of the real photos whose class the benchmark has: {"interior": DIR, "object": DIR}.

    ``src/labels.csv`` (``file``, ``class``) lists them; interior scenes are the ``pexels`` files.
    """
    rows = list(csv.DictReader((src / "labels.csv").open()))
    out = {}
    for kind in ("interior", "object"):
        folder = dest / kind
        if folder.exists():
            shutil.rmtree(folder)
        for r in rows:
            is_interior = "pexels" in r["file"]
            if r["class"] in classes and is_interior == (kind == "interior"):
                (folder / r["class"]).mkdir(parents=True, exist_ok=True)
                (folder / r["class"] / r["file"]).symlink_to((src / r["file"]).resolve())
        out[kind] = folder
    return out


def real_photo_cell(row: str, split: Split, photos: Path, work: Path, fields: dict | None,
                    purpose: str = "report") -> dict:
    """One row of one seed on real photos: the network ``run_cell`` trained for ``purpose`` ranks the target.

    Reported only: real photos choose nothing. Cached under ``work/seed<S>/real`` (``real-<purpose>``
    for another purpose than ``report``).
    """
    cfg = train_config(row, split, fields)
    folder = work / f"seed{split.seed}" / ("real" if purpose == "report" else f"real-{purpose}")
    done = folder / f"{row}-{cell_key(row, cfg, purpose)}-{photos.name}.json"
    if done.exists():
        return json.loads(done.read_text())
    q, ql, qp, t, tl, _ = embed_finished(row, cfg, split, photos, split.target,
                                         run_dir_of(row, cfg, split, purpose, work))
    metrics, per, _ = score(q, ql, t, tl)
    out = {"row": row, "seed": split.seed, "photos": photos.name, "metrics": metrics, "per_query": per,
           "query_groups": [Path(p).name for p in qp], "n_query": len(q)}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out))
    return out


# -- the tuning rule -----------------------------------------------------------------------------------
TIE = 0.001  #: val FT differences below this are ties (the precision the tables print)
RULE = (f"best mean val FT over the tuning seeds; cells within {TIE} FT of the best tie, broken by the higher "
        "mean val NN, then by the grid's order (cheaper settings first)")


def pick(cells: list[dict]) -> dict:
    """The cell :data:`RULE` chooses among cells carrying ``mean`` ({metric: [mean, std]}) and ``order``."""
    best_ft = max(c["mean"]["FT"][0] for c in cells)
    tied = [c for c in cells if best_ft - c["mean"]["FT"][0] < TIE]
    return max(tied, key=lambda c: (c["mean"]["NN"][0], -c["order"]))


# -- aggregation -------------------------------------------------------------------------------------
def mean_std(results: list[dict]) -> dict:
    """{metric: [mean, sample std]} over seeds."""
    out = {}
    for m in METRICS:
        a = np.asarray([r["metrics"][m] for r in results])
        out[m] = [round(float(a.mean()), 4), round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4)]
    return out


def paired(a: list[dict], b: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Row ``a`` minus row ``b``, paired per seed and per query (ANMRR as ``b - a``: positive is a gain).

    Per metric: the mean over seeds of the per-seed differences, their sample std, and a 95%
    bootstrap interval that resamples query *models* (all photos of a model together) within each
    seed and averages the seeds' replicates; ``within_noise`` when the interval holds 0.
    """
    rng = np.random.default_rng(seed)
    by_seed_b = {r["seed"]: r for r in b}
    pairs = [(r, by_seed_b[r["seed"]]) for r in a if r["seed"] in by_seed_b]
    out: dict = {"seeds": [ra["seed"] for ra, _ in pairs]}
    if not pairs:
        return out
    reps = {m: np.zeros(n_boot) for m in PAIRED}
    diffs = {m: [] for m in PAIRED}
    for ra, rb in pairs:
        if ra["query_groups"] != rb["query_groups"]:
            raise ValueError(f"seed {ra['seed']}: rows scored different queries; cannot pair them")
        groups = np.asarray(ra["query_groups"])
        names, inv = np.unique(groups, return_inverse=True)
        draws = rng.integers(0, len(names), size=(n_boot, len(names)))
        counts = np.zeros((n_boot, len(names)))
        np.add.at(counts, (np.repeat(np.arange(n_boot), len(names)), draws.ravel()), 1)
        for m in PAIRED:
            va = np.asarray([np.nan if v is None else v for v in ra["per_query"][m]], dtype=float)
            vb = np.asarray([np.nan if v is None else v for v in rb["per_query"][m]], dtype=float)
            d = (vb - va) if m == "ANMRR" else (va - vb)
            ok = ~np.isnan(d)
            diffs[m].append(float(np.nanmean(d)))
            sums = np.bincount(inv[ok], weights=d[ok], minlength=len(names))
            ns = np.bincount(inv[ok], minlength=len(names)).astype(float)
            reps[m] += (counts @ sums) / np.maximum(counts @ ns, 1)
    for m in PAIRED:
        r = reps[m] / len(pairs)
        lo, hi = np.percentile(r, [2.5, 97.5])
        d = np.asarray(diffs[m])
        out[m] = {"mean": round(float(d.mean()), 4), "seed_std": round(float(d.std(ddof=1)) if len(d) > 1 else 0.0, 4),
                  "ci95": [round(float(lo), 4), round(float(hi), 4)], "within_noise": bool(lo <= 0 <= hi)}
    return out


__all__ = ["METRICS", "PAIRED", "PRETRAINED_ROWS", "RULE", "TIE", "Split", "all_rows", "build_split", "data_of", "mean_std",
           "paired", "pick", "real_photo_cell", "real_photo_sets", "run_cell", "score", "train_config", "trained_rows"]


def pm(pair) -> str:
    """``[mean, std]`` as a table cell: ``0.607 ± 0.012``."""
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def ci(d: dict) -> str:
    """A paired difference (:func:`paired`'s per-metric record) as a table cell: ``+0.020 [-0.004, +0.048]``."""
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
