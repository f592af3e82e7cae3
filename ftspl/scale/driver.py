"""The Ray producer of ``index add --ray``: a Ray Data pipeline whose results this process commits.

``Library.add`` (or ``write_shards``) plans the work as on one machine: scan,
content hashes, skip what is stored. :class:`RayProducer` then streams the
pending shapes through two actor pools (render, encode; see
:mod:`ftspl.scale.stages`) and hands the encoded shapes, ``commit_every`` at a
time, to the same sink as the local path. The driver stays the only writer, so
the lock, the content-hash skip, resuming after a kill and the ``path: reason``
lines behave as without Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ftspl.engine.errors import FtsplError
from ftspl.engine.index.pipeline.commit import Committer
from ftspl.engine.index.pipeline.records import AddReport, EncodedShape, PendingShape, ProgressFn, Sink
from ftspl.engine.model.encoders import RuntimeConfig
from ftspl.scale.cluster import (
    ActorPlan,
    check_target,
    cluster_resources,
    connect,
    import_ray,
    plan_actors,
    render_share,
)
from ftspl.scale.stages import FAILED_FACES, EncodeStage, RenderStage, model_files

log = logging.getLogger(__name__)

BLOCK_SHAPES = 8  #: shapes per Ray block (one render call): about a second of work per task
GPU_BATCH = 32  #: shapes per encode call on a GPU (a CPU encodes ``cfg.batch_shapes`` at a time)


class RayProducer:
    """Render and encode on Ray; see the module docstring. ``target``: auto, local or an address."""

    def __init__(self, target: str, model_dir: Path, runtime: RuntimeConfig, cfg, *,
                 render_actors: int | None = None, encode_actors: int | None = None,
                 local_cpus: int | None = None) -> None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            import_ray()  # raises the one-line "pip install 'ftspl[ray]'" error
        check_target(target)
        self.target, self.model_dir, self.runtime, self.cfg = target, Path(model_dir), runtime, cfg
        self.render_actors, self.encode_actors, self.local_cpus = render_actors, encode_actors, local_cpus
        self.started_ray = False
        self.spec = None
        self.plan: ActorPlan | None = None
        self.timings: dict[str, float] = {}

    def start(self, todo: list[PendingShape], spec) -> None:
        self.spec = spec
        if not todo:
            return
        t0 = time.perf_counter()
        self.started_ray = connect(self.target, num_cpus=self.local_cpus)
        cpus, gpus = cluster_resources()
        from ftspl.engine.model.manifest import ModelManifest

        share = render_share(spec.look, ModelManifest.load(self.model_dir).precision)
        self.plan = plan_actors(cpus, gpus, self.runtime.device, self.render_actors, self.encode_actors, share)
        self.timings["connect_s"] = time.perf_counter() - t0
        log.info("Ray: %g CPUs, %g GPUs; %s", cpus, gpus, self.plan)

    def _dataset(self, todo: list[PendingShape]):
        import pyarrow as pa

        ray = import_ray()
        plan, cfg = self.plan, self.cfg
        blocks = [
            pa.table({"path": [str(p.source.path) for p in todo[i : i + BLOCK_SHAPES]],
                      "kind": [p.source.kind for p in todo[i : i + BLOCK_SHAPES]]})
            for i in range(0, len(todo), BLOCK_SHAPES)
        ]
        from ftspl.engine.loading.meshes import MeshLimits

        limits = cfg.limits if cfg.limits is not None else MeshLimits()
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(
            RenderStage, batch_size=BLOCK_SHAPES, batch_format="numpy",
            fn_constructor_kwargs={"spec": self.spec.to_dict(), "limits": limits, "timeout_s": cfg.file_timeout_s,
                                   "llvmpipe_threads": plan.llvmpipe_threads},
            compute=ray.data.ActorPoolStrategy(size=plan.render_actors), num_cpus=plan.cpus_per_actor,
        )
        gpu = {"num_gpus": plan.encode_gpus} if plan.encode_gpus else {}  # never num_gpus=0 (ray #45201)
        threads = self.runtime.intra_op_threads or (0 if gpu else plan.llvmpipe_threads)
        ds = ds.map_batches(
            EncodeStage, batch_size=GPU_BATCH if gpu else cfg.batch_shapes, batch_format="numpy",
            fn_constructor_kwargs={"model_files": model_files(self.model_dir), "device": plan.encode_device,
                                   "threads": threads, "prep_threads": max(1, int(plan.encode_cpus))},
            compute=ray.data.ActorPoolStrategy(size=plan.encode_actors), num_cpus=plan.encode_cpus, **gpu,
        )
        return ds

    def run(self, todo: list[PendingShape], sink: Sink, report: AddReport, progress: ProgressFn | None,
            should_stop: Callable[[], bool] | None) -> None:
        by_path = {str(p.source.path): p for p in todo}
        committer = Committer(sink, report, self.cfg.commit_every, len(todo))
        t0 = time.perf_counter()
        rows = self._dataset(todo).iter_batches(batch_size=None, batch_format="numpy")
        first = None  # (time, shapes) of the first results: start-up ends there
        try:
            for batch in rows:
                if first is None:
                    first = (time.perf_counter(), len(batch["path"]))
                for i, path in enumerate(batch["path"]):
                    committer.seen()
                    if batch["error"][i]:
                        committer.fail(str(path), str(batch["error"][i]))
                    else:
                        committer.add(_encoded_shape(batch, i, by_path[str(path)]))
                if progress:
                    progress("index", committer.done, len(todo))
                if should_stop is not None and should_stop():
                    break
        except Exception as exc:  # noqa: BLE001 - Ray wraps actor errors; ours keep their one-line message
            raise _unwrap(exc) from None
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops the pipeline when the loop left early
        committer.flush()
        end = time.perf_counter()
        self.timings["pipeline_s"] = end - t0
        if first is not None:
            self.timings["first_result_s"] = first[0] - t0  # actor start-up (interpreters, GL, sessions)
            if committer.done > first[1] and end > first[0]:
                self.timings["steady_shapes_per_s"] = (committer.done - first[1]) / (end - first[0])

    def close(self) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False


def _encoded_shape(batch: dict[str, np.ndarray], i: int, pending: PendingShape) -> EncodedShape:
    """Row ``i`` of an encode stage's output batch (:mod:`ftspl.scale.stages`) as the sinks take it."""
    faces = int(batch["faces"][i])
    emb = np.asarray(batch["embedding"][i], np.float32)
    raw = bytes(batch["view_embeddings"][i]) if "view_embeddings" in batch else b""
    per_view = np.frombuffer(raw, np.float32).reshape(-1, len(emb)).copy() if raw else None
    return EncodedShape.of(pending, None if faces == FAILED_FACES else faces, emb, bytes(batch["preview"][i]),
                           per_view, bytes(batch["view_strip"][i]) if per_view is not None else None)


def _unwrap(exc: BaseException) -> BaseException:
    """The ftspl error inside a Ray error chain (e.g. no GL stack on a node), else a one-line summary."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)  # RayTaskError keeps the actor's exception here
        if isinstance(cause, FtsplError):
            return cause
        if isinstance(cur, FtsplError) and type(cur).__module__.startswith("ftspl."):
            return cur
        cur = cause or cur.__cause__ or cur.__context__
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return FtsplError(f"the Ray pipeline failed: {first}; see the Ray logs (/tmp/ray/session_latest/logs)")
