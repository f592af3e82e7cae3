"""Bodies of the training-side CLI commands: ``ftspl train`` (and ``--continue``) and ``ftspl export``.

Kept apart from :mod:`ftspl.cli.commands` (index, query, eval, doctor) so each file reads as one
group of commands; torch and the exporters are imported inside each function.
"""

from __future__ import annotations

from pathlib import Path

from ftspl.cli import console
from ftspl.engine.errors import UsageError


def export_cmd(run, pretrained: bool, backbone: str, weights, exporter: str, home, as_json: bool,
               precision: str = "auto", calibration=None, look: str | None = None) -> None:
    """``ftspl export``: :func:`ftspl.export`, then the verdict of the run's validation and one line."""
    from ftspl.modelling import export

    rep = export(run, pretrained=pretrained, backbone=backbone, weights=weights, exporter=exporter, home=home,
                 precision=precision, calibration=calibration, look=look)
    info = rep.to_dict()
    if rep.selection and not as_json:  # which round was exported, and whether it beats the pretrained CNN
        from ftspl.train.validation import verdict_line

        if verdict_line(rep.selection):
            console.warn(verdict_line(rep.selection))
    if as_json:
        console.print_json(info)
    else:
        console.out(
            f"exported {rep.model_id} to {rep.model_dir} (embedding {rep.embed_dim}-d, {rep.look} views, "
            f"onnxruntime vs torch max abs diff {rep.parity_max_abs_diff:.2e}); it is now the active model"
        )


def train_cmd(preset: str, settings: dict, overrides: dict, resume: bool, as_json: bool, home=None,
              nproc: int = 1, cfg=None, explicit: set[str] | None = None) -> None:
    """Train as the options say (``cfg``: an already built config, e.g. a continuation's)."""
    import sys

    from ftspl.modelling import require_torch, train, train_config

    require_torch("training")
    from ftspl.train.distributed import launch, worker_rank, worker_world
    from ftspl.train.loop import pick_device

    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    world = worker_world()
    if nproc > 1 and world == 1:  # start N copies of this very command line under torchrun's launcher
        launch(nproc, sys.argv[1:])
        return
    if nproc > 1 and world != nproc:
        raise UsageError(f"--nproc {nproc} in a run of {world} processes (WORLD_SIZE); drop --nproc under torchrun")
    quiet = worker_rank() != 0  # with N processes, rank 0 alone reports
    if cfg is None:
        cfg = train_config(preset, overrides, explicit, **settings)
    if not quiet:
        procs = f" x {world} processes" if world > 1 else ""
        console.info(f"training {cfg.preset} ({cfg.mode} mode, {cfg.look} views) on {pick_device(cfg.device)}{procs}; "
                     f"run folder {cfg.out}")

    def on_round(rec: dict) -> None:
        if as_json or quiet:
            return
        m = rec.get("metrics", {})
        parts = [f"round {rec['round']}", f"loss {rec.get('loss_source', float('nan')):.3f}"]
        if "pseudo_acc" in rec:
            parts.append(f"pseudo-acc {rec['pseudo_acc']:.3f} (selected {rec['selected']}: {rec.get('pseudo_acc_selected', float('nan')):.3f})")
        if m:
            parts.append("NN {NN:.3f} FT {FT:.3f} ST {ST:.3f} DCG {DCG:.3f} ANMRR {ANMRR:.3f}".format(**m))
        if rec.get("val"):  # the selection criterion, beside the pretrained CNN's on the same photos
            v, b = rec["val"], rec.get("val_baseline") or {}
            parts.append(f"val {v['acc']:.3f}/{v['FT']:.3f}" + (f" (CNN {b['acc']:.3f}/{b['FT']:.3f})" if b else ""))
        parts.append(f"{rec['seconds']:.1f} s")
        console.info(" | ".join(parts))

    with console.progress(not (as_json or quiet)) as update:
        result = train(cfg=cfg, resume=resume, progress=update, on_round=on_round, home=home)
    if quiet:
        return
    for path, reason in result.skipped:
        console.warn(f"{path}: {reason}")
    from ftspl.train.validation import verdict, verdict_line

    sel = verdict(result.rounds)
    summary = {"run": str(result.run_dir), "device": result.device, "seconds": round(result.seconds, 1),
               "rounds": result.rounds, "skipped": len(result.skipped), "selection": sel,
               "adapted_better": sel["adapted_better"] if sel else None, "continued_from": cfg.init_from}
    if sel and not as_json:
        console.info(f"best round on validation: {sel['best_round']} ({sel['why']}); export uses it")
        if verdict_line(sel):
            console.warn(verdict_line(sel))
    if as_json:
        console.print_json(summary)
    else:
        console.out(f"done in {result.seconds / 60:.1f} min; export it with: ftspl export {result.run_dir}")


def train_continue_cmd(run: Path, target: Path, out, source, backbone, device: str, as_json: bool, home=None,
                       nproc: int = 1, resume: bool = False) -> None:
    """``train --continue RUN``: RUN's config on the new target (checked first), then trained as ``train_cmd``."""
    from ftspl.train.continuation import continued_config

    cfg = continued_config(run, target, out, source, backbone, device)
    if not as_json:
        console.info(f"continuing {run} (its photos, backbone and budget) with the shapes under {target}")
    train_cmd(cfg.preset or "FTSPL", {}, {}, resume, as_json, home, nproc=nproc, cfg=cfg)
