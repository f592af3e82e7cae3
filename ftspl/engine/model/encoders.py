"""ONNX encoders served by onnxruntime (no torch).

Sessions are created lazily: a photo query only ever loads the image encoder,
and ``index add`` only the multi-view encoder, so neither pays for both.

Device choice: ``auto`` takes CUDA when onnxruntime-gpu is installed and a GPU
really works, otherwise the CPU, quietly (onnxruntime-gpu logs CUDA load errors
on machines without a GPU; we silence its logger for the probe). ``cuda`` fails
loudly with :class:`DeviceError` when the CUDA provider is not actually active.

Precision: the manifest says whether the graphs are fp32, int8 (static QDQ
quantisation, made for CPU kernels) or fp16 (made for GPUs). ``auto`` runs an
int8 model on the CPU even where CUDA is present, and an fp16 model only on
CUDA; an fp16 model without a working CUDA provider is refused with
:class:`DeviceError` naming the fix (export fp32 or int8 for the CPU).

Cold start: on the CPU, the optimised graph of each encoder is kept in a
per-machine cache (``engine/model/graphcache.py``) so a fresh process skips graph
optimisation (0.18 -> 0.04 s per session here).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.errors import DeviceError, ModelError
from ftspl.engine.model.manifest import IMAGE_ENCODER, MULTIVIEW_ENCODER, ModelManifest

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeConfig:
    """How onnxruntime runs: device and thread counts (0 = onnxruntime's default)."""

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0


class Encoders:
    """The image and multi-view encoders of one exported model."""

    def __init__(self, model_dir: Path, runtime: RuntimeConfig = RuntimeConfig(),
                 graph_cache_dir: Path | None = None) -> None:
        if runtime.device not in DEVICES:
            from ftspl.engine.errors import UnknownKeyError

            raise UnknownKeyError("device", runtime.device, DEVICES)
        self.model_dir = Path(model_dir)
        self.runtime = runtime
        self.manifest = ModelManifest.load(self.model_dir)
        #: None: no cache (every session optimises its graph from scratch)
        self.graph_cache = None
        if graph_cache_dir is not None:
            from ftspl.engine.model.graphcache import GraphCache

            self.graph_cache = GraphCache(graph_cache_dir)
        self.preprocess = self.manifest.get_preprocess()
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()  # one creation per encoder, even when warm() races a query
        self._warming: dict[str, threading.Thread] = {}
        self._warm_error: dict[str, BaseException] = {}

    # -- sessions -------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The graphs' numeric precision: ``fp32``, ``int8`` or ``fp16`` (the manifest's)."""
        return self.manifest.precision

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        from ftspl.engine.model.cuda import cuda_usable

        available = ort.get_available_providers()
        if self.precision == "fp16":
            if self.runtime.device == "cpu" or not cuda_usable():
                raise DeviceError(
                    f"model {self.manifest.model_id} is fp16, made for GPUs, and "
                    + ("--device cpu was asked for" if self.runtime.device == "cpu"
                       else "onnxruntime's CUDA provider cannot run here (no GPU, or its libraries do not load)")
                    + "; export it with 'ftspl export --precision int8' (or fp32) for the CPU, or pip install 'ftspl[gpu]'"
                )
            return [CUDA, CPU]
        if self.runtime.device == "cpu" or (self.precision == "int8" and self.runtime.device == "auto"):
            return [CPU]
        if self.runtime.device == "cuda":
            if not cuda_usable():  # a listed provider without a GPU would run on the CPU, silently
                raise DeviceError(
                    "--device cuda: " + ("onnxruntime has no CUDA provider; pip install 'ftspl[gpu]'"
                                         if CUDA not in available else
                                         "onnxruntime's CUDA provider cannot run here (no GPU, or its CUDA/cuDNN "
                                         "libraries do not load: pip install 'ftspl[gpu]')")
                    + " or use --device cpu"
                )
            return [CUDA, CPU]
        return [CUDA, CPU] if cuda_usable() else [CPU]

    def warm(self, name: str) -> None:
        """Start creating ``name``'s session in a thread (a cold query overlaps it with opening the index).

        onnxruntime builds and optimises the graph in C++ without the GIL, so
        this runs beside hnswlib/SQLite loading; :meth:`session` waits for it
        and re-raises its error in the caller's thread.
        """
        with self._lock:
            if name in self._sessions or name in self._warming:
                return

            def build() -> None:
                try:
                    self._create(name)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller of session()
                    self._warm_error[name] = exc

            t = threading.Thread(target=build, name=f"ftspl-warm-{name}", daemon=True)
            self._warming[name] = t
            t.start()

    def wait_warm(self) -> None:
        """Wait for every warm() thread (their errors stay for session() to raise)."""
        for t in list(self._warming.values()):
            t.join()

    def session(self, name: str):
        """The onnxruntime session of encoder ``name`` (created on first use)."""
        if name in self._sessions:
            return self._sessions[name]
        t = self._warming.get(name)
        if t is not None:
            t.join()
            if name in self._warm_error:
                raise self._warm_error.pop(name)
            if name in self._sessions:
                return self._sessions[name]
        return self._create(name)

    def _create(self, name: str):
        import onnxruntime as ort

        path = self.manifest.verify_file(self.model_dir, name)
        providers = self._providers()
        sess = None
        cache = self.graph_cache if providers == [CPU] else None  # GPU graphs are not cached
        key = None
        if cache is not None:
            key = cache.key(name, self.manifest.encoders[name].sha256, providers, ort.__version__)
            graph = cache.get(key)
            if graph is not None:
                opts = self._options(ort, name, providers)
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
                try:
                    sess = ort.InferenceSession(graph, sess_options=opts, providers=providers)
                    log.debug("%s: optimised graph from the cache", name)
                except (RuntimeError, ValueError) as exc:
                    log.info("%s: cached graph rejected by onnxruntime (%s); rebuilding it", name, exc)
        if sess is None:
            sess = self._build(ort, path, name, providers, cache, key)
        active = sess.get_providers()
        if (self.runtime.device == "cuda" or self.precision == "fp16") and active[0] != CUDA:
            who = "--device cuda" if self.runtime.device == "cuda" else f"fp16 model {self.manifest.model_id}"
            raise DeviceError(
                f"{who}: CUDA provider is installed but not active (active: {', '.join(active)}); "
                "check the NVIDIA driver/CUDA libraries, or use --device cpu with an fp32 or int8 model"
            )
        log.debug("loaded %s with providers %s", name, active)
        self._sessions[name] = sess
        return sess

    def parallel_runs(self, name: str, providers: list[str] | None = None) -> int:
        """How many ``run`` calls of encoder ``name`` the caller should keep in flight.

        Why: ``index add`` encodes on the CPU while its render child rasterises
        on the same cores. One run with two intra-op threads synchronises
        after each of the graph's ~100 operators, and whenever the renderer
        holds a core the other thread waits at that barrier; two batches side
        by side, one thread each, never wait for each other (index add, 60 SH3D
        meshes on 2 cores: ~350-430 -> ~310 CPU-ms per mesh). Only the multi-view
        encoder on CPU with the default thread count (0: all cores) does this;
        an explicit ``--threads`` or CUDA keeps one run at a time.
        """
        if name != MULTIVIEW_ENCODER or self.runtime.intra_op_threads != 0:
            return 1
        if providers is None:
            providers = self._providers()
        if CUDA in providers:
            return 1
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores)

    def _options(self, ort, name: str, providers: list[str]):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.runtime.intra_op_threads
        opts.inter_op_num_threads = self.runtime.inter_op_threads
        if name == MULTIVIEW_ENCODER:
            if self.parallel_runs(name, providers) > 1:
                opts.intra_op_num_threads = 1  # parallel across batches instead (see parallel_runs)
            # index add runs this beside the render child: idle onnxruntime threads
            # must sleep, not spin, or they burn the core the renderer needs.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if CUDA in providers and self.runtime.device == "auto":
            opts.log_severity_level = 4  # the CUDA probe may fail: keep the CPU path quiet
        else:
            opts.log_severity_level = 3
        return opts

    def _build(self, ort, path: Path, name: str, providers: list[str], cache, key: str | None):
        """A session optimised from the exported file; the optimised graph goes to the cache."""
        import tempfile

        opts = self._options(ort, name, providers)
        with tempfile.TemporaryDirectory(prefix="ftspl-graph-") as tmp:
            saved = Path(tmp) / "optimised.onnx"
            if cache is not None:
                opts.optimized_model_filepath = str(saved)
            try:
                sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except (RuntimeError, ValueError) as exc:  # onnxruntime's Fail/InvalidGraph derive from these
                raise ModelError(f"{path}: onnxruntime cannot load the model ({exc}); export again") from None
            if cache is not None:
                try:
                    data = saved.read_bytes()
                except OSError as exc:
                    log.info("%s: onnxruntime saved no optimised graph (%s)", name, exc)
                else:
                    cache.put(key, data)
        return sess

    def active_providers(self, name: str = IMAGE_ENCODER) -> list[str]:
        return list(self.session(name).get_providers())

    # -- inference ------------------------------------------------------------
    def _run(self, name: str, batch: np.ndarray) -> np.ndarray:
        enc = self.manifest.encoders[name]
        sess = self.session(name)
        out = sess.run([enc.output_name], {enc.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def embed_photos(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) preprocessed photos -> (N, D) embeddings."""
        if len(batch) == 0:
            return np.zeros((0, self.manifest.embed_dim), np.float32)
        return self._run(IMAGE_ENCODER, batch)

    def embed_views(self, batch: np.ndarray) -> np.ndarray:
        """(B, V, 3, S, S) preprocessed views -> (B, D) shape embeddings."""
        if len(batch) == 0:
            return np.zeros((0, self.manifest.embed_dim), np.float32)
        if batch.shape[1] != self.manifest.views:
            raise ValueError(f"expected {self.manifest.views} views per shape, got {batch.shape[1]}")
        return self._run(MULTIVIEW_ENCODER, batch)

    @property
    def has_region_output(self) -> bool:
        """True when the image graph also returns regional embeddings (``--regions rmac``)."""
        enc = self.manifest.encoders[IMAGE_ENCODER]
        return enc.region_output_name is not None and bool(enc.regions)

    @property
    def regions(self) -> list[dict]:
        """The image graph's regional windows (``box`` in fractions of the input square, ``scale``); [] without."""
        return list(self.manifest.encoders[IMAGE_ENCODER].regions or []) if self.has_region_output else []

    def embed_photos_regions(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) photos -> (N, D) whole-photo and (N, R, D) regional embeddings, in one run."""
        enc = self.manifest.encoders[IMAGE_ENCODER]
        if not self.has_region_output:
            raise ModelError(f"model {self.manifest.model_id} was exported without regional embeddings; export it again")
        sess = self.session(IMAGE_ENCODER)
        full, regional = sess.run([enc.output_name, enc.region_output_name],
                                  {enc.input_name: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(full, np.float32), np.asarray(regional, np.float32)

    @property
    def has_view_output(self) -> bool:
        """True when the multi-view graph also returns per-view embeddings (models exported since issue 17)."""
        return self.manifest.encoders[MULTIVIEW_ENCODER].view_output_name is not None

    def embed_views_full(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, V, 3, S, S) views -> (B, D) shape embeddings and (B, V, D) per-view ones (None: older model)."""
        enc = self.manifest.encoders[MULTIVIEW_ENCODER]
        if not self.has_view_output or len(batch) == 0:
            return self.embed_views(batch), None
        if batch.shape[1] != self.manifest.views:
            raise ValueError(f"expected {self.manifest.views} views per shape, got {batch.shape[1]}")
        sess = self.session(MULTIVIEW_ENCODER)
        pooled, views = sess.run([enc.output_name, enc.view_output_name],
                                 {enc.input_name: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(pooled, np.float32), np.asarray(views, np.float32)


__all__ = ["Encoders", "RuntimeConfig", "DEVICES", "IMAGE_ENCODER", "MULTIVIEW_ENCODER"]
