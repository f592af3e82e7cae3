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

    ``pool_map`` spreads the preprocessing (numpy's take releases the GIL) over
    threads, e.g. an executor's ``map``.
    """
    from ftspl.engine.index.store.viewcodes import make_strip
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.engine.rendering.renderer import make_preview

    pre = encoders.preprocess
    batch = np.stack(list(pool_map(lambda v: views_to_tensor(v, pre), views)))
    emb, per_view = encoders.embed_views_full(batch)
    strips = None if per_view is None else [make_strip(v) for v in views]
    return EncodedViews(emb, per_view, strips, [make_preview(v) for v in views] if previews else None)


__all__ = ["EncodedViews", "encode_views"]
