"""What the trainable part of FTSPLNet is fed, in head mode and in full mode.

Head mode (``HeadFeed``): the backbone is frozen, so its pooled features are
computed once - each source photo as ``augment_copies`` augmented crops plus
one clean crop, each target shape as its max-pooled 12-view feature - and the
loop trains the bottleneck and classifier on those tensors (minutes on a CPU).

Full mode (``FullFeed``): pixels every step; photos are decoded and augmented
on the fly, target views come from the on-disk view cache.

Both expose the same verbs so the loop has one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ftspl.engine.constants import Preprocess
from ftspl.engine.errors import InputFileError
from ftspl.engine.photos import load_photo, views_to_tensor
from ftspl.train.augment import augment, clean
from ftspl.train.net import FTSPLNet
from ftspl.train.viewcache import CachedViews

ProgressFn = Callable[[str, int, int], None]


def _batches(n: int, size: int) -> Iterator[np.ndarray]:
    for i in range(0, n, size):
        yield np.arange(i, min(n, i + size))


class PhotoList:
    """Photos that decode; unreadable ones are dropped and reported once."""

    def __init__(self, paths: list[Path], labels: list[int] | None) -> None:
        self.paths, self.labels, self.failed = [], [], []
        for i, p in enumerate(paths):
            try:
                load_photo(p)  # validate once (size caps, format)
            except InputFileError as exc:
                self.failed.append((str(p), exc.reason))
                continue
            self.paths.append(Path(p))
            self.labels.append(labels[i] if labels is not None else -1)

    def __len__(self) -> int:
        return len(self.paths)


class HeadFeed:
    """Frozen-backbone features, computed once per run."""

    trainable_backbone = False

    def __init__(
        self, net: FTSPLNet, pre: Preprocess, photos: PhotoList, views: CachedViews, copies: int, seed: int,
        device: torch.device, queries: PhotoList | None = None, batch: int = 32, progress: ProgressFn | None = None,
    ) -> None:
        self.device = device
        net.backbone.eval()
        rng = np.random.default_rng([seed, 7])
        aug, aug_y, clean_x = [], [], []
        for p, y in zip(photos.paths, photos.labels):
            img = load_photo(p)
            clean_x.append(clean(img, pre))
            for _ in range(copies):
                aug.append(augment(img, pre, rng))
                aug_y.append(y)
        self.src_aug = self._trunk_images(net, aug, batch, progress)
        self.src_aug_y = torch.as_tensor(aug_y, dtype=torch.long)
        self.src_clean = self._trunk_images(net, clean_x, batch, progress)
        self.src_y = torch.as_tensor(photos.labels, dtype=torch.long)
        self.tgt = self._trunk_shapes(net, views, pre, progress)
        self.query = None
        self.query_y = None
        if queries is not None and len(queries):
            self.query = self._trunk_images(net, [clean(load_photo(p), pre) for p in queries.paths], batch, None)
            self.query_y = list(queries.labels)

    @torch.no_grad()
    def _trunk_images(self, net: FTSPLNet, tensors: list[np.ndarray], batch: int, progress: ProgressFn | None) -> torch.Tensor:
        out = []
        for idx in _batches(len(tensors), batch):
            x = torch.from_numpy(np.stack([tensors[i] for i in idx])).to(self.device)
            out.append(net.photo_trunk(x).float().cpu())
            if progress:
                progress("features: photos", int(idx[-1]) + 1, len(tensors))
        dim = net.backbone.feat_dim
        return torch.cat(out) if out else torch.zeros(0, dim)

    @torch.no_grad()
    def _trunk_shapes(self, net, views: CachedViews, pre: Preprocess, progress) -> torch.Tensor:
        out = []
        n = len(views.keys)
        for i in range(n):
            x = torch.from_numpy(views_to_tensor(views.load(i), pre)).to(self.device)
            out.append(net.shape_trunk(x[None]).float().cpu())
            if progress:
                progress("features: shapes", i + 1, n)
        return torch.cat(out) if out else torch.zeros(0, net.backbone.feat_dim)

    # -- the verbs the loop uses ---------------------------------------------
    def source_epoch(self, rng: np.random.Generator, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.permutation(len(self.src_aug))
        for i in range(0, len(order), batch):
            idx = torch.as_tensor(order[i : i + batch])
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            yield self.src_aug[idx].to(self.device), self.src_aug_y[idx].to(self.device)

    def source_eval(self, batch: int) -> Iterator[torch.Tensor]:
        for idx in _batches(len(self.src_clean), batch):
            yield self.src_clean[torch.as_tensor(idx)].to(self.device)

    def target_eval(self, batch: int) -> Iterator[torch.Tensor]:
        for idx in _batches(len(self.tgt), batch):
            yield self.tgt[torch.as_tensor(idx)].to(self.device)

    def target_batch(self, idx: np.ndarray) -> torch.Tensor:
        return self.tgt[torch.as_tensor(idx)].to(self.device)

    def query_eval(self, batch: int) -> Iterator[torch.Tensor]:
        if self.query is None:
            return iter(())
        return (self.query[torch.as_tensor(idx)].to(self.device) for idx in _batches(len(self.query), batch))

    def photo_trunk(self, net: FTSPLNet, x: torch.Tensor) -> torch.Tensor:
        return x

    def shape_trunk(self, net: FTSPLNet, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def n_source(self) -> int:
        return len(self.src_clean)

    @property
    def n_target(self) -> int:
        return len(self.tgt)


class FullFeed:
    """Pixels every step: end-to-end fine-tuning of the backbone too."""

    trainable_backbone = True

    def __init__(
        self, pre: Preprocess, photos: PhotoList, views: CachedViews, device: torch.device,
        queries: PhotoList | None = None,
    ) -> None:
        self.pre, self.photos, self.views, self.device = pre, photos, views, device
        self.queries = queries if queries is not None and len(queries) else None
        self.query_y = list(queries.labels) if self.queries else None
        self.src_y = torch.as_tensor(photos.labels, dtype=torch.long)

    def source_epoch(self, rng: np.random.Generator, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.permutation(len(self.photos))
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if len(idx) < 2:
                continue
            x = np.stack([augment(load_photo(self.photos.paths[j]), self.pre, rng) for j in idx])
            yield torch.from_numpy(x).to(self.device), self.src_y[torch.as_tensor(idx)].to(self.device)

    def _clean_photos(self, plist: PhotoList, batch: int) -> Iterator[torch.Tensor]:
        for idx in _batches(len(plist), batch):
            x = np.stack([clean(load_photo(plist.paths[j]), self.pre) for j in idx])
            yield torch.from_numpy(x).to(self.device)

    def source_eval(self, batch: int) -> Iterator[torch.Tensor]:
        return self._clean_photos(self.photos, batch)

    def query_eval(self, batch: int) -> Iterator[torch.Tensor]:
        return self._clean_photos(self.queries, batch) if self.queries else iter(())

    def target_batch(self, idx: np.ndarray) -> torch.Tensor:
        x = np.stack([views_to_tensor(self.views.load(int(i)), self.pre) for i in idx])
        return torch.from_numpy(x).to(self.device)

    def target_eval(self, batch: int) -> Iterator[torch.Tensor]:
        step = max(1, batch // 4)  # 12 views per shape: fewer shapes per batch
        for idx in _batches(len(self.views.keys), step):
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
