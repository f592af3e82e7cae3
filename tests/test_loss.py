"""The transferable loss (Eq. 4) against its definition and its derivation (Eqs. 1-3)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

from ftspl.train.loss import ramp, transferable_logits, transferable_loss


def _problem(b=6, k=4, m=3, seed=0, dtype=torch.float64, scale=1.0):
    """Random features, classifier, labels, centroid shifts and PSD covariances."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(b, m, generator=g, dtype=dtype)
    W = torch.randn(k, m, generator=g, dtype=dtype) * scale
    bias = torch.randn(k, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (b,), generator=g)
    dmu = torch.randn(k, m, generator=g, dtype=dtype) * 0.5
    a = torch.randn(k, m, m, generator=g, dtype=dtype) * 0.5
    cov = a @ a.transpose(1, 2)
    return f, W, bias, labels, dmu, cov


def _naive(logits, labels, W, dmu, cov, lam):
    """Eq. 4 written as the paper does, with a double loop over samples and classes."""
    z = logits.clone()
    for i in range(logits.shape[0]):
        y = int(labels[i])
        for k in range(logits.shape[1]):
            d = W[k] - W[y]
            z[i, k] = logits[i, k] + lam * (d @ dmu[y]) + 0.5 * lam * (d @ cov[y] @ d)
    return z


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_matches_naive_double_loop(lam):
    f, W, bias, labels, dmu, cov = _problem(b=9, k=5, m=4, seed=1)
    logits = f @ W.T + bias
    z = transferable_logits(logits, labels, W, dmu, cov, lam=lam)
    assert z.dtype == torch.float64
    torch.testing.assert_close(z, _naive(logits, labels, W, dmu, cov, lam), rtol=1e-12, atol=1e-12)


def test_repeated_labels_and_more_samples_than_classes():
    """The per-distinct-class grouping must scatter back to every sample of that class."""
    f, W, bias, _, dmu, cov = _problem(b=12, k=3, m=5, seed=2)
    labels = torch.tensor([2, 0, 2, 2, 1, 0, 2, 1, 1, 0, 2, 2])
    logits = f @ W.T + bias
    z = transferable_logits(logits, labels, W, dmu, cov)
    torch.testing.assert_close(z, _naive(logits, labels, W, dmu, cov, 1.0), rtol=1e-12, atol=1e-12)


def test_only_one_class_in_batch():
    f, W, bias, _, dmu, cov = _problem(b=4, k=5, m=3, seed=3)
    labels = torch.full((4,), 3)
    logits = f @ W.T + bias
    z = transferable_logits(logits, labels, W, dmu, cov)
    torch.testing.assert_close(z, _naive(logits, labels, W, dmu, cov, 1.0), rtol=1e-12, atol=1e-12)


def test_true_class_entry_is_unchanged_exactly():
    f, W, bias, labels, dmu, cov = _problem(seed=4)
    logits = f @ W.T + bias
    z = transferable_logits(logits, labels, W, dmu, cov)
    idx = labels.unsqueeze(1)
    assert torch.equal(z.gather(1, idx), logits.gather(1, idx))
    assert not torch.equal(z, logits)


def test_no_terms_or_zero_terms_give_the_logits_exactly():
    f, W, bias, labels, dmu, cov = _problem(seed=5)
    logits = f @ W.T + bias
    assert torch.equal(transferable_logits(logits, labels, W), logits)
    assert torch.equal(transferable_logits(logits, labels, W, torch.zeros_like(dmu), torch.zeros_like(cov)), logits)
    assert torch.equal(transferable_logits(logits, labels, W, dmu, cov, lam=0.0), logits)
    loss = transferable_loss(logits, labels, W, None, None)
    assert torch.equal(loss, F.cross_entropy(logits, labels))


