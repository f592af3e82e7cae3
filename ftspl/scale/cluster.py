"""Connect to Ray, and size the render and encode actor pools from the cluster's resources.

``--ray auto`` joins the cluster named by ``$RAY_ADDRESS`` or the one ``ray start``
left on this machine, ``--ray HOST:PORT`` (or ``ray://HOST:PORT``) a given one, and
``--ray local`` starts a private Ray for this machine and stops it afterwards.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ftspl.engine.errors import FtsplError, UsageError

log = logging.getLogger(__name__)

#: CPU ms per SH3D mesh on one thread in the render actors (load, 12 views, strip and preview), per
#: look: ``benchmarks/stages.py`` (``ray_index.json``, entry ``stages``: load 11.9 + grey render 48.0 +
#: strip and preview 4.5); material views add the 45.7 ms by which loading and rendering them
#: exceeds grey (``looks.json``, ``render_cost``: 102.1 against 56.4 ms a mesh).
RENDER_MS = {"grey": 64.3, "materials": 110.0}
#: CPU ms per mesh in the encode actors (preprocess + encode, one thread), per encoder precision
#: (the same ``stages`` entry: int8 3.5 + 50.7, fp32 2.6 + 114.0; fp16 runs on GPUs only).
ENCODE_MS = {"int8": 54.2, "fp32": 116.6, "fp16": 116.6}


def render_share(look: str = "grey", precision: str = "fp32") -> float:
    """Share of a mesh's CPU time in the render actors, from :data:`RENDER_MS` and :data:`ENCODE_MS`."""
    r, e = RENDER_MS.get(look, RENDER_MS["materials"]), ENCODE_MS.get(precision, ENCODE_MS["fp32"])
    return r / (r + e)


RENDER_SHARE = render_share()  #: the split of a grey fp32 model, for callers that name neither
GPU_ENCODE_CPUS = 4  #: CPUs a GPU encode actor preprocesses on (15 ms a mesh each: about 260 meshes/s)
LOCAL_OBJECT_STORE_BYTES = 2 << 30  #: cap for ``--ray local`` (Ray's default is 30% of RAM)


def import_ray():
    """``ray`` and ``ray.data``, or a one-line error naming the extra."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise FtsplError("--ray needs Ray: pip install 'ftspl[ray]'") from None
    return ray


def quiet_ray_data() -> None:
    """No Ray Data progress bars or per-run banners: the CLI draws its own bar."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def check_target(target: str) -> None:
    """Refuse, in seconds and before any work, a ``--ray`` value that is no target or an address nobody answers at."""
    if not target or target.startswith("-"):
        raise UsageError(f"--ray {target!r}: give auto, local or a cluster address (HOST:PORT or ray://HOST:PORT)")
    address = os.environ.get("RAY_ADDRESS", "") if target == "auto" else target
    if address and address not in ("auto", "local"):
        _check_reachable(target, address)  # ray.init would retry an address nobody answers at forever


def connect(target: str, num_cpus: int | None = None, object_store_bytes: int | None = None) -> bool:
    """Attach this process to Ray; True when this call started it (the caller then shuts it down).

    A process already attached (a test's fixture, a notebook) is used as it is.
    """
    check_target(target)
    # Ray's own start-up notices (token set-up, constructor arguments kept in the object store,
    # "progress bars disabled") are not the user's business; real failures surface as exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # RAY_BACKEND_LOG_LEVEL=info shows them
    ray = import_ray()
    quiet_ray_data()
    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if target == "local":
        cores = num_cpus or len(os.sched_getaffinity(0))
        store = object_store_bytes or LOCAL_OBJECT_STORE_BYTES
        ray.init(address="local", num_cpus=cores, object_store_memory=store, **common)
        return True
    try:
        ray.init(address=target, **common)
    except ConnectionError as exc:
        if target == "auto":
            raise FtsplError(
                "--ray auto: no running Ray cluster found; start one with 'ray start --head', "
                "set RAY_ADDRESS, or use --ray local"
            ) from None
        raise FtsplError(f"--ray {target}: cannot connect to the Ray cluster ({exc}); check the address") from None
    return True


def _check_reachable(target: str, address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when nothing listens at the address (``ray.init`` would retry forever)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {target}: {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise FtsplError(
            f"--ray {target}: nothing answers at {hostport} ({exc.strerror or exc}); start the head node "
            "with 'ray start --head' or check the address"
        ) from None


@dataclass(frozen=True)
class ActorPlan:
    """How many actors of each stage, and what each asks Ray for."""

    render_actors: int
    encode_actors: int
    cpus_per_actor: float  #: CPUs of a render actor (and of a CPU encode actor)
    encode_gpus: float  #: GPUs per encode actor (0: CPU encoding, and no GPU is requested at all)
    encode_device: str  #: the onnxruntime device inside an encode actor (auto: CUDA when it works there)
    encode_cpus: float = 1.0  #: CPUs of an encode actor; a GPU one preprocesses on several threads

    @property
    def llvmpipe_threads(self) -> int:
        return max(1, round(self.cpus_per_actor))


def plan_actors(cpus: float, gpus: float, device: str, render_actors: int | None = None,
                encode_actors: int | None = None, share: float = RENDER_SHARE) -> ActorPlan:
    """Split the cluster between the stages by their measured cost.

    With GPUs (and ``device`` not ``cpu``) each GPU gets one encode actor and the
    other CPUs render. Preprocessing stays on the CPU (views travel as uint8), at
    15 ms a mesh on one thread (``benchmarks/stages.py``), so a GPU encode actor
    takes up to :data:`GPU_ENCODE_CPUS` CPUs for it when the cluster has them.
    On CPUs alone, ``share`` of them render (:func:`render_share` of the
    model's look and precision) and the rest preprocess and encode. Fewer CPUs
    than actors: each actor asks for a fraction of one.
    """
    if cpus < 1:
        raise FtsplError(f"the Ray cluster offers {cpus:g} CPUs; it needs at least 1")
    use_gpu = device != "cpu" and gpus >= 1
    if device == "cuda" and not use_gpu:
        raise FtsplError("--device cuda: the Ray cluster has no GPUs; use --device auto or cpu")
    if use_gpu:
        enc = encode_actors or int(gpus)
        enc_cpus = float(GPU_ENCODE_CPUS) if cpus >= enc * GPU_ENCODE_CPUS + 1 else 1.0
        ren = render_actors or max(1, int(cpus - enc * enc_cpus))
        per = min(1.0, max(cpus - enc * enc_cpus, 1.0) / ren)
        return ActorPlan(ren, enc, per, 1.0, device, enc_cpus)
    ren = render_actors or max(1, round(cpus * share))
    enc = encode_actors or max(1, int(cpus) - ren)
    per = min(1.0, cpus / (ren + enc))
    return ActorPlan(ren, enc, per, 0.0, "cpu", per)


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the attached cluster."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))
