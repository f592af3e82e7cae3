"""The kept pretrained branch of the served embedding: fitted once, checkpointed, exported, validated."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_train import _cache, cfg_for, tiny  # noqa: E402,F401 - the tiny data and its cache

from ftspl.engine.errors import UsageError  # noqa: E402
from ftspl.train.config import TrainConfig, validate  # noqa: E402
from ftspl.train.keep import KeepPretrained, ServedHead  # noqa: E402
from ftspl.train.model import Bottleneck  # noqa: E402


def test_served_head_is_unit_length_and_splits_the_cosine_by_weight():
    torch.manual_seed(0)
    feats = torch.randn(40, 32)
    keep = KeepPretrained(32, 6, 0.3)
    keep.fit(feats)
    head = ServedHead(Bottleneck(32, 8).eval(), keep)
    e = head(feats)
    assert e.shape == (40, 14) and head.out_dim == 14
    assert torch.allclose(e.norm(dim=1), torch.ones(40), atol=1e-5)
    assert torch.allclose(e[:, :6].norm(dim=1) ** 2, torch.full((40,), 0.3), atol=1e-5)
    cos = e @ e.T
    unit = torch.nn.functional.normalize(feats, dim=1)
    pre = torch.nn.functional.normalize((unit - unit.mean(0)) @ keep.components, dim=1)
    ada = torch.nn.functional.normalize(head.bottleneck(feats), dim=1)
    assert torch.allclose(cos, 0.3 * pre @ pre.T + 0.7 * ada @ ada.T, atol=1e-5)


def test_fit_is_deterministic_and_bad_settings_are_refused():
    feats = torch.randn(10, 16, generator=torch.Generator().manual_seed(1))
    a, b = KeepPretrained(16, 12, 0.5), KeepPretrained(16, 12, 0.5)
    a.fit(feats)
    b.fit(feats.clone())
    assert torch.equal(a.components, b.components) and torch.equal(a.mean, b.mean)
    assert torch.count_nonzero(a.components[:, 9:]) == 0  # 10 centred shapes span at most 9 directions
    one = KeepPretrained(16, 4, 0.5)
    one.fit(feats[:1])  # one shape: nothing to keep beyond its centre
    assert torch.count_nonzero(one.components) == 0
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        KeepPretrained(16, 4, 1.0)
    with pytest.raises(ValueError, match="from 1 to"):
        KeepPretrained(16, 17, 0.5)
    with pytest.raises(UsageError, match="--keep-pretrained must be in"):
        validate(TrainConfig(keep_pretrained=1.5))
    with pytest.raises(UsageError, match="--keep-pretrained-dims must be at least 1"):
        validate(TrainConfig(keep_pretrained=0.5, keep_pretrained_dims=0))


@pytest.mark.slow
def test_train_with_kept_branch_exports_what_it_validated(tiny, tmp_path):  # noqa: F811
    from ftspl.export.from_run import run_model
    from ftspl.train.loop import train

    cfg = cfg_for(tiny, tmp_path / "run", keep_pretrained=0.4, keep_pretrained_dims=4)
    res = train(cfg, return_embeddings=True)
    assert res.embeddings.target.shape[1] == 4 + cfg.embed_dim
    assert np.allclose(np.linalg.norm(res.embeddings.target, axis=1), 1, atol=1e-4)
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["net"]
    assert ck["keep.components"].shape == (1280, 4) and torch.count_nonzero(ck["keep.components"]) > 0
    img, mv, meta = run_model(tmp_path / "run")
    assert meta.embed_dim == img.embed_dim == 4 + cfg.embed_dim
    x = torch.randn(2, 3, 224, 224)
    out = img(x)
    assert out.shape == (2, 4 + cfg.embed_dim)
    assert torch.allclose(out[:, :4].norm(dim=1) ** 2, torch.full((2,), 0.4), atol=1e-4)