def test_ablation_switches_drop_one_term_each():
    f, W, bias, labels, dmu, cov = _problem(seed=6)
    logits = f @ W.T + bias
    zero_cov, zero_mu = torch.zeros_like(cov), torch.zeros_like(dmu)
    only_mu = transferable_logits(logits, labels, W, dmu, None)
    only_cov = transferable_logits(logits, labels, W, None, cov)
    torch.testing.assert_close(only_mu, _naive(logits, labels, W, dmu, zero_cov, 1.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(only_cov, _naive(logits, labels, W, zero_mu, cov, 1.0), rtol=1e-12, atol=1e-12)
    both = transferable_logits(logits, labels, W, dmu, cov)
    torch.testing.assert_close(both - logits, (only_mu - logits) + (only_cov - logits), rtol=1e-12, atol=1e-12)


def test_lambda_scales_both_terms_linearly():
    f, W, bias, labels, dmu, cov = _problem(seed=7)
    logits = f @ W.T + bias
    z1 = transferable_logits(logits, labels, W, dmu, cov, lam=1.0)
    z25 = transferable_logits(logits, labels, W, dmu, cov, lam=2.5)
    torch.testing.assert_close(z25 - logits, 2.5 * (z1 - logits), rtol=1e-12, atol=1e-12)


def test_without_covariance_equals_logits_of_shifted_features():
    """Sigma = 0: Z is the logits of f + dmu_y up to a per-sample constant, so the CE is identical."""
    f, W, bias, labels, dmu, _ = _problem(seed=8)
    logits = f @ W.T + bias
    shifted = (f + dmu[labels]) @ W.T + bias
    z = transferable_logits(logits, labels, W, dmu, None)
    offset = z - shifted
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        transferable_loss(logits, labels, W, dmu, None),
        F.cross_entropy(shifted, labels), rtol=1e-12, atol=1e-12,
    )


def test_monte_carlo_bound_of_eqs_2_to_4():
    """Eq. 1 with many sampled features stays below Eq. 4, and Eq. 3's log E[sum exp] converges to it."""
    f, W, bias, labels, dmu, cov = _problem(b=5, k=4, m=3, seed=9)
    cov, dmu = cov * 0.2, dmu * 0.5
    lam = 0.8
    logits = f @ W.T + bias
    bound = transferable_loss(logits, labels, W, dmu, cov, lam=lam, reduction="none")

    n = 400_000
    g = torch.Generator().manual_seed(10)
    eps = torch.randn(n, f.shape[1], generator=g, dtype=torch.float64)
    ce_mean, log_mean_exp = [], []
    for i in range(f.shape[0]):
        y = int(labels[i])
        chol = torch.linalg.cholesky(lam * cov[y] + 1e-12 * torch.eye(f.shape[1], dtype=torch.float64))
        samples = f[i] + lam * dmu[y] + eps @ chol.T  # f~ ~ N(f + lam dmu_y, lam Sigma_y)
        lg = samples @ W.T + bias
        rel = lg - lg[:, y : y + 1]  # (w_k - w_y)^T f~ + b_k - b_y
        ce_mean.append(torch.logsumexp(rel, dim=1).mean())  # Eq. 1, N samples
        log_mean_exp.append(torch.logsumexp(rel, dim=1).exp().mean().log())  # Eq. 3
    ce_mean, log_mean_exp = torch.stack(ce_mean), torch.stack(log_mean_exp)
    assert torch.all(ce_mean <= bound + 1e-9)  # Jensen: the bound holds
    assert torch.all(ce_mean < bound - 1e-3)  # and is not trivially tight here
    torch.testing.assert_close(log_mean_exp, bound, rtol=0.0, atol=1e-2)


def test_gradcheck_logits_weight_and_statistics():
    f, W, bias, labels, dmu, cov = _problem(b=3, k=3, m=2, seed=11)
    logits = (f @ W.T + bias).requires_grad_()
    W = W.clone().requires_grad_()
    dmu = dmu.clone().requires_grad_()
    cov = cov.clone().requires_grad_()

    def fn(lg, w, mu, c):
        return transferable_loss(lg, labels, w, mu, c, lam=0.7)

    assert torch.autograd.gradcheck(fn, (logits, W, dmu, cov))
    loss = fn(logits, W, dmu.detach(), cov.detach())
    loss.backward()
    assert logits.grad is not None and W.grad is not None
    assert W.grad.abs().sum() > 0


def test_weight_gradient_includes_correction_terms():
    """W gets gradient through the correction even when the logits are detached."""
    f, W, bias, labels, dmu, cov = _problem(seed=12)
    W = W.clone().requires_grad_()
    logits = (f @ W.T + bias).detach()
    transferable_loss(logits, labels, W, dmu, cov).backward()
    assert W.grad.abs().sum() > 0


def test_autocast_bf16_computes_in_float32():
    f, W, bias, labels, dmu, cov = _problem(b=8, k=5, m=16, seed=13, dtype=torch.float32)
    ref = transferable_logits(f @ W.T + bias, labels, W, dmu, cov)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.functional.linear(f, W, bias)
        assert logits.dtype == torch.bfloat16
        z = transferable_logits(logits, labels, W, dmu, cov)
    assert z.dtype == torch.float32
    # only the bf16 logits themselves differ; the correction is computed in fp32
    torch.testing.assert_close(z - logits.float(), ref - (f @ W.T + bias), rtol=1e-5, atol=1e-5)


def test_float32_inputs_give_float32():
    f, W, bias, labels, dmu, cov = _problem(dtype=torch.float32)
    z = transferable_logits(f @ W.T + bias, labels, W, dmu, cov)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"labels": torch.zeros(5, dtype=torch.long)},
        {"labels": torch.zeros(6)},
        {"W": torch.zeros(3, 3, dtype=torch.float64)},
        {"dmu": torch.zeros(4, 2, dtype=torch.float64)},
        {"cov": torch.zeros(4, 3, 2, dtype=torch.float64)},
    ],
)
def test_shape_errors(kwargs):
    f, W, bias, labels, dmu, cov = _problem()
    args = {"logits": f @ W.T + bias, "labels": labels, "W": W, "dmu": dmu, "cov": cov}
    args.update(kwargs)
    with pytest.raises(ValueError):
        transferable_logits(**args)


def test_ramp():
    assert ramp(0, 100, 0.5) == 0.0
    assert ramp(50, 100, 0.5) == pytest.approx(0.25)
    assert ramp(100, 100, 0.5) == 0.5
    assert ramp(250, 100, 0.5) == 0.5
    assert ramp(-3, 100, 0.5) == 0.0
    assert ramp(7, 0, 0.5) == 0.5
    values = [ramp(s, 10, 2.0) for s in range(12)]
    assert values == sorted(values) and values[-1] == 2.0
