"""Frozen-backbone features of single photos and shapes, kept on disk.

Why: in head mode the backbone never changes, so a photo's augmented crops and
a shape's max-pooled 12-view feature depend only on the file, the backbone,
the preprocessing and (for augmented crops) the seed. The ablation study
trains nine rows per seed on the same split, and its splits share most files;
keying the features per *item* lets every run reuse what an earlier run
computed, so a 27-run study pays the CNN forward passes about once.

Keys (sha256 of a JSON blob, 32 hex digits):

* clean photo crop: file content, backbone id, preprocessing;
* augmented copies: the same plus ``(seed, copies)`` - the copies are drawn
  from a generator seeded with ``(seed, 7, content digest)``, so they do not
  depend on the photo's position in the list;
* shape: the view-cache key (content + render spec) plus backbone id and
  preprocessing.

Values are float32 ``.npy`` files written atomically; a corrupt one is
recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from ftspl.engine.constants import Preprocess
from ftspl.engine.files import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)


def backbone_id(name: str, weights: str | None) -> str:
    """The backbone's name plus, for a user weights file, its content digest."""
    return name if not weights else f"{name}:{sha256_file(Path(weights))[:16]}"


class FeatureCache:
    """``key -> array`` (float32, or ``dtype``) in a folder; ``folder=None`` disables caching."""

    def __init__(self, folder: Path | None, backbone: str, pre: Preprocess, dtype=np.float32) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.dtype = np.dtype(dtype)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._base = {"backbone": backbone, "pre": pre.to_dict()}
        self.hits = 0
        self.misses = 0

    def key(self, **parts) -> str:
        blob = json.dumps({**self._base, **parts}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str) -> np.ndarray | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError) as exc:  # truncated or foreign file: recompute
            log.warning("%s: unreadable cached features (%s); recomputing", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        if self.folder is None:
            return
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=self.dtype), allow_pickle=False)
        atomic_write_bytes(self.folder / f"{key}.npy", buf.getvalue())
