"""Training with N processes (torch.distributed): who this process is, and the few collectives training needs.

One :class:`Dist` per process holds its rank, the world size and its device.
With one process (``Dist()``) every collective is the identity, so the
single-process run takes the same code path and stays bit-identical to what it
was before there were N processes.

How the trainer uses it (see :mod:`ftspl.train.trainer`):

* **Gradients** synchronise through :meth:`Dist.wrap` (``DistributedDataParallel``):
  the training step calls the wrapper's ``forward`` (``FTSPLNet.forward``);
  calling sub-modules directly would silently skip the gradient all-reduce
  (pytorch #14616).
* **Steps**: every rank draws the same seeded permutation, cuts it into the
  same global batches of ``--batch-size`` and takes its equal shard of each
  (:meth:`Dist.shard`, the remainder of a batch that does not split evenly is
  dropped on every rank), so all ranks take the same number of steps and the
  gradient averaged over ranks is the gradient of the global batch.
  ``DistributedSampler`` is not used: it pads by repeating samples.
* **Pseudo-labels and class statistics** are computed from the embeddings of
  all items, each rank embedding a block of whole batches and
  :meth:`Dist.gather_rows` concatenating the blocks in rank order (all-gather
  with padding: gloo has no ``all_gather_into_tensor``). Every rank then runs
  the same deterministic k-means / Hungarian / statistics on the same numbers.
* **BatchNorm**: on CUDA the trained BatchNorm layers become ``SyncBatchNorm``
  (statistics over the global batch). On CPU they stay local (``SyncBatchNorm``
  is CUDA-only in torch 2.14): each rank normalises its shard with its shard's
  statistics, and the running averages are averaged over ranks after every
  epoch (:meth:`Dist.average_buffers`), so evaluation passes agree on every rank.

The process group comes from :func:`session`: one formed by the caller is used
as it is; otherwise ``WORLD_SIZE > 1`` in the environment (set by ``torchrun``)
forms one from ``env://`` (NCCL with one GPU per process, gloo on CPU). A group
that cannot form is an :class:`~ftspl.engine.errors.FtsplError`, never a silent
single-process run. Timeouts: ``FTSPL_DIST_INIT_TIMEOUT_S`` (forming, default
120 s) and ``FTSPL_DIST_TIMEOUT_S`` (each collective, default 1800 s: a rank may
wait at a barrier while another renders its share of the shapes).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from ftspl.engine.errors import FtsplError, UsageError

log = logging.getLogger(__name__)

INIT_TIMEOUT_ENV = "FTSPL_DIST_INIT_TIMEOUT_S"
OP_TIMEOUT_ENV = "FTSPL_DIST_TIMEOUT_S"


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FtsplError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown --device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


@dataclass
class Dist:
    """This process's place in the run; with ``world == 1`` every method is the identity."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: the trained BatchNorm layers are SyncBatchNorm (CUDA): their running statistics already agree
    sync_bn: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder and talks to the user."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
        if self.world > 1 and tdist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    def threads(self) -> int:
        """torch intra-op threads for this process: the machine's cores shared by the local processes."""
        return max(1, (os.cpu_count() or 1) // max(1, self.local_world))

    # -- collectives -----------------------------------------------------------
    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def all_gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; a barrier too)."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def check_same(self, what: str, value: str) -> None:
        """Raise on every rank unless every rank passes the same ``value`` (e.g. a digest of its inputs)."""
        values = self.all_gather_object(value)
        if len(set(values)) > 1:
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise FtsplError(
                f"the {self.world} training processes see different {what} (ranks {differ} differ from rank 0); "
                "give every process the same data, cache and home (a shared filesystem across machines)"
            )

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Elementwise sum of ``values`` over ranks (one all-reduce)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(t)
        return t.cpu().tolist()

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' ``t`` (any number of rows, the same trailing shape) concatenated in rank order.

        Sizes are all-gathered first, every block is padded to the largest and
        the padding is cut off again: gloo has no ``all_gather_into_tensor``
        and ``all_gather`` needs equal shapes.
        """
        if self.world == 1:
            return t
        dev = self.comm_device
        x = t.detach().contiguous().to(dev)
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
        sizes_t = [torch.zeros_like(n) for _ in range(self.world)]
        tdist.all_gather(sizes_t, n)
        sizes = [int(s.item()) for s in sizes_t]
        biggest = max(sizes)
        if biggest == 0:
            return t
        if x.shape[0] < biggest:
            x = torch.cat([x, x.new_zeros((biggest - x.shape[0], *x.shape[1:]))])
        blocks = [torch.empty_like(x) for _ in range(self.world)]
        tdist.all_gather(blocks, x)
        return torch.cat([b[:s] for b, s in zip(blocks, sizes)]).to(t.device)

    def gather_grad(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' equal-sized ``t`` concatenated in rank order, with gradients flowing back.

        For a loss that is not a mean over samples (the kernel and covariance alignment
        losses): every rank computes it on the global batch, the backward sums each rank's
        share of the gradient onto it, and DDP's average then gives one process's gradient.
        """
        if self.world == 1:
            return t
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t.contiguous()))

    # -- sharding ----------------------------------------------------------------
    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's equal share of a global batch ``idx``; ``len(idx) % world`` trailing items are dropped."""
        if self.world == 1:
            return idx
        per = len(idx) // self.world
        return idx[self.rank * per : (self.rank + 1) * per]

    def block(self, n: int, step: int) -> tuple[int, int]:
        """Items ``[start, stop)`` of ``n`` that this rank embeds: a contiguous run of whole ``step``-sized batches.

        Whole batches keep every batch exactly as one process forms it, so the
        gathered embeddings equal a single process's bit for bit.
        """
        if self.world == 1:
            return 0, n
        n_batches = -(-n // step)
        cuts = np.linspace(0, n_batches, self.world + 1).round().astype(int)
        return min(n, int(cuts[self.rank]) * step), min(n, int(cuts[self.rank + 1]) * step)

    # -- the model -----------------------------------------------------------------
    def prepare(self, modules: Sequence[nn.Module]) -> None:
        """Turn the BatchNorm layers of the trained ``modules`` into SyncBatchNorm (CUDA only, in place).

        Parameters and buffers stay the same objects, so an optimiser built
        before or after sees the same tensors.
        """
        if self.world == 1 or self.device.type != "cuda":
            return
        for m in modules:
            for name, child in list(m.named_children()):
                m.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        self.sync_bn = True

    def wrap(self, net: nn.Module) -> nn.Module:
        """The module whose ``forward`` the training step calls: ``net`` itself, or its DDP wrapper."""
        if self.world == 1:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
        # forward_sync_buffers=False: rank 0's running statistics must not overwrite the others' at
        # every forward; they are averaged after each epoch instead (average_buffers). At
        # construction DDP broadcasts rank 0's parameters and buffers once (all equal anyway).
        return DistributedDataParallel(net, forward_sync_buffers=False, **ids)

    def average_buffers(self, modules: Sequence[nn.Module]) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) of ``modules`` over ranks.

        Needed when BatchNorm is local (CPU): each rank's running averages saw
        only its shards. With SyncBatchNorm they already agree and are left alone.
        """
        if self.world == 1 or self.sync_bn:
            return
        for m in modules:
            for b in m.buffers():
                if b.is_floating_point():
                    t = b.detach().to(self.comm_device)
                    tdist.all_reduce(t)
                    b.copy_(t.div_(self.world).to(b.device))


# -- forming the group --------------------------------------------------------------
def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise FtsplError(f"${name}={raw!r} is not an integer; torchrun sets it, or unset it to train in one process") from None


def _seconds(name: str, default: float) -> timedelta:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise FtsplError(f"${name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise FtsplError(f"${name} must be a positive number of seconds, got {raw}")
    return timedelta(seconds=value)


def _rank_device(base: torch.device, local_rank: int, local_world: int) -> torch.device:
    if base.type != "cuda":
        return base
    n = torch.cuda.device_count()
    if local_world > n:
        raise FtsplError(
            f"{local_world} training processes on this machine need {local_world} GPUs, torch sees {n}; "
            f"use --nproc {n} or --device cpu"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _joined(device_name: str) -> Dist:
    """A Dist for a process group the caller already formed (tests, notebooks)."""
    world, rank = tdist.get_world_size(), tdist.get_rank()
    local_world = _env_int("LOCAL_WORLD_SIZE", world) or world
    local_rank = _env_int("LOCAL_RANK", rank if local_world == world else 0) or 0
    base = pick_device(device_name)
    if tdist.get_backend() == "nccl" and base.type != "cuda":
        raise FtsplError("the process group uses NCCL, which needs --device cuda")
    return Dist(rank, world, local_rank, local_world, _rank_device(base, local_rank, local_world) if world > 1 else base)


@contextmanager
def session(device_name: str = "auto") -> Iterator[Dist]:
    """This process's :class:`Dist` for one training run.

    * a process group already formed (``torch.distributed.is_initialized()``):
      it is used and left in place;
    * ``WORLD_SIZE > 1`` (``torchrun``): a group is formed from ``env://``
      (``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), NCCL on
      GPUs and gloo on CPU, and destroyed when the run ends;
    * otherwise one process, no group.
    """
    if tdist.is_available() and tdist.is_initialized():
        yield _joined(device_name)
        return
    world = _env_int("WORLD_SIZE", 1)
    if world is None or world <= 1:
        yield Dist(device=pick_device(device_name))
        return
    if not tdist.is_available():
        raise FtsplError(f"$WORLD_SIZE={world} but this torch build has no torch.distributed; train in one process")
    rank = _env_int("RANK")
    if rank is None or not 0 <= rank < world:
        raise FtsplError(
            f"$WORLD_SIZE={world} needs $RANK in 0..{world - 1} (got {os.environ.get('RANK')!r}); "
            "start the processes with 'ftspl train --nproc N' or 'torchrun --nproc-per-node N -m ftspl train ...'"
        )
    local_world = _env_int("LOCAL_WORLD_SIZE", world) or world
    local_rank = _env_int("LOCAL_RANK", rank if local_world == world else 0) or 0
    device = _rank_device(pick_device(device_name), local_rank, local_world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    where = f"{os.environ.get('MASTER_ADDR', '$MASTER_ADDR unset')}:{os.environ.get('MASTER_PORT', '$MASTER_PORT unset')}"
    init_timeout = _seconds(INIT_TIMEOUT_ENV, 120.0)
    op_timeout = _seconds(OP_TIMEOUT_ENV, 1800.0)
    kw = {"device_id": device} if backend == "nccl" else {}
    try:
        tdist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=init_timeout, **kw)
    except (RuntimeError, ValueError, OSError, TimeoutError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise FtsplError(
            f"rank {rank} of {world} could not form the {backend} process group at {where} "
            f"within {init_timeout.total_seconds():g} s ({reason}); start all processes with "
            "'ftspl train --nproc N' or 'torchrun --nproc-per-node N -m ftspl train ...', "
            "or unset WORLD_SIZE to train in one process"
        ) from None
    try:
        tdist.set_timeout(op_timeout)
        log.info("rank %d of %d joined the %s process group on %s", rank, world, backend, device)
        yield Dist(rank, world, local_rank, local_world, device)
    finally:
        # DDP wrappers left in reference cycles still hold gloo work; freeing them while the group
        # and the interpreter are alive avoids an abort ("terminate called...") at process exit.
        gc.collect()
        tdist.destroy_process_group()


def worker_rank() -> int:
    """The rank torchrun gave this process (0 outside torchrun): the CLI prints only on rank 0."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def worker_world() -> int:
    """``$WORLD_SIZE`` (1 outside torchrun); a bad value is an error."""
    return _env_int("WORLD_SIZE", 1) or 1


def launch(nproc: int, argv: list[str]) -> None:
    """Run ``python -m ftspl ARGV`` as ``nproc`` processes on this machine (what ``torchrun --standalone`` does).

    Returns when every process has finished; a failure is an :class:`FtsplError`
    carrying the exit code of the process that failed first (which printed its own message).
    """
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5, start_method="spawn",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "ftspl", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        err = FtsplError(
            f"training process rank {rank} of {nproc} exited with code {failure.exitcode} "
            "(its message is above); the run folder keeps the last finished round: add --resume to continue"
        )
        err.exit_code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        raise err from None
