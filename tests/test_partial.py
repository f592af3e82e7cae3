"""``--mode partial``: the trunk/tail split, the float16 activation cache, training, resume, export parity, DDP.

End-to-end runs reuse tests/test_train.py's tiny data (two classes, six photos
and three shapes each) and its cache fixture.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_train import Killed, _cache, cfg_for, die_after_round_1, same, tiny, weights  # noqa: F401  (fixtures shared with test_train)

from ftspl.engine.errors import UnknownKeyError, UsageError
from ftspl.train.config import TrainConfig, validate


@pytest.fixture(scope="module")
def lite0():
    from ftspl.train.backbone_registry import build_backbone

    return build_backbone("efficientnet_lite0")


def _photos(n: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth random images (natural-image-like statistics, so BatchNorm sees sensible inputs)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 14, 14, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=224, mode="bilinear", align_corners=False)


def _pnet(backbone, k: int, tail_bn: str = "frozen"):
    from ftspl.train.partial import PartialNet

    return PartialNet(backbone, 2, 16, k, tail_bn).eval()


@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_trunk_then_tail_is_the_backbone(lite0, k):
    """For every split point the two halves compute the backbone's pooled features, and steps() is feature_map."""
    x = _photos()
    net = _pnet(lite0, k)
    with torch.no_grad():
        ref = lite0.features(x)
        acts = net.trunk(x)
        assert torch.allclose(net.tail(acts), ref, atol=1e-5, rtol=1e-5)
        views = torch.stack([acts, acts.flip(0)], 1)  # (3, 2 views, C, h, w)
        assert torch.allclose(net.shape_trunk(views), torch.maximum(ref, ref.flip(0)), atol=1e-5, rtol=1e-5)
    assert acts.shape[1:] == {1: (320, 7, 7), 2: (192, 7, 7), 5: (192, 7, 7), 17: (32, 112, 112)}[k]


def test_float16_activations_change_the_embedding_by_less_than_1e3(lite0):
    """The cache's float16 rounding, measured on the pooled features (cosine distance to float32)."""
    net = _pnet(lite0, 2)
    with torch.no_grad():
        ref = lite0.features(_photos(4, seed=1))
        half = net.tail(net.trunk(_photos(4, seed=1)).half())
    cos = torch.nn.functional.cosine_similarity(ref, half, dim=1)
    assert float((1 - cos).max()) < 1e-3


