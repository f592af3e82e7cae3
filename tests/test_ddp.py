"""Training with 2 processes (torch DDP, gloo on CPU) against one process on the same data.

Workers run under ``torch.multiprocessing.spawn`` with a ``file://`` rendezvous
and one thread each; they save what they computed and the test compares it
with a single process. End-to-end runs reuse tests/test_train.py's tiny data.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tdist = pytest.importorskip("torch.distributed")

from test_train import _cache, cfg_for, same, tiny, weights  # noqa: F401  (fixtures shared with test_train)

from ftspl.engine.errors import FtsplError, UsageError
from ftspl.train.config import TrainConfig, apply_preset
from ftspl.train.distributed import Dist, session

if not tdist.is_available() or not tdist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
K, F_DIM, M_DIM = 3, 16, 8  # classes, backbone feature size, embedding size of the synthetic head


# -- spawning ---------------------------------------------------------------------
def _entry(rank: int, world: int, init: str, fn, args: tuple) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        gc.collect()  # free DDP wrappers (and their gloo work) while the group and the interpreter are alive
        tdist.destroy_process_group()


def spawn(tmp: Path, fn, *args) -> None:
    """Run ``fn(rank, *args)`` in WORLD processes that share a gloo group (file:// rendezvous)."""
    init = tmp / f"pg-{fn.__name__}-{len(list(tmp.glob('pg-*')))}"
    torch.multiprocessing.spawn(_entry, args=(WORLD, f"file://{init}", fn, args), nprocs=WORLD, join=True)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 processes on a shared 2-core machine
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


# -- pure sharding arithmetic (no processes) -------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 7, 25, 32])
def test_blocks_are_whole_batches_covering_every_item(world, n):
    step = 4
    blocks = [Dist(rank=r, world=world).block(n, step) for r in range(world)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))  # contiguous, in rank order
    assert all(start % step == 0 for start, stop in blocks if stop > start)  # whole batches of one process


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_equal_disjoint_and_the_same_everywhere(world):
    idx = np.random.default_rng(0).permutation(11)
    parts = [Dist(rank=r, world=world).shard(idx) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == 11 // world
    assert np.array_equal(np.concatenate(parts), idx[: len(parts[0]) * world])


# -- the process group: formed, or a clear error ------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_group_that_cannot_form_is_an_error_not_one_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FtsplError, match=r"needs \$RANK"), session("cpu"):
        pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(FtsplError, match="could not form the gloo process group.*MASTER_ADDR"), session("cpu"):
        pass
    monkeypatch.setenv("RANK", "1")  # a worker whose master never answers
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("FTSPL_DIST_INIT_TIMEOUT_S", "1")
    with pytest.raises(FtsplError, match="rank 1 of 2 could not form the gloo process group at 127.0.0.1"), \
            session("cpu"):
        pass
    assert not tdist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(FtsplError, match="WORLD_SIZE='two' is not an integer"), session("cpu"):
        pass


def test_nproc_is_checked(monkeypatch, tmp_path):
    from ftspl.cli.train_cmds import train_cmd

    settings = {"source": str(tmp_path), "target": str(tmp_path), "out": str(tmp_path / "r"), "device": "cpu"}
    with pytest.raises(UsageError, match="--nproc must be at least 1"):
        train_cmd("FTSPL", settings, {}, False, True, nproc=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="--nproc 3 in a run of 2 processes"):
        train_cmd("FTSPL", settings, {}, False, True, nproc=3)


# -- collectives and the trainer on synthetic features ---------------------------------------
class _Features(torch.nn.Module):
    """A stand-in backbone whose "features" are its input (head mode never calls it)."""

    name, feat_dim = "features", F_DIM

    def features(self, x):
        return x

    def classifier_parameters(self):
        return []


def _data():
    """Three Gaussian classes of photo features and 25 shape features (an odd count: uneven blocks)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 3, (K, F_DIM))
    ys = np.repeat(np.arange(K), 12)
    yt = np.arange(25) % K
    src = centres[ys] + rng.normal(0, 1, (len(ys), F_DIM))
    tgt = centres[yt] + 1.5 + rng.normal(0, 1, (len(yt), F_DIM))
    return (torch.as_tensor(src, dtype=torch.float32), torch.as_tensor(ys), torch.as_tensor(tgt, dtype=torch.float32),
            [str(k) for k in yt])


def _trainer(dist: Dist, out: Path, bn: bool = True):
    from ftspl.train.feeds import HeadFeed
    from ftspl.train.net import FTSPLNet
    from ftspl.train.trainer import Trainer

    src, ys, tgt, tl = _data()
    torch.manual_seed(11)
    net = FTSPLNet(_Features(), K, M_DIM)
    if not bn:
        net.bottleneck.bn = torch.nn.Identity()
    feed = HeadFeed.from_tensors(src, ys, tgt, torch.device("cpu"))
    cfg = replace(apply_preset(TrainConfig(), "FTSPL"), batch_size=8, rounds=2, epochs=1, warmup_epochs=1, lr=0.05,
                  seed=3, lam_ramp=False, lam=0.5, align="jan", align_weight=1.0, align_phase="warmup")
    return Trainer(cfg, net, feed, [str(k) for k in range(K)], tl, torch.device("cpu"), out, dist)


def _training_run(dist: Dist, out: Path, bn: bool) -> dict:
    """Warm-up epoch, pseudo-labels, statistics, two FTSPL epochs; what each step's forward saw."""
    tr = _trainer(dist, out, bn)
    rows: list[tuple[int, int]] = []
    tr.net.register_forward_hook(
        lambda m, args, kwargs, out: rows.append((len(args[0]), 0 if args[1] is None else len(args[1]))),
        with_kwargs=True)
    warmup = tr.epoch(0, 0, None, np.zeros(0, np.int64), np.zeros(0, np.int64))  # with the JAN alignment
    labels, _, selected, src, tgt = tr.pseudo_label(1)
    losses = []
    for ep in range(2):
        losses.append(tr.epoch(1, ep, tr.stats(src, tgt, selected, labels), selected, labels))
    return {"state": {k: v.clone() for k, v in tr.net.state_dict().items()}, "rows": rows, "losses": losses,
            "warmup": warmup}


def _first_step_grads(dist: Dist, out: Path) -> dict:
    """One step on a global batch of 8 photos: this rank's shard through the DDP wrapper, grads after sync."""
    tr = _trainer(dist, out, bn=False)
    src, ys, _, _ = _data()
    idx = dist.shard(np.arange(8))
    loss = torch.nn.functional.cross_entropy(tr.model(src[idx], None, pixels=False), ys[idx])
    loss.backward()
    return {n: p.grad.clone() for n, p in tr.net.named_parameters() if p.grad is not None}


def _pseudo(dist: Dist, out: Path) -> dict:
    tr = _trainer(dist, out)
    labels, probs, selected, src, tgt = tr.pseudo_label(1)
    st = tr.stats(src, tgt, selected, labels)
    return {"labels": labels, "probs": probs, "selected": selected, "src": src, "tgt": tgt, "dmu": st.dmu(),
            "cov": st.cov(), "report": tr.report(1, labels, selected, {}, 0.0)}


def _synthetic_worker(rank: int, out: str) -> None:
    from ftspl.train.distributed import session

    with session("cpu") as d:
        assert (d.rank, d.world) == (rank, WORLD)
        # gather with padding: 3 rows + 5 rows, and 0 rows + 2 rows
        got = d.gather_rows(torch.arange(3 + 2 * rank, dtype=torch.float32).repeat_interleave(2).reshape(-1, 2)
                            + 100 * rank)
        empty = d.gather_rows(torch.full((2 * rank, 4), rank, dtype=torch.int64))
        try:
            d.check_same("numbers", str(rank))
            differ = None
        except FtsplError as exc:
            differ = str(exc)
        res = {"gather": got, "empty": empty, "differ": differ, "pseudo": _pseudo(d, Path(out)),
               "bn": _training_run(d, Path(out), bn=True), "nobn": _training_run(d, Path(out), bn=False),
               "grads": _first_step_grads(d, Path(out))}
    torch.save(res, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[list[dict], dict]:
    """(per-rank results of 2 processes, the same computed in this one process)."""
    out = tmp_path_factory.mktemp("ddp-synthetic")
    spawn(out, _synthetic_worker, str(out))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    one = Dist()
    single = {"pseudo": _pseudo(one, out), "bn": _training_run(one, out, bn=True),
              "nobn": _training_run(one, out, bn=False), "grads": _first_step_grads(one, out)}
    return ranks, single


@pytest.mark.slow
def test_gather_pads_and_cuts_uneven_blocks(synthetic):
    ranks, _ = synthetic
    for r in ranks:
        assert r["gather"].shape == (8, 2) and r["gather"][:3, 0].tolist() == [0, 1, 2]
        assert r["gather"][3:, 0].tolist() == [100, 101, 102, 103, 104]
        assert r["empty"].tolist() == [[1] * 4, [1] * 4]
        assert "ranks [1] differ from rank 0" in r["differ"]  # raised on every rank, not only one


@pytest.mark.slow
def test_gathered_pseudo_labels_and_statistics_equal_one_process(synthetic):
    ranks, single = synthetic
    want = single["pseudo"]
    assert 0 < len(want["selected"]) < len(want["labels"]) == 25  # round 1 of 2: a real selection
    for r in ranks:
        got = r["pseudo"]
        assert torch.equal(got["src"], want["src"]) and torch.equal(got["tgt"], want["tgt"])  # whole batches: bit-equal
        assert np.array_equal(got["labels"], want["labels"]) and np.array_equal(got["selected"], want["selected"])
        assert np.array_equal(got["probs"], want["probs"])
        assert torch.equal(got["dmu"], want["dmu"]) and torch.equal(got["cov"], want["cov"])
        assert got["report"] == want["report"]


@pytest.mark.slow
def test_weights_are_identical_across_ranks_after_training(synthetic):
    ranks, single = synthetic
    for case in ("bn", "nobn"):
        a, b = ranks[0][case]["state"], ranks[1][case]["state"]
        assert same(a, b), case  # parameters (synchronised gradients) and BatchNorm buffers (averaged)
        # every step: each rank saw its half of the global batch (4 of 8 photos, and of 8 shapes)
        assert ranks[0][case]["rows"] == ranks[1][case]["rows"]
        assert len(ranks[0][case]["rows"]) == len(single[case]["rows"])
        assert [r for r, _ in ranks[0][case]["rows"]] == [r // WORLD for r, _ in single[case]["rows"]]
        assert [t for _, t in ranks[0][case]["rows"]] == [t // WORLD for _, t in single[case]["rows"]]
        assert ranks[0][case]["losses"] == ranks[1][case]["losses"]


@pytest.mark.slow
def test_without_batchnorm_two_processes_train_like_one_on_the_whole_batch(synthetic):
    ranks, single = synthetic
    for name, g in single["grads"].items():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-5, atol=1e-6)
    want = single["nobn"]["state"]
    for r in ranks:
        for k, v in want.items():
            torch.testing.assert_close(r["nobn"]["state"][k], v, rtol=1e-4, atol=1e-5)
        for got, exp in zip(r["nobn"]["losses"], single["nobn"]["losses"]):
            assert got["loss_source"] == pytest.approx(exp["loss_source"], rel=1e-4)
            assert got["loss_target"] == pytest.approx(exp["loss_target"], rel=1e-4)
        # the warm-up's alignment loss is computed on the global batch (Dist.gather_grad), not per rank
        assert r["nobn"]["warmup"]["loss_align"] == pytest.approx(single["nobn"]["warmup"]["loss_align"], rel=1e-4)
    # the losses must move: a loss stuck at 0 would make the comparison above say little
    assert single["nobn"]["losses"][0]["loss_target"] > 0.01
    assert single["nobn"]["warmup"]["loss_align"] > 1e-4


# -- end to end on the tiny meshes -----------------------------------------------------------
class Killed(Exception):
    pass


def _train_worker(rank: int, cfg: TrainConfig, resume: bool, kill_after: int | None, out: str) -> None:
    from ftspl.train.loop import train

    def on_round(rec):
        if kill_after is not None and rec["round"] == kill_after:
            raise Killed

    try:
        res = train(cfg, resume=resume, on_round=on_round, return_embeddings=True)
    except Killed:
        Path(out, f"killed{rank}").write_text("")
        return
    torch.save({"target": res.embeddings.target, "source": res.embeddings.source, "rounds": res.rounds},
               Path(out) / f"result{rank}.pt")


def train_on_ranks(tmp_path: Path, cfg: TrainConfig, out: Path) -> tuple[dict, dict]:
    """``cfg`` trained by WORLD processes; ranks 0 and 1's results, checked to hold the same embeddings."""
    out.mkdir()
    spawn(tmp_path, _train_worker, cfg, False, None, str(out))
    r0, r1 = (torch.load(out / f"result{r}.pt", weights_only=False) for r in range(WORLD))
    assert np.array_equal(r0["target"], r1["target"]) and np.array_equal(r0["source"], r1["source"])
    return r0, r1


@pytest.mark.slow
def test_two_processes_end_to_end_kill_and_resume(tiny, tmp_path):  # noqa: F811
    cfg_a = cfg_for(tiny, tmp_path / "A", device="cpu")
    r0, r1 = train_on_ranks(tmp_path, cfg_a, tmp_path / "A-out")
    untimed = [[{k: v for k, v in rec.items() if k != "seconds"} for rec in r["rounds"]] for r in (r0, r1)]
    assert untimed[0] == untimed[1] and [r["world_size"] for r in r0["rounds"]] == [2, 2, 2]
    assert json.loads((tmp_path / "A" / "config.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "A" / "metrics.json").read_text())["rounds"] == r0["rounds"]

    cfg_b = cfg_for(tiny, tmp_path / "B", device="cpu")
    (tmp_path / "B-out").mkdir()
    spawn(tmp_path, _train_worker, cfg_b, False, 1, str(tmp_path / "B-out"))
    assert sorted(p.name for p in (tmp_path / "B-out").iterdir()) == ["killed0", "killed1"]
    assert [r["round"] for r in json.loads((tmp_path / "B" / "metrics.json").read_text())["rounds"]] == [0, 1]
    shutil.copytree(tmp_path / "B", tmp_path / "C")  # the killed run, to resume with one process below
    spawn(tmp_path, _train_worker, cfg_b, True, None, str(tmp_path / "B-out"))
    assert same(weights(tmp_path / "A"), weights(tmp_path / "B"))

    from ftspl.train.loop import train

    res = train(cfg_for(tiny, tmp_path / "C", device="cpu"), resume=True)  # --resume with another N
    assert [r["world_size"] for r in res.rounds] == [2, 2, 1]
    assert json.loads((tmp_path / "C" / "config.json").read_text())["world_size"] == 2  # what it started with


@pytest.mark.slow
def test_full_mode_two_processes(tiny, tmp_path):  # noqa: F811
    """Fine-tuning the backbone too: the ranks end with the same network, and the backbone moved."""
    from ftspl.train.backbone_registry import build_backbone

    cfg = cfg_for(tiny, tmp_path / "run", mode="full", rounds=1, epochs=1, warmup_epochs=1, device="cpu")
    r0, r1 = train_on_ranks(tmp_path, cfg, tmp_path / "out")
    assert [r["world_size"] for r in r0["rounds"]] == [2, 2]
    before = build_backbone("efficientnet_lite0").state_dict()
    after = weights(tmp_path / "run")
    assert [k for k in before if not torch.equal(before[k], after["backbone." + k])], "the backbone must move"
    assert all(torch.equal(before[k], after["backbone." + k]) for k in ("_fc.weight", "_fc.bias"))  # never trained


@pytest.mark.slow
def test_torchrun_cli_and_the_nproc_launcher(tiny, tmp_path):  # noqa: F811
    args = ["--source", str(tiny / "source"), "--target", str(tiny / "target"), "--rounds", "1", "--epochs", "1",
            "--warmup-epochs", "1", "--batch-size", "4", "--augment-copies", "1", "--device", "cpu", "--json"]
    env = dict(os.environ, FTSPL_HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    r = subprocess.run([*torchrun, "-m", "ftspl", "train", "--out", str(tmp_path / "run"), *args],
                       check=False, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # rank 0 alone reports
    assert [rec["world_size"] for rec in json.loads(lines[0])["rounds"]] == [2, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
    # the launcher: a failing run is one line per process plus the launcher's, the workers' exit code, no traceback
    r = subprocess.run([sys.executable, "-m", "ftspl", "train", "--out", str(tmp_path / "run"), *args, "--nproc", "2"],
                       check=False, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "already holds a run; pass --resume" in r.stderr
    assert re.search(r"training process rank [01] of 2 exited with code 2", r.stderr), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
