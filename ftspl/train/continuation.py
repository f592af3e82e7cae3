"""``ftspl train --continue RUN --target ALL/``: FTSPL's rounds again, from a finished run, on a grown library.

Shapes arrive after training. Instead of training from scratch on every shape,
a continued run starts from the network RUN exports (``best.pt``: the round
RUN chose on its validation photos, else its last checkpoint) and runs RUN's
FTSPL rounds again with the larger unlabelled set: the pseudo-labels, the
class-wise selection and the class statistics are re-estimated on all shapes.

Everything else is RUN's: its ``config.json`` (same source photos, backbone,
mode, budget, warm-up and seed, hence the same validation carve-out: the
photos RUN never trained on are the ones the continued run validates on),
except ``target`` (the new shape folder) and ``init_from`` (RUN's folder, which
:func:`ftspl.train.loop.train` loads into the network before round 0:
:func:`start_weights`). Keeping RUN's warm-up epochs (source-only, from RUN's
network) keeps RUN's config whole, the simplest rule; ``benchmarks/continue_study.py``
measures continuing against training again.

Its ``run.json`` records what it continued from (:func:`continued_from`). A
continued run is an ordinary run folder afterwards: ``--resume`` after a kill,
``ftspl export``, and ``--continue`` again when the library grows further.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from ftspl.engine.errors import UsageError
from ftspl.train.config import TrainConfig


def source_digest(paths: list, labels: list[int]) -> str:
    """A digest of the labelled photos (paths below their common folder, and labels).

    A continued run must see the same photos, so that the validation carve-out
    (seeded, over the sorted paths of each class) is the one RUN never trained
    on; the folder itself may have moved.
    """
    import os

    names = [str(p) for p in paths]
    base = os.path.commonpath(names) if names else ""
    h = hashlib.sha256()
    for p, lab in sorted(zip((os.path.relpath(n, base) for n in names), labels)):
        h.update(f"{p}\t{lab}\n".encode())
    return h.hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); is this a finished 'ftspl train' run?") from None


def finished_run(run: Path) -> tuple[TrainConfig, dict, list[dict]]:
    """RUN's (config, run.json, finished rounds); a clear error when RUN is not a finished run."""
    from ftspl.train.runio import CHECKPOINT, CONFIG, METRICS, RUN_INFO

    run = Path(run)
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder; --continue takes the --out folder of a finished 'ftspl train'")
    config, info = _read_json(run / CONFIG), _read_json(run / RUN_INFO)
    if config is None or info is None or not (run / CHECKPOINT).exists():
        raise UsageError(f"{run}: not a training run folder (needs {CONFIG}, {RUN_INFO} and {CHECKPOINT})")
    cfg = TrainConfig.from_dict(config)
    rounds = (_read_json(run / METRICS) or {}).get("rounds", [])
    last = rounds[-1]["round"] if rounds else None
    if last != cfg.rounds:
        raise UsageError(
            f"{run}: training stopped after round {last if last is not None else 'none'} of {cfg.rounds}; "
            f"finish it first with 'ftspl train --resume --out {run}'"
        )
    return cfg, info, rounds


def continued_config(run: str | Path, target: str | Path, out: str | Path | None = None,
                     source: str | Path | None = None, backbone: str | None = None,
                     device: str | None = None) -> TrainConfig:
    """The config of a run that continues the finished run ``run`` with the shapes under ``target``.

    ``source`` and ``backbone``, when given, must be RUN's (a continued run keeps
    both); ``out`` defaults to ``RUN-continued``; ``device`` may differ from RUN's.
    """
    from ftspl.train.data import load_source, load_target

    run = Path(run)
    cfg, info, _rounds = finished_run(run)
    if source is not None and Path(source).resolve() != Path(cfg.source).resolve():
        raise UsageError(
            f"{source}: --continue keeps {run}'s source photos ({cfg.source}); drop --source, or train from scratch"
        )
    if backbone is not None and backbone != cfg.backbone:
        raise UsageError(
            f"--backbone {backbone}: {run} was trained with {cfg.backbone}; --continue keeps the backbone "
            "(drop --backbone, or train from scratch)"
        )
    if not Path(cfg.source).exists():
        raise UsageError(f"{cfg.source}: {run}'s source photos are gone; --continue needs the same photos")
    src = load_source(cfg.source)
    check_sources(run, info, src.class_names, source_digest(src.paths, src.labels))
    tgt = load_target(target, cfg.label_from)  # a clear error for a missing folder or one without shapes
    if not tgt.paths:
        raise UsageError(f"{target}: no meshes or view folders found")
    out = Path(out) if out is not None else run.with_name(run.name + "-continued")
    if out.resolve() == run.resolve():
        raise UsageError(f"--out {out}: is the run being continued; choose another folder (RUN stays as it is)")
    extra = {**cfg.extra, "continued_from": str(run.resolve())}
    return replace(cfg, target=str(target), out=str(out), init_from=str(run.resolve()), extra=extra,
                   device=device or cfg.device)


def check_sources(run: Path, info: dict, class_names: list[str], digest: str) -> None:
    """Refuse a continuation whose photos are not RUN's (classes or photo list changed): one line, the reason."""
    if info.get("class_names") != class_names:
        raise UsageError(
            f"{run}: was trained on classes {', '.join(info.get('class_names') or [])}, its source folder now "
            f"holds {', '.join(class_names)}; --continue needs the same source photos (or train from scratch)"
        )
    if info.get("source_digest") and info["source_digest"] != digest:
        raise UsageError(
            f"{run}: its source photos changed since it was trained (the validation carve-out would differ); "
            "--continue needs the same source photos, or train from scratch"
        )


def start_weights(cfg: TrainConfig, device) -> dict:
    """The state dict a continued run starts from: RUN's exported network (``best.pt``, else the last round)."""
    from ftspl.train.runio import load_best

    return load_best(Path(cfg.init_from), map_location=device)["net"]


def continued_from(cfg: TrainConfig) -> dict:
    """What ``run.json`` records about the run ``cfg`` continues: folder, round, target, shape count."""
    from ftspl.train.runio import BEST, RUN_INFO

    run = Path(cfg.init_from)
    info = _read_json(run / RUN_INFO) or {}
    prev = TrainConfig.from_dict(_read_json(run / "config.json") or {})
    sel = info.get("selection") or {}
    return {
        "run": str(run), "weights": BEST if (run / BEST).exists() else "checkpoint.pt",
        "round": sel.get("best_round"), "target": prev.target, "n_target": info.get("n_target"),
        "continued_from": info.get("continued_from"),
    }


def run_info_extra(cfg: TrainConfig, src) -> dict:
    """What every run's ``run.json`` adds for continuations: the photos' digest, and (continued runs) the origin."""
    extra = {"source_digest": source_digest(src.paths, src.labels)}
    if cfg.init_from:
        extra["continued_from"] = continued_from(cfg)
    return extra
