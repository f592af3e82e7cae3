"""The untrained baseline: ImageNet-pretrained backbone features as the embedding.

This is the paper's "CNN" row (and plain MVCNN retrieval): the image encoder
is backbone -> global pool -> L2 norm; the multi-view encoder is backbone per
view -> max-pool over views -> L2 norm. L2 normalisation makes the Euclidean
distance rank like cosine similarity, which suits raw ImageNet features.
"""

from __future__ import annotations

from pathlib import Path

from ftspl.engine.constants import RenderSpec
from ftspl.export.onnx_export import ModelMeta
from ftspl.train.backbone_registry import build_backbone, get_spec
from ftspl.train.model import ImageEncoder, MultiViewEncoder


def pretrained_model(backbone: str, weights: Path | None = None, look: str | None = None):
    """(image encoder, multi-view encoder, meta) sharing one pretrained backbone.

    The manifest's preprocessing is the backbone's registry entry, so the engine
    feeds the encoders exactly what the ImageNet weights expect. ``look``: how
    the gallery's views are coloured (None: ``TrainConfig.look``, the product's default).
    """
    from ftspl.train.config import TrainConfig

    spec = get_spec(backbone)
    net = build_backbone(backbone, pretrained=True, weights_path=weights).eval()
    img = ImageEncoder(net, head=None, l2_normalize=True).eval()
    mv = MultiViewEncoder(net, head=None, l2_normalize=True).eval()
    weights_kind = str(weights) if weights else "shipped" if spec.shipped_weights is not None else "random"
    meta = ModelMeta(
        backbone=backbone,
        embed_dim=img.embed_dim,
        preprocess=spec.preprocess,
        render_spec=RenderSpec().with_look(look or TrainConfig.look),
        source="random-init" if weights_kind == "random" else "pretrained",
        class_names=[],
        training={"weights": weights_kind},
        metrics={},
    )
    return img, mv, meta
