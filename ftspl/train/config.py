"""The training stage's one config object and the paper's ablation presets.

Presets map the rows of the paper's Tables III-V to switches:

============== ====== ====== =========== ========== =========
preset         IDCA   ICAV   pseudo      selection  target CE
============== ====== ====== =========== ========== =========
source_only    no     no     -           -          no
IDCA           yes    no     classifier  all        yes
ICAV           no     yes    classifier  all        yes
FT             yes    yes    classifier  all        yes
FT_centroid_pl yes    yes    centroid    all        yes
SPL            no     no     spl         classwise  yes
FTSPL          yes    yes    spl         classwise  yes
FTSPL_global   yes    yes    spl         global     yes
============== ====== ====== =========== ========== =========

The paper's Table I deep baselines train on the same data and backbone with
source cross-entropy plus a domain-alignment loss (``align``,
:mod:`ftspl.train.align`) between source photos and unlabelled shapes, no
pseudo-labels: ``CORAL`` (Deep CORAL), ``DANN`` (RevGrad: gradient-reversal
domain classifier), ``MMD`` (DAN's multi-kernel MMD) and ``JAN`` (joint MMD over
features and predictions).

Every row of the ablation table but ``source_only`` trains with cross-entropy on its
pseudo-labelled shapes, so a row differs from its neighbour only in the named
component. Those rows also share the default warm-up: cross-entropy on the photos
only (``align="none"``: tuning preferred it to a JAN-aligned warm-up); ``source_only``
aligns nothing and the Table I rows align in every epoch.

:class:`TrainConfig`'s defaults are the one copy of the training budget: ``ftspl
train`` reads its option defaults from it, and the demo and the quality study
(``benchmarks/quality.py``) train with it. The values FTSPL's grids tune (lambda,
the warm-up alignment, epochs per round, the kept pretrained weight) are the
winners of ``benchmarks/tune.py`` on the tuning splits (:mod:`ftspl.data.protocol`:
val photos of held-out source models ranking the source models' meshes, seeds
0-4; the reported gallery and seeds are never scored while tuning); the
baselines' own winners are in :data:`TUNED`. Values not tuned are the paper's
optimiser (SGD, momentum 0.9, batch 32, lr 0.01, 5 rounds) or stated as fixed.

This module imports neither torch nor any other heavy package: the CLI reads
the defaults from it before deciding whether training (and torch) is needed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from ftspl.engine.constants import EMBED_DIM, LOOKS, UP_AXES
from ftspl.engine.errors import UnknownKeyError

MODES = ("head", "partial", "full")
TAIL_BNS = ("frozen", "train")  #: partial mode: BatchNorm of the trained blocks keeps ImageNet statistics or adapts
PL_SPACES = ("embedding", "unit")
ALIGNS = ("none", "coral", "dann", "mmd", "jan")  #: domain-alignment losses (``ftspl.train.align``)
ALIGN_PHASES = ("all", "warmup")
DEFAULT_BACKBONE = "efficientnet_lite0"  #: a key of ``ftspl.train.backbone_registry.BACKBONES``
LEGACY_LOOK = "grey"  #: the look of runs saved before ``TrainConfig.look`` existed


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``ftspl train`` decides; saved as ``config.json`` in the run folder."""

    source: str = ""
    target: str = ""
    out: str = "runs/ftspl"
    queries: str | None = None  #: optional held-out labelled photos for per-round retrieval metrics
    #: labelled shapes (label folders of meshes) the ``queries`` rank every round instead of the target,
    #: recorded as the round's ``reference`` (studies: a tuning split's val gallery, so rounds are judged
    #: without the reported gallery's labels); None: the queries rank the target's own labels
    queries_shapes: str | None = None
    #: labelled validation photos (never trained on); None: carve ``val_frac`` of ``source`` per class
    val: str | None = None
    #: share of each class's source photos held out for validation when ``val`` is None (0: no validation)
    val_frac: float = 0.15
    #: labelled validation shapes (label folders of meshes): validation then ranks the val photos against them
    val_shapes: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    mode: str = "head"
    embed_dim: int = EMBED_DIM
    #: which axis of the target meshes points up ("y" or "z"); None: the render spec's default.
    #: Recorded in the run's render spec, so export, the manifest and ``index add`` follow it.
    up: str | None = None
    #: how the target shapes' views are coloured: "grey" (one grey material) or "materials" (each shape's
    #: own colours and textures, grey where it has none). The one default of the product's look: training
    #: renders with it, ``ftspl export --pretrained`` serves it, and export and ``index add`` follow a run's.
    #: Chosen on the tuning splits (benchmarks/looks.py, benchmarks/results/looks.json: FTSPL's mean val FT
    #: 0.618 with materials against 0.601 grey, NN 0.672 both, tuning seeds 0-4; rendering costs 1.8x grey's)
    look: str = "materials"
    # method switches
    idca: bool = True
    icav: bool = True
    pseudo: str = "spl"
    selection: str = "classwise"
    target_ce: bool = True
    preset: str | None = "FTSPL"
    # optimisation (SGD momentum 0.9, batch 32 as in the paper)
    rounds: int = 5  #: L
    epochs: int = 8  #: epochs per round (tuned: benchmarks/results/tune_FTSPL_budget.json)
    warmup_epochs: int = 5  #: source-only epochs before round 1 (the classifier must see photos first)
    lr: float = 0.01
    #: full and partial modes: the trained backbone blocks' learning rate as a multiple of ``lr``. 1.0: the
    #: partial tail's best val FT among 0.1/1.0 and frozen/trained BatchNorm (``benchmarks/partial_study.py tail``,
    #: ``benchmarks/results/partial_tail_val.json``); full mode (GPUs) shares it, not measured here
    backbone_lr_mult: float = 1.0
    #: partial mode: the last K steps of the backbone (``Backbone.steps``) train on cached activations.
    #: 1 (Lite0's 1x1 conv head): K=2 adds the last MBConv block, whose depthwise convolution makes a
    #: step ~3x slower on a CPU (``benchmarks/partial_study.py``)
    train_blocks: int = 1
    #: partial mode: "frozen" (ImageNet statistics) or "train" BatchNorm in those blocks (partial_tail_val.json)
    tail_bn: str = "frozen"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    lam: float = 0.5  #: final strength of the Eq. 4 terms (tuned: benchmarks/results/tune_FTSPL_method.json)
    lam_ramp: bool = True  #: ramp lambda from 0 over training (as ISDA)
    target_ce_weight: float = 1.0
    #: share of each pseudo-class selected at the last round (round l selects l/L of it). 1: the
    #: paper's schedule (not tuned)
    select_max: float = 1.0
    augment_copies: int = 4  #: head/partial modes: augmented copies of each photo whose features are cached
    seed: int = 0
    device: str = "auto"
    #: processes the run started with (recorded in config.json; set by the trainer, not an option:
    #: the number of processes is torchrun's / ``--nproc``'s, and a resume may use another)
    world_size: int = 1
    num_workers: int = 0
    label_from: str = "top"
    #: where the centroid / cluster pseudo-labels measure distance: "embedding" (the bottleneck
    #: output, as the paper) or "unit" (L2-normalised: the geometry retrieval ranks in)
    pl_space: str = "embedding"
    #: domain-alignment loss on the bottleneck embeddings: none, coral, dann, mmd or jan (Table I
    #: baselines). The pseudo-labelling presets align nothing by default (``--align jan
    #: --align-phase warmup`` aligns the warm-up that round 1 pseudo-labels from; tuned: none /
    #: JAN 0.3 / JAN 1 in the warm-up, benchmarks/results/tune_FTSPL_method.json)
    align: str = "none"
    align_weight: float = 0.3  #: its weight beside the source cross-entropy, when ``align`` is not none
    #: when the alignment loss trains: "all" epochs, or only the "warmup" epochs before round 1
    align_phase: str = "warmup"
    #: weight w of the pretrained features in the served embedding (ftspl.train.keep; 0: the bottleneck
    #: alone; tuned: 0.2 / 0.4 / 0.6, benchmarks/results/tune_FTSPL_keep.json)
    keep_pretrained: float = 0.2
    #: principal directions of the pretrained features that are kept: a size choice, not tuned
    #: (128 + the 256-d bottleneck = 384 floats per indexed shape)
    keep_pretrained_dims: int = 128
    #: a finished run folder whose exported network this run starts from (``ftspl train --continue``;
    #: set by :func:`ftspl.train.continuation.continued_config`, not an option of its own)
    init_from: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A saved ``config.json``; one written before ``look`` existed rendered grey, and keeps doing so."""
        known = set(cls.__dataclass_fields__)
        return cls(**{"look": LEGACY_LOOK, **{k: v for k, v in data.items() if k in known}})


#: preset name -> the switches it sets
PRESETS: dict[str, dict] = {
    "source_only": {"idca": False, "icav": False, "pseudo": "classifier", "selection": "all", "target_ce": False,
                    "align": "none"},
    "IDCA": {"idca": True, "icav": False, "pseudo": "classifier", "selection": "all", "target_ce": True},
    "ICAV": {"idca": False, "icav": True, "pseudo": "classifier", "selection": "all", "target_ce": True},
    "FT": {"idca": True, "icav": True, "pseudo": "classifier", "selection": "all", "target_ce": True},
    "FT_centroid_pl": {"idca": True, "icav": True, "pseudo": "centroid", "selection": "all", "target_ce": True},
    "SPL": {"idca": False, "icav": False, "pseudo": "spl", "selection": "classwise", "target_ce": True},
    "FTSPL": {"idca": True, "icav": True, "pseudo": "spl", "selection": "classwise", "target_ce": True},
    "FTSPL_global": {"idca": True, "icav": True, "pseudo": "spl", "selection": "global", "target_ce": True},
}
_NO_PL = {"idca": False, "icav": False, "pseudo": "classifier", "selection": "all", "target_ce": False}
#: the Table I rows: source cross-entropy plus an alignment loss in every epoch
PRESETS.update({
    "CORAL": {**_NO_PL, "align": "coral", "align_phase": "all"},
    "DANN": {**_NO_PL, "align": "dann", "align_phase": "all"},
    "MMD": {**_NO_PL, "align": "mmd", "align_phase": "all"},
    "JAN": {**_NO_PL, "align": "jan", "align_phase": "all"},
})

#: The settings each baseline row trains with: the winning cell of its own grids
#: (``benchmarks/tune.py``, on the tuning splits; ``benchmarks/results/tune_<ROW>_keep.json``'s
#: ``winner``, the last of its three stages), every tuned field of that cell. FTSPL's
#: winners are TrainConfig's defaults, which the pseudo-labelling ablation rows share.
#: ``tests/test_quality.py`` checks both against the committed results.
TUNED: dict[str, dict] = {
    "source_only": {"lam": 0.25, "align_weight": 0.3, "align_phase": "warmup", "epochs": 8, "warmup_epochs": 10,
                    "lr": 0.03, "keep_pretrained": 0.2},
    "CORAL": {"lam": 0.25, "align_weight": 0.1, "epochs": 4, "warmup_epochs": 5, "lr": 0.03, "keep_pretrained": 0.2},
    "DANN": {"lam": 0.25, "align_weight": 0.1, "epochs": 4, "warmup_epochs": 5, "lr": 0.03, "keep_pretrained": 0.2},
    "MMD": {"lam": 0.25, "align_weight": 0.1, "epochs": 8, "warmup_epochs": 5, "lr": 0.03, "keep_pretrained": 0.2},
    "JAN": {"lam": 0.25, "align_weight": 0.3, "epochs": 8, "warmup_epochs": 5, "lr": 0.03, "keep_pretrained": 0.2},
}


def apply_preset(cfg: TrainConfig, name: str) -> TrainConfig:
    """``cfg`` with a preset's switches and the row's tuned settings (``ftspl train``'s flags still override)."""
    if name not in PRESETS:
        raise UnknownKeyError("preset", name, PRESETS)
    return replace(cfg, preset=name, **{**PRESETS[name], **TUNED.get(name, {})})


def validate(cfg: TrainConfig) -> None:
    from ftspl.train.spl import PSEUDO_LABELERS, SELECTIONS

    if cfg.mode not in MODES:
        raise UnknownKeyError("--mode", cfg.mode, MODES)
    if cfg.pseudo not in PSEUDO_LABELERS:
        raise UnknownKeyError("--pseudo", cfg.pseudo, PSEUDO_LABELERS)
    if cfg.selection not in SELECTIONS:
        raise UnknownKeyError("--selection", cfg.selection, SELECTIONS)
    if cfg.pl_space not in PL_SPACES:
        raise UnknownKeyError("pl_space", cfg.pl_space, PL_SPACES)
    if cfg.align not in ALIGNS:
        raise UnknownKeyError("--align", cfg.align, ALIGNS)
    if cfg.align_phase not in ALIGN_PHASES:
        raise UnknownKeyError("--align-phase", cfg.align_phase, ALIGN_PHASES)
    if cfg.up is not None and cfg.up not in UP_AXES:
        raise UnknownKeyError("--up", cfg.up, UP_AXES)
    if cfg.look not in LOOKS:
        raise UnknownKeyError("--look", cfg.look, LOOKS)
    from ftspl.engine.errors import UsageError

    if cfg.tail_bn not in TAIL_BNS:
        raise UnknownKeyError("tail_bn", cfg.tail_bn, TAIL_BNS)
    for name in ("rounds", "batch_size", "augment_copies", "train_blocks"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 < cfg.select_max <= 1.0:
        raise UsageError(f"select_max must be in (0, 1], got {cfg.select_max}")
    if not 0.0 <= cfg.val_frac < 1.0:
        raise UsageError(f"--val-frac must be in [0, 1), got {cfg.val_frac}")
    if not 0.0 <= cfg.keep_pretrained < 1.0:
        raise UsageError(f"--keep-pretrained must be in [0, 1) (0: off), got {cfg.keep_pretrained}")
    if cfg.keep_pretrained_dims < 1:
        raise UsageError(f"--keep-pretrained-dims must be at least 1, got {cfg.keep_pretrained_dims}")
    if cfg.epochs < 0 or cfg.warmup_epochs < 0:
        raise UsageError("--epochs and --warmup-epochs must be >= 0")
    if cfg.queries_shapes and not cfg.queries:
        raise UsageError(f"queries_shapes ({cfg.queries_shapes}) needs queries: the labelled photos that rank them")
