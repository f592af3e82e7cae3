"""A training run folder: what it holds and how it is written and read back.

``config.json`` (the :class:`~ftspl.train.config.TrainConfig` the run started
with), ``run.json`` (class names, backbone, preprocessing, render spec: what
export needs), ``checkpoint.pt`` (state dicts after the last finished round,
``torch.save``; read back with ``weights_only=True`` so a file never runs code)
and ``metrics.json`` (one record per finished round). Every file is replaced
atomically, so a kill leaves the previous round's state, which ``--resume``
continues from.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch

from ftspl.engine.errors import FtsplError, UsageError
from ftspl.engine.files import atomic_write_bytes
from ftspl.train.config import TrainConfig

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
RUN_INFO = "run.json"
BEST = "best.pt"  #: the network of the round chosen on validation (what export uses)


def write_start(run_dir: Path, cfg: TrainConfig, info: dict) -> None:
    """The files a fresh run writes before round 0: its config and what export needs."""
    atomic_write_bytes(run_dir / CONFIG, cfg.to_json().encode())
    atomic_write_bytes(run_dir / RUN_INFO, json.dumps(info, indent=2).encode())


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The config a run started with (``None`` when the folder has none)."""
    path = run_dir / CONFIG
    if not path.exists():
        return None
    return TrainConfig.from_dict(json.loads(path.read_text()))


def save_round(run_dir: Path, trainer, round_: int, rounds: list[dict]) -> None:
    """Checkpoint after ``round_``, then the metrics of every finished round."""
    buf = io.BytesIO()
    torch.save(
        {"net": trainer.net.state_dict(), "optimizer": trainer.opt.state_dict(), "round": round_,
         "epochs_done": trainer.epochs_done, "scaler": trainer.scaler.state_dict(),
         **({"disc": trainer.disc.state_dict()} if getattr(trainer, "disc", None) is not None else {})},
        buf,
    )
    atomic_write_bytes(run_dir / CHECKPOINT, buf.getvalue())
    _save_selection(run_dir, trainer, round_, rounds)
    atomic_write_bytes(run_dir / METRICS, json.dumps({"rounds": rounds}, indent=2).encode())


def _save_selection(run_dir: Path, trainer, round_: int, rounds: list[dict]) -> None:
    """When ``round_`` is the best on validation so far, its network becomes ``best.pt``; run.json says why.

    Without validation photos there is no choice to make: export uses the last round (run.json says so).
    """
    from ftspl.train.validation import best_round, verdict

    best = best_round(rounds)
    if best is not None and best["round"] == round_:
        buf = io.BytesIO()
        torch.save({"net": trainer.net.state_dict(), "round": round_}, buf)
        atomic_write_bytes(run_dir / BEST, buf.getvalue())
    info_path = run_dir / RUN_INFO
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["selection"] = verdict(rounds) or {
        "criterion": None, "best_round": round_, "why": "no validation photos (--val-frac 0): the last round",
        "adapted_better": None,
    }
    atomic_write_bytes(info_path, json.dumps(info, indent=2).encode())


def load_best(run_dir: Path, map_location="cpu") -> dict:
    """The checkpoint export uses: ``best.pt`` (the round chosen on validation), else the last round's."""
    path = Path(run_dir) / BEST
    if not path.exists():
        return load_checkpoint(run_dir, map_location)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise FtsplError(f"{path}: unreadable checkpoint ({type(exc).__name__}); train again") from None


def load_checkpoint(run_dir: Path, map_location="cpu") -> dict:
    path = Path(run_dir) / CHECKPOINT
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no checkpoint; is {run_dir} a training run folder?") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise FtsplError(f"{path}: unreadable checkpoint ({type(exc).__name__}); train again") from None


def resume_into(run_dir: Path, trainer, device) -> tuple[int, list[dict]]:
    """Load the last checkpoint into ``trainer``; returns (the next round, the finished rounds' records)."""
    ck = load_checkpoint(run_dir, map_location=device)
    trainer.net.load_state_dict(ck["net"])
    trainer.opt.load_state_dict(ck["optimizer"])
    trainer.scaler.load_state_dict(ck.get("scaler", {}))
    if getattr(trainer, "disc", None) is not None and "disc" in ck:
        trainer.disc.load_state_dict(ck["disc"])
    trainer.epochs_done = int(ck["epochs_done"])
    start = int(ck["round"]) + 1
    rounds: list[dict] = []
    if (run_dir / METRICS).exists():
        rounds = json.loads((run_dir / METRICS).read_text())["rounds"][:start]
    return start, rounds
