"""ClassStats: per-class centroids (Eq. 5) and target covariances, against numpy."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ftspl.train.loss import transferable_loss
from ftspl.train.stats import ClassStats

K, M = 4, 5


def _data(n=60, k=K, m=M, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g, dtype=torch.float64) + offset
    y = torch.arange(n) % k  # every class present
    y = y[torch.randperm(n, generator=g)]
    return x, y


def _np_stats(x, y, k):
    xs, ys = x.numpy(), y.numpy()
    means = np.stack([xs[ys == c].mean(axis=0) for c in range(k)])
    covs = np.stack([np.cov(xs[ys == c], rowvar=False, bias=True) for c in range(k)])
    return means, covs


def test_matches_numpy_mean_and_biased_cov():
    xs, ys = _data(seed=1)
    xt, yt = _data(n=80, seed=2, offset=0.5)
    st = ClassStats(K, M)
    st.update_source(xs, ys)
    st.update_target(xt, yt)
    mu_s, _ = _np_stats(xs, ys, K)
    mu_t, cov_t = _np_stats(xt, yt, K)
    np.testing.assert_allclose(st.source_means(torch.float64).numpy(), mu_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.target_means(torch.float64).numpy(), mu_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.dmu(torch.float64).numpy(), mu_t - mu_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.cov(torch.float64).numpy(), cov_t, rtol=1e-12, atol=1e-12)
    assert st.source_counts.tolist() == np.bincount(ys.numpy(), minlength=K).tolist()
    assert st.target_counts.tolist() == np.bincount(yt.numpy(), minlength=K).tolist()


@pytest.mark.parametrize("chunks", [[1] * 7 + [73], [13, 0, 40, 27], [79, 1]])
def test_incremental_equals_one_shot(chunks):
    xt, yt = _data(n=80, seed=3, offset=2.0)
    xs, ys = _data(n=80, seed=4)
    one = ClassStats(K, M)
    one.update_source(xs, ys)
    one.update_target(xt, yt)
    inc = ClassStats(K, M)
    start = 0
    for size in chunks:
        inc.update_source(xs[start : start + size], ys[start : start + size])
        inc.update_target(xt[start : start + size], yt[start : start + size])
        start += size
    assert start == 80
    for getter in ("source_means", "target_means", "dmu", "cov"):
        torch.testing.assert_close(
            getattr(inc, getter)(torch.float64), getattr(one, getter)(torch.float64), rtol=1e-11, atol=1e-12
        )


def test_selected_mask_equals_passing_the_subset():
    xt, yt = _data(n=40, seed=5)
    keep = torch.arange(40) % 3 != 0
    a, b = ClassStats(K, M), ClassStats(K, M)
    a.update_target(xt, yt, selected=keep)
    b.update_target(xt[keep], yt[keep])
    assert torch.equal(a.cov(), b.cov()) and torch.equal(a.target_means(), b.target_means())
    assert a.target_counts.sum() == int(keep.sum())


def test_empty_and_single_sample_classes_give_zeros():
    st = ClassStats(num_classes=5, dim=3, min_count=2)
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [2.0, 1.0, 0.0], [4.0, 4.0, 4.0]])
    st.update_source(x, torch.tensor([0, 1, 2, 3]))
    st.update_target(x[:3] + 1.0, torch.tensor([0, 1, 1]))  # class 0: one shape, class 1: two
    dmu, cov = st.dmu(), st.cov()
    assert torch.isfinite(dmu).all() and torch.isfinite(cov).all()
    assert st.valid().tolist() == [False, True, False, False, False]
    for c in (0, 2, 3, 4):  # one shape, no shape, no shape, neither photo nor shape
        assert torch.count_nonzero(dmu[c]) == 0 and torch.count_nonzero(cov[c]) == 0
    expected = (x[1:3] + 1.0).mean(0) - x[1]
    torch.testing.assert_close(dmu[1], expected)
    assert torch.count_nonzero(cov[1]) > 0


def test_fresh_stats_are_all_zero_and_empty_update_is_a_noop():
    st = ClassStats(K, M)
    st.update_target(torch.zeros(0, M), torch.zeros(0, dtype=torch.long))
    st.update_source(torch.zeros(0, M), torch.zeros(0, dtype=torch.long))
    assert torch.count_nonzero(st.dmu()) == 0 and torch.count_nonzero(st.cov()) == 0
    assert not st.valid().any()


def test_min_count_threshold():
    xt, yt = _data(n=12, k=4, seed=6)  # 3 shapes per class
    xs, ys = _data(n=8, seed=7)
    lo, hi = ClassStats(K, M, min_count=3), ClassStats(K, M, min_count=4)
    for st in (lo, hi):
        st.update_source(xs, ys)
        st.update_target(xt, yt)
    assert lo.valid().all() and not hi.valid().any()
    assert torch.count_nonzero(hi.cov()) == 0 and torch.count_nonzero(lo.cov()) > 0


def test_covariance_is_symmetric_psd_far_from_origin():
    """Features with a large common offset and tiny spread: no cancellation, no negative eigenvalues."""
    m = 16
    g = torch.Generator().manual_seed(8)
    st = ClassStats(3, m)
    for _ in range(5):  # chunked on purpose: exercises the pairwise merge
        x = 1000.0 + 1e-3 * torch.randn(10, m, generator=g)
        st.update_target(x, torch.randint(0, 3, (10,), generator=g))
    cov = st.cov(torch.float64)
    assert torch.equal(cov, cov.transpose(1, 2))
    eig = torch.linalg.eigvalsh(cov)
    assert (eig >= -1e-12).all()
    cov32 = st.cov()
    assert torch.equal(cov32, cov32.transpose(1, 2))
    assert (torch.linalg.eigvalsh(cov32.double()) >= -1e-6).all()


def test_rank_deficient_classes_are_psd():
    """n < M: the sample covariance is singular, which Eq. 4 tolerates (no inverse)."""
    m = 32
    x, y = _data(n=12, k=4, m=m, seed=9, offset=3.0)
    st = ClassStats(4, m)
    st.update_target(x, y)
    eig = torch.linalg.eigvalsh(st.cov().double())
    assert (eig >= -1e-6).all() and torch.isfinite(eig).all()


def test_shrinkage_formula_keeps_trace():
    xt, yt = _data(n=40, seed=10)
    plain, shrunk = ClassStats(K, M), ClassStats(K, M, shrinkage=0.25)
    plain.update_target(xt, yt)
    shrunk.update_target(xt, yt)
    s = plain.cov(torch.float64)
    tr = torch.diagonal(s, dim1=1, dim2=2).sum(1)
    expected = 0.75 * s + 0.25 * (tr / M).view(-1, 1, 1) * torch.eye(M, dtype=torch.float64)
    torch.testing.assert_close(shrunk.cov(torch.float64), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(shrunk.cov(torch.float64), dim1=1, dim2=2).sum(1), tr)
    assert torch.linalg.eigvalsh(shrunk.cov(torch.float64)).min() > 0


def test_momentum_source_centroids_are_an_ema():
    g = torch.Generator().manual_seed(11)
    st = ClassStats(3, 2, momentum=0.1)
    b1 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    b2 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    st.update_source(b1, torch.tensor([0, 0, 1, 1]))
    st.update_source(b2, torch.tensor([0, 2, 2]))
    mu = st.source_means(torch.float64)
    torch.testing.assert_close(mu[0], 0.9 * b1[:2].mean(0) + 0.1 * b2[0])  # EMA
    torch.testing.assert_close(mu[1], b1[2:].mean(0))  # absent from batch 2: untouched
    torch.testing.assert_close(mu[2], b2[1:].mean(0))  # first sighting initialises
    assert st.source_counts.tolist() == [3, 2, 2]
    st.reset_source()
    assert torch.count_nonzero(st.source_means()) == 0 and st.source_counts.sum() == 0


def test_getters_are_float32_on_device_detached_and_refreshed():
    xt, yt = _data(n=40, seed=12)
    st = ClassStats(K, M, device="cpu")
    st.update_source(xt.float().requires_grad_(), yt)
    st.update_target(xt.float() * 2, yt)
    for t in (st.dmu(), st.cov(), st.source_means(), st.target_means()):
        assert t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad
    assert st.dmu().shape == (K, M) and st.cov().shape == (K, M, M)
    before = st.dmu().clone()
    assert st.dmu() is st.dmu()  # cached between updates
    st.update_target(xt.float() + 5, yt)
    assert not torch.equal(st.dmu(), before)  # cache invalidated by the update
    st.reset_target()
    assert torch.count_nonzero(st.dmu()) == 0 and torch.count_nonzero(st.cov()) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_inputs_and_outputs():
    xt, yt = _data(n=40, seed=13)
    cpu, gpu = ClassStats(K, M), ClassStats(K, M, device="cuda")
    for st, dev in ((cpu, "cpu"), (gpu, "cuda")):
        st.update_source(xt.to(dev), yt.to(dev))
        st.update_target(xt.to(dev) + 1, yt.to(dev))
    assert gpu.cov().device.type == "cuda"
    assert torch.equal(gpu.cov().cpu(), cpu.cov()) and torch.equal(gpu.dmu().cpu(), cpu.dmu())


def test_state_dict_round_trip():
    xt, yt = _data(n=40, seed=14)
    a = ClassStats(K, M)
    a.update_source(xt, yt)
    a.update_target(xt * 3, yt)
    b = ClassStats(K, M)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.cov(), b.cov()) and torch.equal(a.dmu(), b.dmu())
    with pytest.raises(ValueError):
        ClassStats(K + 1, M).load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "feats, labels",
    [
        (torch.zeros(3, M + 1), torch.zeros(3, dtype=torch.long)),
        (torch.zeros(3, M), torch.zeros(2, dtype=torch.long)),
        (torch.zeros(3, M), torch.tensor([0, 1, K])),
        (torch.zeros(3, M), torch.tensor([0, -1, 1])),
        (torch.zeros(3, M), torch.zeros(3)),
        (torch.tensor([[float("nan")] * M]), torch.zeros(1, dtype=torch.long)),
    ],
)
def test_bad_inputs_are_rejected_without_corrupting_state(feats, labels):
    st = ClassStats(K, M)
    with pytest.raises(ValueError):
        st.update_target(feats, labels)
    with pytest.raises(ValueError):
        st.update_source(feats, labels)
    assert st.target_counts.sum() == 0 and torch.isfinite(st.cov()).all()


@pytest.mark.parametrize(
    "kwargs", [{"momentum": 0.0}, {"momentum": 1.5}, {"min_count": 0}, {"shrinkage": -0.1}, {"dim": 0}]
)
def test_bad_config(kwargs):
    args = {"num_classes": K, "dim": M, **kwargs}
    with pytest.raises(ValueError):
        ClassStats(**args)


def test_plugs_into_the_transferable_loss():
    """The API the training loop uses: stats from features, loss with both terms, gradient to W."""
    g = torch.Generator().manual_seed(15)
    fs = torch.randn(32, M, generator=g)
    ys = torch.arange(32) % K
    ft = torch.randn(48, M, generator=g) + 0.5
    yt = torch.arange(48) % K
    st = ClassStats(K, M)
    st.update_source(fs, ys)
    st.update_target(ft, yt)
    clf = torch.nn.Linear(M, K)
    logits = clf(fs)
    loss = transferable_loss(logits, ys, clf.weight, st.dmu(), st.cov(), lam=0.5)
    plain = torch.nn.functional.cross_entropy(logits, ys)
    cov_only = transferable_loss(logits, ys, clf.weight, None, st.cov(), lam=0.5)
    assert torch.isfinite(loss) and cov_only > plain  # PSD Sigma only raises the other classes' logits
    loss.backward()
    assert clf.weight.grad is not None and torch.isfinite(clf.weight.grad).all()
