"""Which benchmark data may be used for what: tuning or reporting, never both.

A benchmark build (:mod:`ftspl.data.bench`) holds five folders. Each has one
role, written into the build's ``manifest.json`` (``splits``), and the seed of
the build has one too (``seed_role``):

* ``source`` - labelled training photos (``train``);
* ``val`` photos ranking the ``val_gallery`` meshes (the meshes of the source
  models: source-side shapes whose labels the report never uses) - ``tune``;
* ``queries`` photos ranking the ``target`` gallery - ``report``. The target
  meshes are also every run's unlabelled training shapes; their labels are read
  only by a report;
* ``val_scenes`` (``ftspl data sh3d --scenes``) - scene photos of the val
  models in furnished rooms among source models, ranking the ``val_gallery``
  like ``val`` does - ``tune``.

Seeds are split the same way: :data:`TUNE_SEEDS` choose defaults (their val
photos against their val gallery), :data:`REPORT_SEEDS` are reported (their
queries against their target gallery). A study that tunes on a report seed, or
reports a tuning seed or a tuning folder, is refused by :func:`check_use`, so a
figure in the README can never rest on a split that chose its settings.

The seeds reshuffle one pool of models, so a model can be a source model in one
seed and a target model in another; what the protocol guarantees is that no
scored (query, gallery) pair of a report seed was scored while tuning.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftspl.engine.errors import UsageError

TUNE_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)  #: seeds whose val split chooses defaults
REPORT_SEEDS: tuple[int, ...] = (5, 6, 7, 8, 9)  #: seeds whose query split is reported
PURPOSES = ("tune", "report")

#: folder -> (role, the folder its photos rank, or None for a gallery / training folder)
SPLITS: dict[str, dict] = {
    "source": {"role": "train", "ranks": None},
    "val": {"role": "tune", "ranks": "val_gallery"},
    "val_gallery": {"role": "tune", "ranks": None},
    "val_scenes": {"role": "tune", "ranks": "val_gallery"},
    "queries": {"role": "report", "ranks": "target"},
    "target": {"role": "report", "ranks": None},
}


def seed_role(seed: int) -> str:
    """``tune``, ``report``, or ``free`` (a seed outside both lists: neither tuned nor reported)."""
    if seed in TUNE_SEEDS:
        return "tune"
    if seed in REPORT_SEEDS:
        return "report"
    return "free"


def manifest_record(seed: int, scenes: bool = False) -> dict:
    """What a build's manifest says about the protocol (``val_scenes`` only when the build has it)."""
    splits = {k: v for k, v in SPLITS.items() if k != "val_scenes" or scenes}
    return {"seed_role": seed_role(seed), "splits": splits,
            "tune_seeds": list(TUNE_SEEDS), "report_seeds": list(REPORT_SEEDS)}


def check_use(root: Path, purpose: str, photos: str) -> None:
    """Refuse scoring ``root/photos`` for ``purpose`` unless the manifest gives the folder and the seed that role.

    Raises :class:`UsageError` naming the folder, its role and the fix.
    """
    if purpose not in PURPOSES:
        raise UsageError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: no readable benchmark manifest ({exc}); build the data with `ftspl data sh3d`") from None
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or "seed_role" not in manifest:
        raise UsageError(f"{path}: built before splits carried roles; build it again with `ftspl data sh3d`")
    if photos == "val_scenes" and photos not in splits:
        raise UsageError(f"{root}/val_scenes: this build has no scene split; build it with `ftspl data sh3d --scenes`")
    role = splits.get(photos, {}).get("role")
    if role != purpose:
        raise UsageError(f"{root}/{photos}: a {role or 'unknown'} split cannot be used to {purpose}; "
                         f"{'tune on val/ of seeds ' + _seeds(TUNE_SEEDS) if purpose == 'tune' else 'report queries/ of seeds ' + _seeds(REPORT_SEEDS)}")
    seed_r = manifest["seed_role"]
    if seed_r != purpose:
        wanted = TUNE_SEEDS if purpose == "tune" else REPORT_SEEDS
        raise UsageError(f"{root}: seed {manifest.get('seed')} is a {seed_r} seed and cannot be used to {purpose}; "
                         f"use seeds {_seeds(wanted)}")


def _seeds(seeds: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in seeds)


__all__ = ["PURPOSES", "REPORT_SEEDS", "SPLITS", "TUNE_SEEDS", "check_use", "manifest_record", "seed_role"]
