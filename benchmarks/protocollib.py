"""The protocol for the scripts: which seeds may tune (:func:`tuning_seeds`), and for scripts that score a
served index (``beyond.py``, ``matched_view.py``) the check of its build and gallery: a helper module.

A split's photos have one purpose (:mod:`ftspl.data.protocol`): ``val``
tunes and ranks ``val_gallery`` (the source models' meshes); ``queries``
reports and ranks ``target``. These scripts read a home's index, so besides
the build's manifest they check that the index holds that gallery and
nothing else: tuning against an index of the reported gallery is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: split -> (purpose, the gallery folder its photos rank)
ROLES = {"val": ("tune", "val_gallery"), "queries": ("report", "target")}


def check_build(bench: Path, split: str) -> tuple[str, str]:
    """(purpose, gallery folder) of ``split``; exits unless ``bench``'s manifest gives the split and seed that role."""
    from ftspl.data.protocol import check_use
    from ftspl.engine.errors import UsageError

    purpose, gallery = ROLES[split]
    try:
        check_use(bench, purpose, split)
    except UsageError as exc:
        raise SystemExit(str(exc)) from None
    return purpose, gallery


def tuned_choice(purpose: str, path: Path, key: str, what: str):
    """A report's setting: ``key`` of the val run's result file at ``path`` (None when tuning)."""
    import json

    if purpose != "report":
        return None
    try:
        return json.loads(Path(path).read_text())[key]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"{path}: no {what} ({exc}); run --split val first") from None


def gallery_with_paths(lib):
    """Every stored shape of a :class:`Library`: (ids, embeddings, labels, paths), from one consistent read."""
    with lib.open_reader() as reader:
        ids, gallery = reader.store.all_embeddings()
        rows = {r.id: r for r in reader.store.get([int(i) for i in ids])}
    return ids, gallery, [rows[int(i)].label for i in ids], [rows[int(i)].path for i in ids]


def check_gallery(paths: list[str], folder: Path) -> None:
    """Exit unless the index holds ``folder``'s shapes and nothing else (e.g. the target gallery while tuning)."""
    root = Path(folder).resolve()
    stray = [p for p in paths if not Path(p).resolve().is_relative_to(root)]
    if stray or not paths:
        raise SystemExit(f"the index must hold {folder} and nothing else (ftspl index add {folder} --rebuild); "
                         f"{len(stray)} of {len(paths)} shapes are elsewhere, e.g. {stray[0] if stray else '-'}")


__all__ = ["ROLES", "check_build", "check_gallery", "gallery_with_paths", "report_seeds", "tuning_seeds"]


def tuning_seeds(text: str | list[int] | None) -> list[int]:
    """``--seeds`` of a script that chooses something: "0,1" (or a parsed list) of tuning seeds, None: all of
    :data:`ftspl.data.protocol.TUNE_SEEDS`. A report seed, or none at all, exits with the rule."""
    from ftspl.data.protocol import TUNE_SEEDS, seed_role

    if text is None:
        return list(TUNE_SEEDS)
    seeds = list(text) if isinstance(text, list) else [int(s) for s in str(text).split(",") if s.strip()]
    wrong = [s for s in seeds if seed_role(s) != "tune"]
    if not seeds or wrong:
        what = f"{', '.join(map(str, wrong))} are not tuning seeds" if wrong else "none given"
        sys.exit(f"--seeds: {what}; choices are made on tuning seeds only ({', '.join(map(str, TUNE_SEEDS))}), "
                 "report seeds are for the report")
    return seeds


def report_seeds(text: str, flag: str = "--report-seeds") -> list[int]:
    """``flag`` (a study's reported-only block, or a script that only reports): "5,6" of report seeds;
    "none": no report block. A tuning seed exits with the rule."""
    from ftspl.data.protocol import REPORT_SEEDS, seed_role

    if str(text).strip().lower() in ("", "none"):
        return []
    seeds = [int(s) for s in str(text).split(",") if s.strip()]
    wrong = [s for s in seeds if seed_role(s) != "report"]
    if wrong:
        sys.exit(f"{flag}: {', '.join(map(str, wrong))} are not report seeds; report on "
                 f"{', '.join(map(str, REPORT_SEEDS))} (tuning seeds choose, report seeds are reported)")
    return seeds
