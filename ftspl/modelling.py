"""``ftspl.train(...)`` and ``ftspl.export(...)``: training and exporting a model from Python.

Both need PyTorch (the ``[train]`` extra) and import it only when called;
without it they raise one :class:`~ftspl.engine.errors.FtsplError` line that
names the extra. ``ftspl train`` and ``ftspl export`` call these functions.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from ftspl.engine.errors import FtsplError, UnknownKeyError, UsageError
from ftspl.api import as_home
from ftspl.results import ExportReport


def require_torch(what: str) -> None:
    """Raise one line naming the ``[train]`` extra when PyTorch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise FtsplError(f"{what} needs PyTorch: pip install 'ftspl[train]'") from None


def train_config(preset: str = "FTSPL", overrides: dict[str, Any] | None = None, explicit: set[str] | None = None,
                 **settings: Any):
    """The :class:`~ftspl.train.config.TrainConfig` of ``settings`` under ``preset``, then ``overrides`` (the preset's switches).

    A preset brings its switches and its tuned values (``ftspl.train.config.TUNED``); a setting the
    caller chose (``explicit``: those names; None: every setting given) wins over a tuned value.
    """
    from dataclasses import replace

    from ftspl.train.config import TrainConfig, apply_preset

    cfg = apply_preset(TrainConfig(**settings), preset)
    chosen = settings if explicit is None else {k: v for k, v in settings.items() if k in explicit}
    cfg = replace(cfg, **chosen, **(overrides or {}))
    return replace(cfg, preset=f"{preset}+custom") if overrides else cfg


def train(source: str | Path | None = None, target: str | Path | None = None, *, preset: str = "FTSPL",
          overrides: dict[str, Any] | None = None, home: str | Path | None = None, resume: bool = False,
          progress=None, on_round=None, cfg=None, **settings: Any):
    """Train a model with FTSPL on labelled photos (``source``) and unlabelled shapes (``target``).

    ``settings`` are :class:`~ftspl.train.config.TrainConfig` fields (``out``,
    ``mode``, ``rounds``, ``epochs``, ``seed``...); ``overrides`` change the
    preset's switches (``idca``, ``pseudo``...). ``cfg`` passes a ready config
    instead. Returns the run's result (``run_dir``, per-round ``rounds``); export
    it with :func:`export`.
    """
    require_torch("training")
    from ftspl.train.loop import train as run_training

    if cfg is None:
        if source is None or target is None:
            raise UsageError("train needs source (labelled photos) and target (shapes)")
        cfg = train_config(preset, overrides, source=str(source), target=str(target), **settings)
    return run_training(cfg, resume=resume, progress=progress, on_round=on_round,
                        home=None if home is None else as_home(home))


def export(run: str | Path | None = None, *, pretrained: bool = False, backbone: str = "efficientnet_lite0",
           weights: str | Path | None = None, exporter: str = "dynamo", home: str | Path | None = None,
           precision: str = "auto", calibration: str | Path | None = None, look: str | None = None) -> ExportReport:
    """Export a training run's encoders (or ``pretrained=True``: ImageNet's) as ONNX; the model becomes active.

    The ONNX graphs are checked against PyTorch before the manifest is written.
    ``precision``: fp32, int8 (calibrated on the run's photos and shapes, or on
    ``calibration``, a folder of photos and meshes), fp16 (for GPUs) or auto
    (int8 without a GPU when calibration data is at hand, else fp32). ``look``:
    how gallery views are coloured, ``grey`` or ``materials`` (None: a run's own
    look; for ``pretrained``, ``TrainConfig.look``); a run serves only the look it trained with.
    """
    if pretrained == (run is not None):
        raise UsageError("give either --pretrained or a training RUN folder, not both or neither")
    if look is not None:
        from ftspl.engine.constants import LOOKS

        if look not in LOOKS:
            raise UnknownKeyError("--look", look, LOOKS)
    require_torch("export")
    from ftspl.export.onnx_export import ExportConfig, export_encoders

    t0 = time.perf_counter()
    if pretrained:
        from ftspl.export.pretrained import pretrained_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the same warning is logged once
            img, mv, meta = pretrained_model(backbone, None if weights is None else Path(weights), look)
    else:
        from ftspl.export.from_run import run_model

        img, mv, meta = run_model(Path(run), look)
    cfg = ExportConfig(exporter=exporter, precision=precision,
                       calibration=None if calibration is None else Path(calibration))
    model_dir, man = export_encoders(img, mv, meta, as_home(home), cfg)
    sel = None if pretrained else (meta.training or {}).get("selection")
    return ExportReport(model_id=man.model_id, model_dir=str(model_dir), backbone=man.backbone,
                        embed_dim=man.embed_dim, look=man.look, parity_max_abs_diff=man.parity_max_abs_diff,
                        seconds=time.perf_counter() - t0, selection=sel or None)


__all__ = ["export", "require_torch", "train", "train_config"]
