"""The encode step: rendered views in, embeddings (and what is stored beside them) out.

One function for every producer: :class:`~ftspl.engine.index.pipeline.local.LocalProducer`
calls it from its encode threads, ``ftspl.scale``'s encode actors from theirs,
so a shape gets the same embedding whichever machine encodes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ftspl.engine.index.pipeline.records import EncodedShape, PendingShape


@dataclass(frozen=True)
class EncodedViews:
    """One batch's results, in the order of its shapes."""

    embeddings: np.ndarray  #: (B, D) float32, one per shape
    view_embeddings: np.ndarray | None  #: (B, V, D) per-view embeddings (None: the model has no per-view output)
    strips: list[bytes] | None  #: a strip of each shape's views (with the per-view embeddings)
    previews: list[bytes] | None  #: PNG thumbnails (None: made elsewhere, e.g. by Ray's render actors)

    def encoded_shape(self, j: int, pending: PendingShape, faces: int | None) -> EncodedShape:
        """The batch's ``j``-th shape as a sink takes it (``pending``: the shape it was planned as)."""
        return EncodedShape.of(pending, faces, self.embeddings[j], None if self.previews is None else self.previews[j],
                               None if self.view_embeddings is None else self.view_embeddings[j],
                               None if self.strips is None else self.strips[j])


def encode_views(encoders, views: Sequence[np.ndarray], previews: bool = True,
                 pool_map: Callable[[Callable, Iterable], Iterator] = map) -> EncodedViews:
    """Preprocess and embed a batch of uint8 ``(V, S, S, 3)`` view stacks; strips and previews beside them.

    Each shape is preprocessed straight into its slot of the batch (no stacking
    copy); ``pool_map`` spreads that (numpy's take releases the GIL) over
    threads, e.g. an executor's ``map``. A shape's views are downsampled once,
    for its strip and its preview alike.
    """
    from ftspl.engine.index.store.viewcodes import make_strip, strip_tiles
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.engine.rendering.renderer import make_preview

    pre = encoders.preprocess
    if not views:
        raise ValueError("encode_views needs at least one shape")
    v, s = views[0].shape[0], pre.image_size
    batch = np.empty((len(views), v, 3, s, s), np.float32)
    for _ in pool_map(lambda j: views_to_tensor(views[j], pre, out=batch[j]), range(len(views))):
        pass
    emb, per_view = encoders.embed_views_full(batch)
    # a strip needs every view downsampled, a preview four of them: the strip's, when there is one
    tiles = [None] * len(views) if per_view is None else [strip_tiles(x) for x in views]
    strips = None if per_view is None else [make_strip(x, tiles=t) for x, t in zip(views, tiles)]
    return EncodedViews(emb, per_view, strips,
                        [make_preview(x, tiles=t) for x, t in zip(views, tiles)] if previews else None)


__all__ = ["EncodedViews", "encode_views"]
