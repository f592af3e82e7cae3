"""Figures of the quality study (the paper's Figs. 2-7), from the inputs ``benchmarks/quality.py`` exports.

    python benchmarks/figures.py [--work DIR] [--out benchmarks/results] [--seeds 5,6,7,8,9]

* ``pr_curves.png`` - precision/recall of every row, precision interpolated on a
  common recall grid and averaged over seeds (Figs. 4-5);
* ``tsne.png`` - t-SNE of query-photo and gallery-shape embeddings for CNN, FT
  and FTSPL (first seed), colour = class, marker = domain (Figs. 6-7);
* ``retrieval_examples.png`` - query photos, then their top 10 gallery shapes
  (FTSPL, first seed); wrong hits framed red (Figs. 2-3);
* ``pseudo_label_accuracy.png`` - pseudo-label accuracy per round, mean ± std
  over seeds, on all shapes and on the selected ones.

Only matplotlib/scikit-learn/numpy; never re-trains. Reads what
``quality.py`` (``export_figure_inputs``) writes under ``--work`` (default
``<home>/cache/study/figures``): ``seed<S>/<row>.json``, a ``studylib.run_cell``
record (``metrics``, ``pr``, ``pseudo_acc_per_round``,
``pseudo_acc_selected_per_round``), and ``seed<S>/<row>.npz`` (``query``,
``target``, ``query_labels``, ``target_labels``, ``query_paths``,
``target_paths``). The seeds are every ``seed<S>`` folder there (the report
seeds quality.py ran), or ``--seeds``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from common import RESULTS, study_home

#: the order rows are drawn and coloured in; rows found in the work folder but not here come after
ROWS = ("CNN", "CNN_centred", "source_only", "CORAL", "DANN", "MMD", "JAN", "IDCA", "ICAV", "FT", "FT_centroid_pl",
        "SPL", "FTSPL", "FTSPL_global")
PL_ROWS = ("FT", "FT_centroid_pl", "SPL", "FTSPL", "FTSPL_global")
DPI = 110


def _style(row: str) -> dict:
    """One fixed colour and line style per row, so every figure reads the same."""
    colors = plt.get_cmap("tab10").colors
    i = ROWS.index(row) if row in ROWS else 0
    bold = row in ("FTSPL", "source_only", "CNN")
    color = "black" if row == "FTSPL" else colors[i % 10]
    return {"color": color, "linestyle": "-" if bold else "--", "linewidth": 2.4 if bold else 1.4}


def _load(work: Path, seed: int, row: str) -> dict | None:
    p = work / f"seed{seed}" / f"{row}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _rows_present(work: Path, seeds: list[int]) -> list[str]:
    found = {p.stem for s in seeds for p in (work / f"seed{s}").glob("*.json")}
    return [r for r in ROWS if r in found] + sorted(found - set(ROWS))


def seeds_in(work: Path, wanted: str | None = None) -> list[int]:
    """The seeds with a ``seed<S>`` folder under ``work`` (only those of ``wanted``, a comma list, when given)."""
    have = sorted(int(p.name[4:]) for p in work.glob("seed*") if p.is_dir() and p.name[4:].isdigit())
    if wanted:
        keep = {int(s) for s in wanted.split(",") if s.strip()}
        have = [s for s in have if s in keep]
    return have


def pr_curves(work: Path, seeds: list[int], out: Path) -> Path:
    grid = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for row in _rows_present(work, seeds):
        curves = []
        for s in seeds:
            r = _load(work, s, row)
            if r is None:
                continue
            rec, prec = np.asarray(r["pr"]["recall"]), np.asarray(r["pr"]["precision"])
            curves.append(np.interp(grid, rec, prec, left=prec[0], right=np.nan))
        mean = np.nanmean(np.vstack(curves), axis=0)
        auc = np.mean([_load(work, s, row)["metrics"]["AUC"] for s in seeds if _load(work, s, row)])
        ax.plot(grid, mean, label=f"{row} (AUC {auc:.3f})", **_style(row))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"Precision-recall, query photos -> shape gallery (mean of {len(seeds)} seed(s))")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = out / "pr_curves.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def tsne(work: Path, seed: int, out: Path, rows: tuple[str, ...] = ("CNN", "FT", "FTSPL")) -> Path:
    from sklearn.manifold import TSNE

    rows = tuple(r for r in rows if (work / f"seed{seed}" / f"{r}.npz").exists())
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 5.4), squeeze=False)
    classes: list[str] = []
    for ax, row in zip(axes[0], rows):
        z = np.load(work / f"seed{seed}" / f"{row}.npz")
        q, t = z["query"], z["target"]
        ql, tl = z["query_labels"].astype(str), z["target_labels"].astype(str)
        classes = sorted(set(ql) | set(tl))
        cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
        color = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
        xy = TSNE(n_components=2, perplexity=min(30, (len(q) + len(t) - 1) // 3), init="pca",
                  random_state=0).fit_transform(np.vstack([q, t]))
        pq, pt = xy[: len(q)], xy[len(q):]
        ax.scatter(pt[:, 0], pt[:, 1], c=[color[c] for c in tl], marker="o", s=16, alpha=0.75, linewidths=0)
        ax.scatter(pq[:, 0], pq[:, 1], c=[color[c] for c in ql], marker="^", s=30, edgecolors="k", linewidths=0.4)
        ax.set_title(row)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    domain = [Line2D([], [], marker="o", ls="", color="grey", label="shape (gallery)"),
              Line2D([], [], marker="^", ls="", color="grey", markeredgecolor="k", label="photo (query)")]
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    cls = [Line2D([], [], marker="s", ls="", color=cmap(i % cmap.N), label=c) for i, c in enumerate(classes)]
    fig.legend(handles=domain + cls, loc="lower center", ncol=min(8, len(domain + cls)), fontsize=8, frameon=False)
    fig.suptitle(f"t-SNE of photo and shape embeddings (seed {seed}); colour = class, marker = domain")
    fig.tight_layout(rect=(0, 0.1 + 0.03 * (len(domain + cls) // 8), 1, 0.95))
    path = out / "tsne.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _thumbs(paths: list[str], view: int = 1) -> dict[str, np.ndarray]:
    """One grey view per gallery shape (the views the index embeds), from the study's view cache.

    The study has rendered them already; what is missing is rendered in one
    render-worker pass. Shapes that cannot be rendered get no thumbnail.
    """
    from ftspl.engine.constants import RenderSpec
    from ftspl.train.viewcache import cache_views

    unique = list(dict.fromkeys(paths))
    cv = cache_views([Path(p) for p in unique], ["mesh"] * len(unique), RenderSpec(), study_home().cache / "views")
    return {unique[i]: cv.load(k)[view] for k, i in enumerate(cv.index)}


def retrieval_examples(work: Path, seed: int, out: Path, row: str = "FTSPL", n: int = 6, top: int = 10) -> Path:
    from PIL import Image

    z = np.load(work / f"seed{seed}" / f"{row}.npz")
    q, t = z["query"], z["target"]
    ql, tl = z["query_labels"].astype(str), z["target_labels"].astype(str)
    qp, tp = z["query_paths"].astype(str), z["target_paths"].astype(str)
    classes = sorted(set(ql))
    pick_classes = [classes[int(i)] for i in np.linspace(0, len(classes) - 1, min(n, len(classes))).round()]
    picks = []
    for c in dict.fromkeys(pick_classes):
        idx = np.flatnonzero(ql == c)
        picks.append(int(idx[len(idx) // 2]))  # a middle one: neither the first nor the best
    d = ((q[picks, None, :] - t[None, :, :]) ** 2).sum(-1)
    orders = [np.argsort(d[r], kind="stable")[:top] for r in range(len(picks))]
    thumbs = _thumbs([str(tp[gi]) for order in orders for gi in order])
    fig, axes = plt.subplots(len(picks), top + 1, figsize=(1.25 * (top + 1) + 0.6, 1.45 * len(picks)), squeeze=False)
    for r, qi in enumerate(picks):
        order = orders[r]
        ax = axes[r][0]
        ax.imshow(Image.open(qp[qi]).convert("RGB"))
        ax.set_title(ql[qi][:16], fontsize=8)
        for k, gi in enumerate(order, start=1):
            ax = axes[r][k]
            img = thumbs.get(str(tp[gi]))
            if img is not None:
                ax.imshow(img)
            wrong = tl[gi] != ql[qi]
            for sp in ax.spines.values():
                sp.set_edgecolor("red" if wrong else "0.6")
                sp.set_linewidth(3 if wrong else 1)
            ax.set_title(tl[gi][:14], fontsize=7, color="red" if wrong else "black")
        for k, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if k > len(order):  # a gallery smaller than top
                ax.axis("off")
    fig.suptitle(f"{row}: query photo | top {top} gallery shapes (wrong class framed red; seed {seed})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    # the paper's vertical line between the query and its results
    x = (axes[0][0].get_position().x1 + axes[0][1].get_position().x0) / 2
    fig.add_artist(plt.Line2D([x, x], [0.01, 0.95], color="black", linewidth=1.5))
    path = out / "retrieval_examples.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def pseudo_label_accuracy(work: Path, seeds: list[int], out: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for key, ax, title in (("pseudo_acc_per_round", axes[0], "all gallery shapes"),
                           ("pseudo_acc_selected_per_round", axes[1], "selected shapes (trained on)")):
        for row in PL_ROWS:
            runs = [_load(work, s, row) for s in seeds]
            series = [r[key] for r in runs if r and r.get(key)]
            if not series:
                continue
            n = min(len(s) for s in series)
            a = np.asarray([[np.nan if v is None else v for v in s[:n]] for s in series], dtype=float)
            with warnings.catch_warnings():  # rounds without a value (round 0 selects nothing) stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(a, axis=0)
                std = np.nanstd(a, axis=0, ddof=1) if len(a) > 1 else np.zeros(n)
            std = np.nan_to_num(std)
            x = np.arange(n)
            ok = ~np.isnan(mean)
            st = _style(row)
            ax.errorbar(x[ok], mean[ok], yerr=std[ok], label=row, capsize=3, marker="o", **st)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round (0 = after the source-only warm-up)")
        ax.set_title(f"Pseudo-label accuracy, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (mean ± std over {len(seeds)} seed(s))")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "pseudo_label_accuracy.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None,
                    help="quality.py's figure inputs (default: <home>/cache/study/figures)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--seeds", default=None, help="default: every seed<S> folder under --work")
    ap.add_argument("--only", default="pr,tsne,examples,pseudo")
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = study_home().cache / "study" / "figures"
    seeds = seeds_in(args.work, args.seeds)
    if not seeds:
        raise SystemExit(f"{args.work}: no seed<N> folders{' of --seeds' if args.seeds else ''}; "
                         "run benchmarks/quality.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    if "pr" in only:
        print(pr_curves(args.work, seeds, args.out))
    if "tsne" in only:
        print(tsne(args.work, seeds[0], args.out))
    if "examples" in only:
        print(retrieval_examples(args.work, seeds[0], args.out))
    if "pseudo" in only:
        print(pseudo_label_accuracy(args.work, seeds, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
