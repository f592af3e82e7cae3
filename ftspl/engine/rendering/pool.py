"""Several render children side by side, answering in the order the jobs were given.

Why more than one: a child loads (Python) and rasterises (llvmpipe) mostly on
one core. With an int8 encoder the parent encodes a shape faster than one child
loads and renders it (about 60 against 85 CPU-ms per 12-view mesh), so a single
child leaves the encoder waiting while a core could render; a second child
takes that core whenever the encoder does not. Each child is a full
:class:`~ftspl.engine.rendering.worker.RenderWorker` (per-file time limit,
restarted after a hang or crash, a few files queued ahead), so a hostile file
costs only its own job.

Jobs are dealt round-robin (job ``i`` to child ``i % n``) and answers read back
in the same order, so the output order is the input order. The time limit is
never cut short: a child's clock for a file starts when the parent reads the
answer before it, which is no earlier than the child began the file, so a file
is skipped only after it really ran ``timeout_s`` (perhaps a little longer
while the parent waited on another child).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from ftspl.engine.constants import RenderSpec
from ftspl.engine.loading.meshes import MeshLimits
from ftspl.engine.rendering.worker import Rendered, RenderJob, RenderWorker

__all__ = ["RenderPool", "auto_processes"]

#: Children when the caller asks for ``0`` (auto): one per usable core, at most this many
#: (each holds an interpreter, Mesa and a GL context: about 200 MB resident).
MAX_AUTO_PROCESSES = 4


def auto_processes() -> int:
    """Render children for ``processes=0``: one per usable core, at most :data:`MAX_AUTO_PROCESSES`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_PROCESSES))


class RenderPool:
    """``processes`` render children (0: :func:`auto_processes`), jobs in, answers out in job order.

    The same interface as one :class:`RenderWorker`: ``start``, ``map``, ``close``, ``restarts``.
    """

    def __init__(self, spec: RenderSpec, limits: MeshLimits = MeshLimits(), timeout_s: float = 60.0,
                 depth: int = 4, processes: int = 1) -> None:
        if processes < 0:
            raise ValueError("processes must be 0 (auto) or positive")
        n = processes or auto_processes()
        self.workers = [RenderWorker(spec, limits, timeout_s, depth=depth) for _ in range(n)]

    @property
    def processes(self) -> int:
        return len(self.workers)

    @property
    def restarts(self) -> int:
        """Children restarted after a hang or a crash, all workers together."""
        return sum(w.restarts for w in self.workers)

    def start(self) -> None:
        """Spawn every child now, without waiting for them (see :meth:`RenderWorker.start`)."""
        for w in self.workers:
            w.start()

    def map(self, jobs: Iterable[RenderJob]) -> Iterator[Rendered]:
        """Yield one :class:`Rendered` per job, in job order (hangs and crashes become errors)."""
        jobs = list(jobs)
        n = len(self.workers)
        if n == 1:
            yield from self.workers[0].map(jobs)
            return
        streams = [w.map(jobs[i::n]) for i, w in enumerate(self.workers)]
        try:
            for i in range(len(jobs)):
                yield next(streams[i % n])
        finally:
            for s in streams:
                s.close()

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
