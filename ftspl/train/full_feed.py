"""Full mode's feed: pixels every step, so the backbone is fine-tuned end to end.

:class:`FullFeed` decodes and augments the source photos on the fly and reads
the target shapes' views from the on-disk view cache, where head mode
(:class:`~ftspl.train.feeds.HeadFeed`) reads features computed once. It offers
the same verbs as the head feed, so the loop and the trainer have one code
path; with N processes (:mod:`ftspl.train.distributed`) ``source_epoch`` yields
this rank's share of each global batch and the ``*_eval`` iterators cover a
range of items.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ftspl.engine.constants import Preprocess
from ftspl.engine.loading.photos import load_photo
from ftspl.engine.model.preprocess import views_to_tensor
from ftspl.train.augment import augment, clean
from ftspl.train.feeds import PhotoList, Shard, _batches, _stop, _whole
from ftspl.train.net import FTSPLNet
from ftspl.train.viewcache import CachedViews


class FullFeed:
    """Pixels every step: end-to-end fine-tuning of the backbone too."""

    trainable_backbone = True

    def __init__(
        self, pre: Preprocess, photos: PhotoList, views: CachedViews, device: torch.device,
        queries: PhotoList | None = None, val: PhotoList | None = None, val_shapes=None, query_shapes=None,
    ) -> None:
        self.pre, self.photos, self.views, self.device = pre, photos, views, device
        self.val_photos = val if val is not None and len(val) else None
        self.val_y = torch.as_tensor(val.labels, dtype=torch.long) if self.val_photos else None
        self.val_views = val_shapes[0] if val_shapes is not None else None
        self.val_shapes_y = torch.as_tensor(val_shapes[1], dtype=torch.long) if val_shapes is not None else None
        self.query_views = query_shapes[0] if query_shapes is not None else None
        self.query_shapes_y = torch.as_tensor(query_shapes[1], dtype=torch.long) if query_shapes is not None else None
        self.queries = queries if queries is not None and len(queries) else None
        self.query_y = list(queries.labels) if self.queries else None
        self.src_y = torch.as_tensor(photos.labels, dtype=torch.long)

    def source_epoch(self, rng: np.random.Generator, batch: int,
                     shard: Shard = _whole) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Global batches of a seeded permutation; ``shard`` picks this rank's equal share of each.

        Each photo's crop and jitter come from its own generator, seeded by the
        epoch's draw and the photo's index, so a crop does not depend on which
        rank decodes it or on how many processes train.
        """
        order = rng.permutation(len(self.photos))
        base = int(rng.integers(2**63))
        for i in range(0, len(order), batch):
            idx = shard(order[i : i + batch])
            if len(idx) < 2:
                continue
            x = np.stack([augment(load_photo(self.photos.paths[j]), self.pre, np.random.default_rng([base, int(j)]))
                          for j in idx])
            yield torch.from_numpy(x).to(self.device), self.src_y[torch.as_tensor(idx)].to(self.device)

    def _clean_photos(self, plist: PhotoList, batch: int, start: int, stop: int | None) -> Iterator[torch.Tensor]:
        for idx in _batches(start, _stop(stop, len(plist)), batch):
            x = np.stack([clean(load_photo(plist.paths[j]), self.pre) for j in idx])
            yield torch.from_numpy(x).to(self.device)

    def eval_step(self, which: str, batch: int) -> int:
        """Items per batch of ``*_eval(batch)``: fewer shapes than photos (12 views each)."""
        return max(1, batch // 4) if which in ("target", "val_shapes", "query_shapes") else batch

    def shapes_per_step(self, batch: int) -> int:
        """Pseudo-labelled shapes beside each batch of ``batch`` photos in a training step."""
        return batch

    def source_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._clean_photos(self.photos, batch, start, stop)

    def query_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._clean_photos(self.queries, batch, start, stop) if self.queries else iter(())

    @property
    def n_query(self) -> int:
        return len(self.queries) if self.queries else 0

    def val_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._clean_photos(self.val_photos, batch, start, stop) if self.val_photos else iter(())

    @property
    def n_val(self) -> int:
        return len(self.val_photos) if self.val_photos else 0

    def _shape_views(self, v: CachedViews | None, batch: int, start: int, stop: int | None) -> Iterator[torch.Tensor]:
        if v is None:
            return iter(())
        step = self.eval_step("val_shapes", batch)
        return (torch.from_numpy(np.stack([views_to_tensor(v.load(int(i)), self.pre) for i in idx])).to(self.device)
                for idx in _batches(start, _stop(stop, len(v.keys)), step))

    def val_shapes_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._shape_views(self.val_views, batch, start, stop)

    @property
    def n_val_shapes(self) -> int:
        return len(self.val_views.keys) if self.val_views is not None else 0

    def query_shapes_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._shape_views(self.query_views, batch, start, stop)

    @property
    def n_query_shapes(self) -> int:
        return len(self.query_views.keys) if self.query_views is not None else 0

    def target_batch(self, idx: np.ndarray) -> torch.Tensor:
        x = np.stack([views_to_tensor(self.views.load(int(i)), self.pre) for i in idx])
        return torch.from_numpy(x).to(self.device)

    def target_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        step = self.eval_step("target", batch)
        for idx in _batches(start, _stop(stop, len(self.views.keys)), step):
            yield self.target_batch(idx)

    def photo_trunk(self, net: FTSPLNet, x: torch.Tensor) -> torch.Tensor:
        return net.photo_trunk(x)

    def shape_trunk(self, net: FTSPLNet, x: torch.Tensor) -> torch.Tensor:
        return net.shape_trunk(x)

    @property
    def n_source(self) -> int:
        return len(self.photos)

    @property
    def n_target(self) -> int:
        return len(self.views.keys)