def test_only_the_tail_trains_and_a_frozen_tail_batchnorm_stays_in_eval(lite0):
    from ftspl.train.backbone_registry import build_backbone

    net = _pnet(build_backbone("efficientnet_lite0", pretrained=False), 2)
    tail = {id(p) for m in net.tail_modules() for p in m.parameters()}
    for p in net.backbone.parameters():
        assert p.requires_grad == (id(p) in tail)
    assert tail and all(p.requires_grad for p in net.bottleneck.parameters())
    net.train()
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not any(m.training for m in bns)  # trunk and (frozen) tail statistics stay ImageNet's
    assert net.bottleneck.bn.training and net.tail_modules()[0].training
    trained = _pnet(build_backbone("efficientnet_lite0", pretrained=False), 2, tail_bn="train").train()
    tail_bns = [m for t in trained.tail_modules() for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert tail_bns and all(m.training for m in tail_bns)
    assert not trained.backbone._bn0.training  # the trunk never trains


def test_train_blocks_and_tail_bn_are_validated():
    from ftspl.train.partial import check_blocks

    base = TrainConfig(source="s", target="t", mode="partial")
    validate(base)
    with pytest.raises(UsageError, match="--train-blocks"):
        validate(replace(base, train_blocks=0))
    with pytest.raises(UnknownKeyError, match="frozen"):
        validate(replace(base, tail_bn="sometimes"))
    with pytest.raises(UsageError, match="1 to 17"):
        check_blocks(replace(base, train_blocks=18))
    with pytest.raises(UsageError, match="--mode head or --mode full"):
        check_blocks(replace(base, backbone="alexnet"))
    check_blocks(replace(base, train_blocks=17))


def test_cli_rejects_an_out_of_range_train_blocks_in_one_line(tmp_path):
    from conftest import run_ftspl

    (tmp_path / "s" / "a").mkdir(parents=True)
    (tmp_path / "t").mkdir()
    r = run_ftspl(tmp_path / "home", "train", "--source", str(tmp_path / "s"), "--target", str(tmp_path / "t"),
                  "--mode", "partial", "--train-blocks", "40", "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()  # the "training ..." line, then the error
    assert "Traceback" not in r.stderr and "--train-blocks 40" in err[-1] and "1 to 17" in err[-1], r.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# -- end to end on tiny data ---------------------------------------------------------------
def _pcfg(data: Path, out: Path, **kw) -> TrainConfig:
    return cfg_for(data, out, mode="partial", train_blocks=2, device="cpu", **kw)


@pytest.mark.slow
def test_partial_run_moves_only_the_tail_caches_float16_and_resumes(tiny, tmp_path):  # noqa: F811
    from ftspl.train.backbone_registry import build_backbone
    from ftspl.train.loop import train
    from ftspl.train.partial import PartialNet

    res = train(_pcfg(tiny, tmp_path / "full"))
    assert [r["round"] for r in res.rounds] == [0, 1, 2] and all("val" in r for r in res.rounds)
    before = build_backbone("efficientnet_lite0").state_dict()
    after = weights(tmp_path / "full")
    n_trunk = PartialNet(build_backbone("efficientnet_lite0", pretrained=False), 2, 16, 2).n_trunk
    tail_keys = ("_blocks.15.", "_conv_head.", "_bn1.")
    moved = {k for k in before if not torch.equal(before[k], after["backbone." + k])}
    assert moved and all(k.startswith(tail_keys) for k in moved), moved
    # frozen BatchNorm: the tail's running statistics are still ImageNet's
    assert all(torch.equal(before[k], after["backbone." + k]) for k in before if "running_" in k)
    assert n_trunk == 16
    sample = np.load(next((Path(os.environ["FTSPL_CACHE"]) / "activations").glob("*.npy")))
    assert sample.dtype == np.float16 and sample.shape[-3:] == (192, 7, 7)
    assert json.loads((tmp_path / "full" / "run.json").read_text())["selection"]["best_round"] in (0, 1, 2)

    with pytest.raises(Killed):
        train(_pcfg(tiny, tmp_path / "cut"), on_round=die_after_round_1)
    resumed = train(_pcfg(tiny, tmp_path / "cut"), resume=True)
    assert [r["round"] for r in resumed.rounds] == [0, 1, 2]
    assert same(weights(tmp_path / "full"), weights(tmp_path / "cut"))


@pytest.mark.slow
def test_exported_partial_model_serves_the_embeddings_training_computed(tiny, tmp_path):  # noqa: F811
    """Export runs the whole backbone on pixels; training ran the tail on float16 activations: same embeddings."""
    from ftspl.engine.home import Home
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.model.encoders import Encoders
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.export.from_run import run_model
    from ftspl.export.onnx_export import ExportConfig, export_encoders
    from ftspl.train.augment import clean
    from ftspl.train.loop import _load_inputs, train

    cfg = _pcfg(tiny, tmp_path / "run", tail_bn="train")  # moving statistics: export must carry them too
    res = train(cfg, return_embeddings=True)
    img, mv, meta = run_model(tmp_path / "run")
    model_dir, _ = export_encoders(img, mv, meta, Home(tmp_path / "home"), ExportConfig(exporter="torchscript"))
    enc = Encoders(model_dir)
    inp = _load_inputs(cfg, Path(os.environ["FTSPL_CACHE"]), None)
    photos = np.stack([clean(load_photo(p), inp.pre) for p in inp.photos.paths])
    views = np.stack([views_to_tensor(inp.views.load(i), inp.pre) for i in range(len(inp.views.keys))])

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    emb = res.embeddings
    assert emb.source.shape[0] == len(photos) and emb.target.shape[0] == len(views)
    d_src = np.abs(enc.embed_photos(photos) - unit(emb.source)).max()
    d_tgt = np.abs(enc.embed_views(views) - unit(emb.target)).max()
    assert d_src < 5e-3 and d_tgt < 5e-3, (d_src, d_tgt)
    before = {k: v for k, v in weights(tmp_path / "run").items() if "running_mean" in k and "_bn1" in k}
    assert before  # the conv head's BatchNorm is in the tail; with tail_bn=train its statistics moved
    from ftspl.train.backbone_registry import build_backbone

    assert not torch.equal(build_backbone("efficientnet_lite0").state_dict()["_bn1.running_mean"],
                           before["backbone._bn1.running_mean"])


@pytest.mark.slow
def test_partial_mode_two_processes(tiny, tmp_path):  # noqa: F811
    """gloo on CPU: both ranks end with the same embeddings, and the tail moved."""
    from test_ddp import train_on_ranks

    from ftspl.train.backbone_registry import build_backbone

    cfg = _pcfg(tiny, tmp_path / "run", rounds=1, epochs=1, warmup_epochs=1)
    r0, r1 = train_on_ranks(tmp_path, cfg, tmp_path / "out")
    assert [r["world_size"] for r in r0["rounds"]] == [2, 2]
    before = build_backbone("efficientnet_lite0").state_dict()
    after = weights(tmp_path / "run")
    assert not torch.equal(before["_conv_head.weight"], after["backbone._conv_head.weight"])
    assert torch.equal(before["_blocks.14._project_conv.weight"], after["backbone._blocks.14._project_conv.weight"])
    shutil.rmtree(tmp_path / "out")


def test_partial_study_rows_train_in_partial_mode_keyed_by_their_settings(tmp_path, monkeypatch):
    """benchmarks/partial_study.py: *_partial rows run their preset in partial mode; K etc. key only those cells."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import partial_study
    import studylib

    calls = []

    def fake_embed_cell(row, cfg, split, purpose, run_dir):
        calls.append((cfg.preset, cfg.mode, cfg.train_blocks, cfg.backbone_lr_mult, cfg.tail_bn))
        q, t = np.eye(3, 4, dtype=np.float32) + 0.1, np.eye(4, dtype=np.float32) + 0.1
        return q, ["a", "b", "a"], ["m1__r0.jpg", "m2__r0.jpg", "m3__r0.jpg"], t, ["a", "b", "a", "b"], \
            ["s1", "s2", "s3", "s4"], {"seconds_per_round": [2.0, 3.0]}

    monkeypatch.setattr(studylib, "embed_cell", fake_embed_cell)
    split = studylib.Split(0, tmp_path, tmp_path / "s", tmp_path / "v", tmp_path / "vg", tmp_path / "q", tmp_path / "t",
                           ["a", "b"], {}, {})
    k1 = partial_study.row_cell("FTSPL_partial", 1, 0.1, "frozen")
    assert k1 == ("FTSPL", {"mode": "partial", "train_blocks": 1, "backbone_lr_mult": 0.1, "tail_bn": "frozen"})
    res = studylib.run_cell(k1[0], split, "tune", k1[1], tmp_path)
    assert calls[-1] == ("FTSPL", "partial", 1, 0.1, "frozen") and res["seconds_per_round"] == [2.0, 3.0]
    row, fields = partial_study.row_cell("FTSPL", 1, 0.1, "frozen")
    assert fields is None
    studylib.run_cell(row, split, "tune", fields, tmp_path)
    assert calls[-1][:2] == ("FTSPL", "head")
    studylib.run_cell("FTSPL", split, "tune", None, tmp_path)
    assert len(calls) == 2  # the head cell is cached, whatever the partial settings
    studylib.run_cell("FTSPL", split, "tune", k1[1], tmp_path)
    assert len(calls) == 2  # the same partial cell: reused
    studylib.run_cell("FTSPL", split, "tune", partial_study.tail_fields(2, 0.1, "frozen"), tmp_path)
    assert len(calls) == 3 and calls[-1][2] == 2  # another K: trained again
    assert partial_study.seconds_per_round([res]) == {"0": {"per_round": [2.0, 3.0], "mean_1_to_L": 3.0}}
    with pytest.raises(SystemExit, match="not report seeds"):
        partial_study.main(["report", "--seeds", "0"])
    with pytest.raises(SystemExit, match="5 are not tuning seeds"):
        partial_study.main(["tail", "--seeds", "5"])


def test_a_head_cell_is_keyed_without_the_backbone_settings_it_never_reads(tmp_path):
    """studylib.cell_key: head mode ignores the tail's lr, blocks and BatchNorm, so their defaults can move
    (partial_study.py tail chose lr x1.0) without retraining head cells; partial cells stay keyed by them."""
    import sys
    from dataclasses import replace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import studylib

    split = studylib.Split(0, tmp_path, tmp_path / "s", tmp_path / "v", tmp_path / "vg", tmp_path / "q", tmp_path / "t",
                           ["a", "b"], {}, {})
    head = studylib.train_config("FTSPL", split)
    assert head.mode == "head"
    for change in ({"backbone_lr_mult": 0.5}, {"train_blocks": 3}, {"tail_bn": "train"}):
        assert studylib.cell_key("FTSPL", replace(head, **change), "tune") == studylib.cell_key("FTSPL", head, "tune")
    part = replace(head, mode="partial")
    assert studylib.cell_key("FTSPL", replace(part, backbone_lr_mult=0.5), "tune") != studylib.cell_key("FTSPL", part, "tune")
    assert studylib.cell_key("FTSPL", replace(head, lr=0.5), "tune") != studylib.cell_key("FTSPL", head, "tune")
