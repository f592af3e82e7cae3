"""What the trainable part of FTSPLNet is fed, in head mode and in full mode.

Head mode (``HeadFeed``): the backbone is frozen, so its pooled features are
computed once - each source photo as ``augment_copies`` augmented crops plus
one clean crop, each target shape as its max-pooled 12-view feature - and the
loop trains the bottleneck and classifier on those tensors (minutes on a CPU).

Full mode (:class:`~ftspl.train.full_feed.FullFeed`): pixels every step;
photos are decoded and augmented on the fly, target views come from the
on-disk view cache.

Partial mode (``ftspl.train.partial.PartialFeed``, a ``HeadFeed``): the same
items, cached as the activations below the backbone's last K blocks.

All expose the same verbs so the loop has one code path. With N processes
(:mod:`ftspl.train.distributed`) ``source_epoch`` yields this rank's share of
each global batch, the ``*_eval`` iterators cover a range of items (the trainer
embeds one block per rank and gathers the rest), and the head feed's first run
splits the backbone passes over the ranks (through the shared feature cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ftspl.engine.constants import Preprocess
from ftspl.engine.errors import InputFileError
from ftspl.engine.files import sha256_file
from ftspl.engine.loading.photos import load_photo
from ftspl.engine.model.preprocess import views_to_tensor
from ftspl.train.augment import augment, clean
from ftspl.train.featcache import FeatureCache
from ftspl.train.net import FTSPLNet
from ftspl.train.viewcache import CachedViews

ProgressFn = Callable[[str, int, int], None]


Shard = Callable[[np.ndarray], np.ndarray]


def _whole(idx: np.ndarray) -> np.ndarray:
    return idx


def _batches(start: int, stop: int, size: int) -> Iterator[np.ndarray]:
    for i in range(start, stop, size):
        yield np.arange(i, min(stop, i + size))


def _stop(stop: int | None, n: int) -> int:
    return n if stop is None else min(stop, n)


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
    """Frozen-backbone features, computed once per item and cached on disk (``featcache``)."""

    trainable_backbone = False

    def __init__(
        self, net: FTSPLNet, pre: Preprocess, photos: PhotoList, views: CachedViews, copies: int, seed: int,
        device: torch.device, queries: PhotoList | None = None, batch: int = 32, progress: ProgressFn | None = None,
        cache: FeatureCache | None = None, dist=None, val: PhotoList | None = None, val_shapes=None,
        query_shapes=None,
    ) -> None:
        from ftspl.train.distributed import Dist

        self.dist = dist if dist is not None else Dist()
        self.device = device
        self.net, self.pre, self.batch, self.progress = net, pre, batch, progress
        self.cache = cache if cache is not None else FeatureCache(None, net.backbone.name, pre)
        net.backbone.eval()
        digests = [sha256_file(p) for p in photos.paths]
        self.src_clean = self._photos(photos.paths, digests, None, seed, "features: photos")
        self.src_aug = self._photos(photos.paths, digests, copies, seed, "features: augmented photos")
        self.src_aug_y = torch.as_tensor(np.repeat(np.asarray(photos.labels, np.int64), copies), dtype=torch.long)
        self.src_y = torch.as_tensor(photos.labels, dtype=torch.long)
        self.tgt = self._shapes(views)
        self.query = None
        self.query_y = None
        if queries is not None and len(queries):
            q_dig = [sha256_file(p) for p in queries.paths]
            self.query = self._photos(queries.paths, q_dig, None, seed, "features: query photos")
            self.query_y = list(queries.labels)
        self.val = None
        self.val_y = None
        if val is not None and len(val):
            v_dig = [sha256_file(p) for p in val.paths]
            self.val = self._photos(val.paths, v_dig, None, seed, "features: validation photos")
            self.val_y = torch.as_tensor(val.labels, dtype=torch.long)
        self.val_shapes, self.val_shapes_y = None, None
        if val_shapes is not None:
            self.val_shapes = self._shapes(val_shapes[0])
            self.val_shapes_y = torch.as_tensor(val_shapes[1], dtype=torch.long)
        self.query_shapes, self.query_shapes_y = None, None
        if query_shapes is not None:  # the labelled shapes the queries rank each round (``reference``)
            self.query_shapes = self._shapes(query_shapes[0])
            self.query_shapes_y = torch.as_tensor(query_shapes[1], dtype=torch.long)
        self.net = None  # the feed must not keep the network alive
        self.dist = None

    @classmethod
    def from_tensors(
        cls, src_clean: torch.Tensor, src_y: torch.Tensor, tgt: torch.Tensor, device: torch.device,
        src_aug: torch.Tensor | None = None, src_aug_y: torch.Tensor | None = None,
        query: torch.Tensor | None = None, query_y: list[int] | None = None,
        val: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
    ) -> HeadFeed:
        """A feed over backbone features computed elsewhere (studies, tests); no cache, no files.

        ``src_aug``/``src_aug_y`` default to the clean features: one "copy" per photo.
        """
        feed = cls.__new__(cls)
        feed.device, feed.net, feed.dist, feed.pre, feed.batch, feed.progress, feed.cache = (
            device, None, None, None, 32, None, None)
        feed.src_clean, feed.src_y, feed.tgt = src_clean.float(), src_y.long(), tgt.float()
        feed.src_aug = feed.src_clean if src_aug is None else src_aug.float()
        feed.src_aug_y = feed.src_y if src_aug_y is None else src_aug_y.long()
        feed.query, feed.query_y = query, query_y
        feed.val = None if val is None else val.float()
        feed.val_y = None if val_y is None else torch.as_tensor(val_y).long()
        feed.val_shapes, feed.val_shapes_y = None, None
        feed.query_shapes, feed.query_shapes_y = None, None
        return feed

    def _cached(self, keys: list[str], compute, what: str) -> list[np.ndarray]:
        """Cached arrays for ``keys``; the missing ones come from ``compute(indices)`` in batches."""
        out: list[np.ndarray | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, a in enumerate(out) if a is None]
        dist = self.dist
        if dist.world > 1 and self.cache.folder is not None:
            # Each rank computes its share of what is missing into the shared cache, then reads the
            # others' shares from it; anything still missing (a cache folder not shared between
            # machines) is computed below like in one process.
            self._compute_into(out, keys, missing[dist.rank :: dist.world], compute, what)
            dist.barrier()
            for i in missing:
                out[i] = self.cache.get(keys[i])
            missing = [i for i, a in enumerate(out) if a is None]
        self._compute_into(out, keys, missing, compute, what)
        return out  # type: ignore[return-value]

    def _compute_into(self, out: list, keys: list[str], missing: list[int], compute, what: str) -> None:
        for start in range(0, len(missing), self.batch):
            idx = missing[start : start + self.batch]
            for i, arr in zip(idx, compute(idx)):
                self.cache.put(keys[i], arr)
                out[i] = arr
            if self.progress:
                self.progress(what, min(start + self.batch, len(missing)), len(missing))

    @torch.no_grad()
    def _trunk(self, x: np.ndarray) -> np.ndarray:
        feats = []
        for i in range(0, len(x), self.batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch])).to(self.device)
            feats.append(self.net.photo_trunk(t).float().cpu().numpy())
        return np.concatenate(feats)

    def _photos(self, paths: list[Path], digests: list[str], copies: int | None, seed: int, what: str) -> torch.Tensor:
        """(n, F) clean features, or (n * copies, F) augmented ones (photo-major)."""
        if copies is None:
            keys = [self.cache.key(photo=d) for d in digests]
        else:
            keys = [self.cache.key(photo=d, seed=seed, copies=copies) for d in digests]

        def compute(idx: list[int]) -> list[np.ndarray]:
            crops = []
            for i in idx:
                img = load_photo(paths[i])
                if copies is None:
                    crops.append(clean(img, self.pre))
                else:
                    rng = np.random.default_rng([seed, 7, int(digests[i][:15], 16)])
                    crops += [augment(img, self.pre, rng) for _ in range(copies)]
            feats = self._trunk(np.stack(crops))
            per = 1 if copies is None else copies
            return [feats[j * per : (j + 1) * per] for j in range(len(idx))]

        return self._tensor(self._cached(keys, compute, what))

    def _tensor(self, arrs: list[np.ndarray]) -> torch.Tensor:
        """The cached arrays of a list of items as one float32 tensor (``PartialFeed`` keeps float16)."""
        if not arrs:
            return torch.zeros(0, self.net.backbone.feat_dim)
        return torch.from_numpy(np.concatenate(arrs)).float()

    def _shape_item(self, x: torch.Tensor) -> np.ndarray:
        """(V, 3, S, S) views of one shape -> (1, F): its view-pooled feature."""
        return self.net.shape_trunk(x[None]).float().cpu().numpy()

    @torch.no_grad()
    def _shapes(self, views: CachedViews) -> torch.Tensor:
        keys = [self.cache.key(views=k) for k in views.keys]

        def compute(idx: list[int]) -> list[np.ndarray]:
            return [self._shape_item(torch.from_numpy(views_to_tensor(views.load(i), self.pre)).to(self.device))
                    for i in idx]

        return self._tensor(self._cached(keys, compute, "features: shapes"))

    # -- the verbs the loop uses ---------------------------------------------
    def source_epoch(self, rng: np.random.Generator, batch: int,
                     shard: Shard = _whole) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Global batches of a seeded permutation; ``shard`` picks this rank's equal share of each."""
        order = rng.permutation(len(self.src_aug))
        for i in range(0, len(order), batch):
            idx = torch.as_tensor(shard(order[i : i + batch]))
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            yield self.src_aug[idx].to(self.device), self.src_aug_y[idx].to(self.device)

    def eval_step(self, which: str, batch: int) -> int:
        """Items per batch of ``*_eval(batch)``."""
        return batch

    def shapes_per_step(self, batch: int) -> int:
        """Pseudo-labelled shapes beside each batch of ``batch`` photos in a training step."""
        return batch

    def source_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        for idx in _batches(start, _stop(stop, len(self.src_clean)), batch):
            yield self.src_clean[torch.as_tensor(idx)].to(self.device)

    def target_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        for idx in _batches(start, _stop(stop, len(self.tgt)), batch):
            yield self.tgt[torch.as_tensor(idx)].to(self.device)

    def target_batch(self, idx: np.ndarray) -> torch.Tensor:
        return self.tgt[torch.as_tensor(idx)].to(self.device)

    def _rows(self, t: torch.Tensor | None, batch: int, start: int, stop: int | None) -> Iterator[torch.Tensor]:
        """Batches of the cached rows ``start:stop`` of ``t`` (nothing when ``t`` is None)."""
        if t is None:
            return iter(())
        return (t[torch.as_tensor(idx)].to(self.device) for idx in _batches(start, _stop(stop, len(t)), batch))

    def query_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._rows(self.query, batch, start, stop)

    @property
    def n_query(self) -> int:
        return 0 if self.query is None else len(self.query)

    def val_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._rows(self.val, batch, start, stop)

    @property
    def n_val(self) -> int:
        return 0 if self.val is None else len(self.val)

    def val_shapes_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._rows(self.val_shapes, batch, start, stop)

    @property
    def n_val_shapes(self) -> int:
        return 0 if self.val_shapes is None else len(self.val_shapes)

    def query_shapes_eval(self, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        return self._rows(self.query_shapes, batch, start, stop)

    @property
    def n_query_shapes(self) -> int:
        return 0 if self.query_shapes is None else len(self.query_shapes)

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
