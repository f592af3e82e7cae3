"""The calibration set of an int8 export: real photos and rendered views of the model's own data.

Static quantisation fixes each activation's int8 range from the values the fp32
graph produces on sample inputs, so the samples must look like what the
encoders will see: photos for the photo encoder, 12-view stacks rendered with
the model's render spec for the multi-view encoder. A training run's config
names both (``source``: labelled photos; ``target``: the unlabelled shapes);
``--calibration DIR`` names a folder of photos and meshes instead (and is
needed with ``--pretrained``, which has no run).

Views come from the render cache (``<home>/cache/views``, filled by ``ftspl
train``), so a run's shapes are not rendered again; missing ones are rendered
by the same child process as ``index add``. Photos and shapes are taken
round-robin over their class folders, in path order, so the set is spread over
the classes and the same every time; its digest (the sha256 of every input's
content and of the settings) goes into the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ftspl.engine.constants import Preprocess, RenderSpec
from ftspl.engine.errors import UsageError
from ftspl.engine.files import sha256_file

#: photos and shapes a calibration set takes at most (the int8 ranges settle well below these)
PHOTOS = 64
SHAPES = 16
PHOTO_BATCH = 8  #: photos per calibration batch of the photo encoder


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs of both encoders and what identifies them."""

    photos: np.ndarray  #: float32 (N, 3, S, S)
    views: np.ndarray  #: float32 (M, V, 3, S, S)
    record: dict = field(default_factory=dict)  #: the manifest's ``calibration`` (digest, counts, sources)

    @property
    def digest(self) -> str:
        return self.record["digest"]

    def photo_batches(self) -> list[np.ndarray]:
        return [self.photos[i : i + PHOTO_BATCH] for i in range(0, len(self.photos), PHOTO_BATCH)]

    def view_batches(self) -> list[np.ndarray]:
        return [self.views[i : i + 1] for i in range(len(self.views))]


def spread(items: list, key) -> list:
    """``items`` reordered round-robin over ``key(item)`` groups (groups and items in their sorted order)."""
    groups: dict = defaultdict(list)
    for it in items:
        groups[key(it)].append(it)
    queues = [groups[k] for k in sorted(groups, key=str)]
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def find_photos(folder: Path) -> list[Path]:
    """Every photo under ``folder`` (recursively), spread over its top-level folders."""
    from ftspl.engine.loading.photos import PHOTO_EXTENSIONS

    folder = Path(folder)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return spread(found, lambda p: p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "")


def calibration_sources(photos: Path | None, shapes: Path | None, flag: str) -> tuple[Path, Path]:
    """Check that both folders exist; else one line naming them and the flag that fixes it."""
    for what, folder in (("photos", photos), ("shapes", shapes)):
        if folder is None or not Path(folder).is_dir():
            where = f"{folder} is not a folder" if folder is not None else f"no folder of {what}"
            raise UsageError(f"--precision int8 needs calibration {what}: {where}; "
                             f"pass {flag} DIR (a folder of your photos and meshes)")
    return Path(photos), Path(shapes)


def build_calibration(photos_dir: Path, shapes_dir: Path, pre: Preprocess, spec: RenderSpec, views_cache: Path,
                      n_photos: int = PHOTOS, n_shapes: int = SHAPES, method: str = "") -> CalibrationSet:
    """Load ``n_photos`` photos and the views of ``n_shapes`` shapes, preprocessed as the engine does.

    Unreadable photos and shapes that fail to render are passed over (the next
    ones are taken); a folder that yields none is one line naming it.
    """
    from ftspl.engine.errors import InputFileError
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.loading.scan import scan
    from ftspl.engine.model.preprocess import to_tensor, views_to_tensor
    from ftspl.train.viewcache import cache_views

    photo_tensors, photo_hashes = [], []
    for p in find_photos(photos_dir):
        if len(photo_tensors) >= n_photos:
            break
        try:
            photo_tensors.append(to_tensor(load_photo(p), pre))
        except InputFileError:
            continue
        photo_hashes.append(sha256_file(p))
    if not photo_tensors:
        raise UsageError(f"{photos_dir}: no readable photos to calibrate int8 with; pass --calibration DIR "
                         "(a folder of your photos and meshes)")
    try:
        sources = scan(shapes_dir)
    except InputFileError as exc:
        raise UsageError(f"{exc}; pass --calibration DIR (a folder of your photos and meshes)") from None
    sources = spread(sources, lambda s: s.label or "")
    view_tensors, shape_keys = [], []
    step = max(n_shapes, 1)
    for start in range(0, len(sources), step):  # render only as many as needed (failures take the next ones)
        if len(view_tensors) >= n_shapes:
            break
        chunk = sources[start : start + step]
        got = cache_views([s.path for s in chunk], [s.kind for s in chunk], spec, views_cache)
        for i in range(len(got.keys)):
            if len(view_tensors) < n_shapes:
                view_tensors.append(views_to_tensor(got.load(i), pre))
                shape_keys.append(got.keys[i])
    if not view_tensors:
        raise UsageError(f"{shapes_dir}: none of its shapes could be rendered to calibrate int8 with; "
                         "pass --calibration DIR (a folder of your photos and meshes)")
    ident = {"photos": photo_hashes, "shapes": shape_keys, "preprocess": pre.to_dict(),
             "render_spec": spec.digest(), "method": method}
    record = {
        "digest": hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest(),
        "photos": len(photo_tensors), "shapes": len(view_tensors), "views_per_shape": int(view_tensors[0].shape[0]),
        "photos_from": str(Path(photos_dir).resolve()), "shapes_from": str(Path(shapes_dir).resolve()),
        "method": method,
    }
    return CalibrationSet(np.stack(photo_tensors), np.stack(view_tensors), record)


class BatchReader(CalibrationDataReader):
    """onnxruntime's ``CalibrationDataReader`` over a list of batches for one named input."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch, np.float32)}

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


__all__ = ["PHOTOS", "SHAPES", "BatchReader", "CalibrationSet", "build_calibration", "calibration_sources",
           "find_photos", "spread"]
