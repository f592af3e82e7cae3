"""Load + render shapes in a child process, with a per-file time limit.

Why a child process and not a thread:

* **Hostile files.** A parser can hang on a crafted file, and native code
  (trimesh's C helpers, numpy, Mesa) can crash outright. A thread can be
  neither stopped nor survived; a child can be killed and replaced. The parent
  reports ``path: reason`` for that one file and carries on with a fresh child,
  so ``index add`` never hangs and never dies with the file's problem.
* **Two cores, no GIL contention.** Parsing (Python) and llvmpipe rasterising
  run in the child while the parent's onnxruntime encodes the previous batch.

The parent keeps a few files queued in the child so it never idles; the time
limit starts when the child *begins* a file (when it answered the previous
one), not when the file was queued. Written by hand because
``concurrent.futures`` cannot kill one stuck task, and ``multiprocessing.Pool``
hides which task a dead worker was running.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import InputFileError, RenderError
from ftspl.engine.loading.meshes import MeshLimits

log = logging.getLogger(__name__)

__all__ = ["RenderJob", "Rendered", "RenderWorker", "render_one"]

_READY = "ready"
_FATAL = "fatal"
_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RenderJob:
    """One shape to prepare: a mesh file (``kind='mesh'``) or a 12-view folder (``'views'``)."""

    path: Path
    kind: str = "mesh"


@dataclass
class Rendered:
    """The child's answer for one job: views (V, S, S, 3) uint8, or an error reason."""

    job: RenderJob
    views: np.ndarray | None = None
    faces: int | None = None
    error: str | None = None


def render_one(job: RenderJob, spec: RenderSpec, limits: MeshLimits, renderer_box: list) -> Rendered:
    """Prepare one job in this process (the child's work; also used without a child).

    ``renderer_box`` holds the lazily created Renderer so that a run of view
    folders never creates a GL context.
    """
    from ftspl.engine.loading.meshes import load_mesh, normalize
    from ftspl.engine.loading.viewfolders import load_view_folder

    try:
        if job.kind == "views":
            return Rendered(job, load_view_folder(job.path, spec))
        mesh = normalize(load_mesh(job.path, limits, materials=spec.wants_materials), spec.up,
                         radius=spec.normalize_radius)
        if not renderer_box:
            from ftspl.engine.rendering.renderer import Renderer

            renderer_box.append(Renderer(spec))
        return Rendered(job, renderer_box[0].render(mesh), int(mesh.n_faces))
    except InputFileError as exc:
        return Rendered(job, error=exc.reason)
    except MemoryError:
        return Rendered(job, error="not enough memory to load and render this file")


def _child_main(conn, spec: RenderSpec, limits: MeshLimits) -> None:
    """The child's loop: answer each job in order; exit when the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    box: list = []  # the Renderer, created on the first mesh (view folders need no GL)
    try:
        conn.send((_READY, None))
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone (killed or finished)
            if job is None:
                return
            had_renderer = bool(box)
            try:
                result = render_one(job, spec, limits, box)
            except RenderError as exc:
                if not had_renderer and not box:  # no GL stack at all: every mesh would fail
                    conn.send((_FATAL, str(exc)))
                    return
                result = Rendered(job, error=str(exc))
            try:
                conn.send(result)
            except (BrokenPipeError, OSError):
                return
    finally:
        if box:
            box[0].close()


class RenderWorker:
    """A child process that loads and renders jobs in order, restarted on hang or crash."""

    def __init__(self, spec: RenderSpec, limits: MeshLimits = MeshLimits(), timeout_s: float = 60.0,
                 depth: int = 4) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.spec, self.limits = spec, limits
        self.timeout_s = float(timeout_s)
        self.depth = max(1, depth)
        self.restarts = 0
        self._ctx = mp.get_context("spawn")  # no fork: the parent holds onnxruntime threads
        self._proc = None
        self._conn = None
        self._spawning = None  # (process, pipe) started by start(), not yet ready

    # -- process management -------------------------------------------------------
    def start(self) -> None:
        """Spawn the child now, without waiting for it (``index add`` overlaps its start-up
        -- a fresh interpreter, numpy, Mesa -- with opening the index and the encoder).

        The first :meth:`map` waits until it is ready; calling this is optional.
        """
        if self._proc is None and self._spawning is None:
            parent, child = self._ctx.Pipe(duplex=True)
            proc = self._ctx.Process(target=_child_main, args=(child, self.spec, self.limits),
                                     name="ftspl-render", daemon=True)
            proc.start()
            child.close()
            self._spawning = (proc, parent)

    def _start(self) -> None:
        self.start()
        proc, parent = self._spawning
        self._spawning = None
        if not parent.poll(_STARTUP_TIMEOUT_S):
            proc.kill()
            raise RenderError(f"the render worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
        try:
            tag, message = parent.recv()
        except (EOFError, OSError):
            proc.join(5)
            raise RenderError(f"the render worker died while starting (exit code {proc.exitcode})") from None
        if tag == _FATAL:
            proc.join(5)
            raise RenderError(message)
        self._proc, self._conn = proc, parent

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self._spawning is not None:  # started but never used
            proc, conn = self._spawning
            self._spawning = None
            proc.kill()
            proc.join(5)
            conn.close()
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(5)
        self._kill()

    def __enter__(self) -> "RenderWorker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _death_reason(self) -> str:
        self._proc.join(2)
        code = self._proc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"crashed the mesh loader/renderer ({name}); the file is skipped"
        return f"the mesh loader/renderer exited unexpectedly (exit code {code}); the file is skipped"

    # -- the pipeline -------------------------------------------------------------
    def _send(self, job: RenderJob) -> None:
        try:
            self._conn.send(job)
        except (BrokenPipeError, OSError):
            pass  # the child died; the next recv sees EOF and blames the job it was on

    def map(self, jobs: Iterable[RenderJob]) -> Iterator[Rendered]:
        """Yield one :class:`Rendered` per job, in order; hangs and crashes become errors."""
        todo = deque(jobs)
        queued: deque[RenderJob] = deque()  # sent to the child, not answered yet
        started = 0.0  # when the child began the head of ``queued``
        while todo or queued:
            if self._proc is None:
                self._start()
                for job in queued:  # a fresh child: resend what the dead one never answered
                    self._send(job)
                started = time.monotonic()
            while todo and len(queued) < self.depth:
                if not queued:
                    started = time.monotonic()
                job = todo.popleft()
                self._send(job)
                queued.append(job)
            left = started + self.timeout_s - time.monotonic()
            if not self._conn.poll(max(0.0, left)):
                head = queued.popleft()
                log.warning("%s: over the %.0f s limit; restarting the render worker", head.path, self.timeout_s)
                self._kill()
                self.restarts += 1
                yield Rendered(head, error=f"took longer than {self.timeout_s:g} s to load and render "
                                          "(raise --file-timeout to allow more); the file is skipped")
                continue
            try:
                result = self._conn.recv()
            except (EOFError, OSError, ConnectionResetError):
                head = queued.popleft()
                reason = self._death_reason()
                self._kill()
                self.restarts += 1
                yield Rendered(head, error=reason)
                continue
            if isinstance(result, tuple) and result[0] == _FATAL:
                self._kill()
                raise RenderError(result[1])
            head = queued.popleft()
            started = time.monotonic()
            log.debug("phase render %s", head.path)
            if result.job != head:  # cannot happen with an in-order child; refuse to mislabel a shape
                raise RuntimeError(f"render worker answered {result.job.path} for {head.path}")
            yield result
