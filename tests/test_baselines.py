"""The paper's Table I deep baselines: their losses on tiny tensors, and each preset end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from test_train import _cache, cfg_for, tiny  # noqa: F401  (fixtures)

from ftspl.engine.errors import UnknownKeyError
from ftspl.train.align import (
    DomainDiscriminator,
    coral_loss,
    dann_loss,
    grad_reverse,
    grl_coeff,
    jmmd,
    mk_mmd,
)
from ftspl.train.config import PRESETS, TrainConfig, apply_preset


def test_coral_is_zero_for_equal_covariances_and_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g)
    assert float(coral_loss(a, a + 3.0)) == pytest.approx(0.0, abs=1e-10)  # a shift leaves covariance alone
    b = a * 2.0  # covariance x4: ||4C - C||^2 / (4 d^2) = 9 ||C||^2 / 64
    c = torch.cov(a.T)
    assert float(coral_loss(a, b)) == pytest.approx(float(9 * (c**2).sum() / 64), rel=1e-5)


def test_grl_flips_the_gradient_with_the_schedule_coefficient():
    assert grl_coeff(0.0) == 0.0 and grl_coeff(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert grl_coeff(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1) and 0 < grl_coeff(0.1) < grl_coeff(0.2) < 1
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.7, -1.4, -2.1]))


def test_dann_loss_trains_the_discriminator_and_reverses_the_features():
    torch.manual_seed(0)
    disc = DomainDiscriminator(4, hidden=8)
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4) + 1.0
    loss = dann_loss(disc, s, t, 1.0)
    loss.backward()
    g_rev = s.grad.clone()
    s.grad = None
    disc.zero_grad()
    loss2 = torch.nn.functional.binary_cross_entropy_with_logits(disc(torch.cat([s, t])), torch.cat([torch.ones(6), torch.zeros(6)]))
    loss2.backward()
    assert float(loss.detach()) == pytest.approx(float(loss2.detach())) and torch.allclose(g_rev, -s.grad, atol=1e-6)


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 3, generator=g)
    assert float(mk_mmd(a, a)) == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(40, 3, generator=g)
    vals = [float(mk_mmd(a, b + s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert vals == sorted(vals) and vals[0] < 0.2 and vals[-1] > 10 * vals[0]  # finite-sample bias at 0 shift


def test_jmmd_is_zero_for_identical_pairs_and_sees_a_shift_in_either_part():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(30, 4, generator=g)
    logit = torch.randn(30, 3, generator=g)
    assert float(jmmd(f, f, logit, logit)) == pytest.approx(0.0, abs=1e-6)
    f2, l2 = torch.randn(30, 4, generator=g), torch.randn(30, 3, generator=g)
    base = float(jmmd(f, f2, logit, l2))
    assert float(jmmd(f, f2 + 2.0, logit, l2)) > 3 * base  # features apart
    assert float(jmmd(f, f2, logit, l2 + torch.tensor([8.0, 0.0, 0.0]))) > base  # predictions apart


def test_baseline_presets_are_registered_and_unknown_names_list_them():
    for name, align in (("CORAL", "coral"), ("DANN", "dann"), ("MMD", "mmd"), ("JAN", "jan")):
        cfg = apply_preset(TrainConfig(), name)
        assert cfg.align == align and cfg.align_phase == "all" and not cfg.target_ce and not cfg.idca and not cfg.icav
    with pytest.raises(UnknownKeyError, match="CORAL.*DANN.*MMD"):
        apply_preset(TrainConfig(), "JAN?")
    # the pseudo-labelling rows share the default warm-up (TrainConfig's align, as tuning chose it)
    ftspl = apply_preset(TrainConfig(), "FTSPL")
    assert (ftspl.align, ftspl.align_phase) == (TrainConfig().align, "warmup") and "FTSPL" in PRESETS
    assert apply_preset(TrainConfig(), "source_only").align == "none"


def test_unknown_align_phase_lists_the_valid_ones():
    from ftspl.train.config import validate

    with pytest.raises(UnknownKeyError, match="all.*warmup"):
        validate(TrainConfig(align_phase="rounds"))


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_select_max_outside_0_1_is_refused(share):
    from ftspl.engine.errors import UsageError
    from ftspl.train.config import validate

    with pytest.raises(UsageError, match="select_max"):
        validate(TrainConfig(select_max=share))


@pytest.mark.slow
def test_warmup_alignment_trains_only_before_round_1(tiny, tmp_path):  # noqa: F811
    from ftspl.train.loop import train

    cfg = replace(apply_preset(cfg_for(tiny, tmp_path / "w", rounds=2, epochs=1, warmup_epochs=1), "FTSPL"),
                  align="jan", align_phase="warmup")
    rounds = train(cfg).rounds
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert math.isfinite(rounds[0]["loss_align"]) and rounds[0]["loss_align"] >= -1e-6
    assert all("loss_align" not in r for r in rounds[1:])
    every = train(replace(cfg, out=str(tmp_path / "a"), align_phase="all")).rounds
    assert all(math.isfinite(r["loss_align"]) for r in every)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CORAL", "DANN", "MMD", "JAN"])
def test_each_baseline_trains_a_tiny_run(tiny, tmp_path, name):  # noqa: F811
    from ftspl.train.loop import train

    cfg = apply_preset(cfg_for(tiny, tmp_path / name, rounds=1, epochs=2, warmup_epochs=1), name)
    res = train(cfg)
    assert [r["round"] for r in res.rounds] == [0, 1]
    for r in res.rounds:
        assert math.isfinite(r["loss_align"]) and r["loss_align"] >= -1e-6 and "val" in r
    ck = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
    assert ("disc" in ck) == (name == "DANN")
    assert json.loads((tmp_path / name / "config.json").read_text())["align"] == name.lower()


@pytest.mark.slow
def test_select_max_caps_the_last_rounds_selection(tiny, tmp_path):  # noqa: F811
    from ftspl.train.loop import train

    cfg = apply_preset(cfg_for(tiny, tmp_path / "all", rounds=1, epochs=1, warmup_epochs=1), "FTSPL")
    full = train(cfg).rounds[-1]["selected"]
    half = train(replace(cfg, out=str(tmp_path / "half"), select_max=0.5)).rounds[-1]["selected"]
    assert 0 < half < full
