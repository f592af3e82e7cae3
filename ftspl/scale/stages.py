"""The two Ray Data stages of a distributed ``index add``: callable classes, one instance per actor.

Rows carry ``path`` and ``kind`` in; the render stage adds ``views`` (uint8
``(V, S, S, 3)``: 1.8 MB a shape at 224 px, four times less than float32),
``faces``, ``preview`` (PNG bytes) and ``error`` (``""`` when the shape is fine);
the encode stage swaps ``views`` for ``embedding`` (float32). A failed shape
travels on with its error and zero views, so the driver reports every file.

Mesh files are read by path, so every node must see the same files (a shared
file system): an OBJ with its MTL and textures is several files. The model
travels as bytes, so nodes need no copy of the home folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

FAILED_FACES = -1  #: ``faces`` of a shape without a mesh (a view folder) or that failed


class RenderStage:
    """Loads and renders shapes in a :class:`~ftspl.engine.rendering.worker.RenderWorker` child.

    The child keeps the single-machine guarantees inside each actor: a per-file
    time limit, a crashing or hanging file costs only that file (the child is
    replaced), and the mesh size caps apply. llvmpipe gets ``llvmpipe_threads``
    threads, the actor's share of its node.
    """

    def __init__(self, spec: dict, limits, timeout_s: float, llvmpipe_threads: int) -> None:
        from ftspl.engine.constants import RenderSpec
        from ftspl.engine.rendering.worker import RenderWorker

        os.environ["LP_NUM_THREADS"] = str(max(1, int(llvmpipe_threads)))  # inherited by the child
        self.spec = RenderSpec.from_dict(spec)
        self.worker = RenderWorker(self.spec, limits, timeout_s, depth=4)
        self.worker.start()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ftspl.engine.rendering.renderer import make_preview
        from ftspl.engine.rendering.worker import RenderJob

        paths, kinds = batch["path"], batch["kind"]
        n, spec = len(paths), self.spec
        views = np.zeros((n, spec.views, spec.image_size, spec.image_size, 3), np.uint8)
        faces = np.full(n, FAILED_FACES, np.int64)
        errors = np.full(n, "", dtype=object)
        previews = np.full(n, b"", dtype=object)  # object, not "S": numpy strips a PNG's trailing zero bytes
        jobs = [RenderJob(Path(str(p)), str(k)) for p, k in zip(paths, kinds)]
        for i, r in enumerate(self.worker.map(jobs)):
            if r.error is not None:
                errors[i] = r.error
            elif r.views.shape != views.shape[1:]:
                errors[i] = f"views of shape {r.views.shape}, the render spec makes {views.shape[1:]}"
            else:
                views[i] = r.views
                faces[i] = FAILED_FACES if r.faces is None else r.faces
                previews[i] = make_preview(r.views)
        return {"path": paths, "kind": kinds, "views": views, "faces": faces, "preview": previews, "error": errors}

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


class EncodeStage:
    """Embeds rendered views with one onnxruntime session (CPU or CUDA) through the engine's encode step
    (:func:`~ftspl.engine.index.pipeline.encode.encode_views`), so they match the local path's.

    ``model_files`` maps file names (the manifest and the multi-view encoder) to
    their bytes; they are written to a private folder and checked against the
    manifest's sha256 on load.
    """

    def __init__(self, model_files: dict[str, bytes], device: str, threads: int, prep_threads: int = 1) -> None:
        from ftspl.engine.model.encoders import (
            MULTIVIEW_ENCODER,
            Encoders,
            RuntimeConfig,
        )

        self.dir = Path(tempfile.mkdtemp(prefix="ftspl-model-"))
        for name, data in model_files.items():
            (self.dir / name).write_bytes(data)
        self.encoders = Encoders(self.dir, RuntimeConfig(device=device, intra_op_threads=threads))
        self.encoders.session(MULTIVIEW_ENCODER)  # fail in the constructor, not on the first batch
        self.dim = self.encoders.manifest.embed_dim
        self.prep = None  # preprocessing threads (numpy's take releases the GIL): a GPU actor has several CPUs
        if prep_threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.prep = ThreadPoolExecutor(prep_threads, thread_name_prefix="ftspl-prep")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ftspl.engine.index.pipeline.encode import encode_views

        errors = batch["error"]
        ok = np.flatnonzero(np.asarray([not e for e in errors], bool))
        emb = np.zeros((len(errors), self.dim), np.float32)
        # per-view embeddings (float32 bytes, b"" when absent) and view strips: the matched view of a hit
        per_view = np.full(len(errors), b"", dtype=object)
        strips = np.full(len(errors), b"", dtype=object)
        if len(ok):
            # the engine's encode step; previews come from the render actors
            out = encode_views(self.encoders, [batch["views"][i] for i in ok], previews=False,
                               pool_map=self.prep.map if self.prep else map)
            emb[ok] = out.embeddings
            if out.view_embeddings is not None:
                for j, i in enumerate(ok):
                    per_view[i] = np.ascontiguousarray(out.view_embeddings[j], np.float32).tobytes()
                    strips[i] = out.strips[j]
        return {"path": batch["path"], "faces": batch["faces"], "preview": batch["preview"], "error": errors,
                "embedding": emb, "view_embeddings": per_view, "view_strip": strips}

    def __del__(self) -> None:
        if getattr(self, "prep", None) is not None:
            self.prep.shutdown(wait=False)
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)


def model_files(model_dir: Path) -> dict[str, bytes]:
    """The bytes an encode actor needs: the manifest and the multi-view encoder (checked here first)."""
    from ftspl.engine.model.manifest import (
        MANIFEST_NAME,
        MULTIVIEW_ENCODER,
        ModelManifest,
    )

    manifest = ModelManifest.load(model_dir)
    path = manifest.verify_file(model_dir, MULTIVIEW_ENCODER)
    return {MANIFEST_NAME: (model_dir / MANIFEST_NAME).read_bytes(), path.name: path.read_bytes()}
