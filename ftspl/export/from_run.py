"""A training run folder -> the encoders and manifest metadata ``export_encoders`` needs."""

from __future__ import annotations

import json
from pathlib import Path

from ftspl.engine.constants import Preprocess, RenderSpec
from ftspl.engine.errors import UsageError
from ftspl.export.onnx_export import ModelMeta


def run_model(run_dir: Path, look: str | None = None):
    """(image encoder, multi-view encoder, meta) of the trained FTSPLNet in ``run_dir``.

    The render spec (and so the look) is the one the run trained with; a ``look``
    other than it is refused, since the network learnt from views of that look.
    """
    from ftspl.train.backbone_registry import build_backbone
    from ftspl.train.net import FTSPLNet
    from ftspl.train.runio import CONFIG, METRICS, RUN_INFO, load_best

    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
        config = json.loads((run_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: not a training run folder (no {RUN_INFO}/{CONFIG}); run 'ftspl train' first") from None
    spec = RenderSpec.from_dict(info["render_spec"])
    if look is not None and look != spec.look:
        raise UsageError(f"{run_dir}: the run trained on {spec.look} views, so its model serves the {spec.look} look, "
                         f"not {look}; drop --look, or train with 'ftspl train --look {look}'")
    ck = load_best(run_dir)  # the round chosen on validation (run.json's selection says which and why)
    backbone = build_backbone(info["backbone"], pretrained=False)
    net = FTSPLNet(backbone, len(info["class_names"]), int(info["embed_dim"]))
    if float(config.get("keep_pretrained") or 0) > 0:  # the served embedding keeps the pretrained features
        from ftspl.train.keep import attach

        attach(net, float(config["keep_pretrained"]), int(config["keep_pretrained_dims"]))
    net.load_state_dict(ck["net"])
    net.eval()
    img, mv = net.encoders()
    metrics = {}
    if (run_dir / METRICS).exists():
        rounds = json.loads((run_dir / METRICS).read_text()).get("rounds", [])
        chosen = [r for r in rounds if r.get("round") == int(ck["round"])]
        metrics = chosen[-1] if chosen else (rounds[-1] if rounds else {})
    meta = ModelMeta(
        backbone=info["backbone"],
        embed_dim=img.embed_dim,
        preprocess=Preprocess.from_dict(info["preprocess"]),
        render_spec=spec,
        source=str(run_dir.resolve()),
        class_names=list(info["class_names"]),
        training={**config, "round": int(ck["round"]), "selection": info.get("selection")},
        metrics=metrics,
        data={"photos": config.get("source"), "shapes": config.get("target")},  # int8's calibration data
    )
    return img, mv, meta
