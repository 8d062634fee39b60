"""Accuracy where it is hardest, measured in ulp against careful references.

float32 results are held to 2 ulp (loss) and 4 ulp (gradient) of a float64 reference computed
in the stable form (`log1p` of the mass off the maximum, the label's gradient as minus the
other classes' mass); float64 results to 2 and 4 ulp of an mpmath reference at 50 digits.
The families are the rows where `lse - z` cancels (saturated: the label or another class leads
by 5 to 100), a large common offset, flat and wide rows, steep few-class rows, ordinary rows.
Run with `-s` to see the measured worst ulp per family; scripts/test.sh runs this module
under every SIMD tier.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

import fastxent as fx

LOSS_ULP, GRAD_ULP = 2.0, 4.0


def family(name: str, rng: np.random.Generator, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of one input family."""
    if name == "saturated-label":
        c, n = 50, 96
        z = rng.normal(0, 1, (n, c))
        y = rng.integers(0, c, n)
        z[np.arange(n), y] += np.linspace(5, 100, n)
    elif name == "saturated-other":
        c, n = 50, 96
        z = rng.normal(0, 1, (n, c))
        y = rng.integers(0, c, n)
        other = (y + 1 + rng.integers(0, c - 1, n)) % c
        z[np.arange(n), other] += np.linspace(5, 100, n)
    elif name == "offset":
        z = 1e4 + rng.normal(0, 3, (64, 300))
        y = rng.integers(0, 300, 64)
    elif name == "flat-wide":
        z = rng.normal(0, 0.01, (2, 262144))
        y = rng.integers(0, 262144, 2)
    elif name == "steep-few":
        z = rng.normal(0, 30, (256, 3))
        y = rng.integers(0, 3, 256)
    else:  # ordinary
        z = rng.normal(0, 2, (128, 1000))
        y = rng.integers(0, 1000, 128)
    return z.astype(dtype), y


FAMILIES = ["saturated-label", "saturated-other", "offset", "flat-wide", "steep-few", "ordinary"]


def reference_f64(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss and gradient in float64 from float32 inputs (exact differences), stable form."""
    z = z.astype(np.float64)
    rows = np.arange(len(z))
    k = z.argmax(axis=1)
    m = z[rows, k]
    e = np.exp(z - m[:, None])
    e_k = e.copy()
    e_k[rows, k] = 0.0
    rest = e_k.sum(axis=1)
    loss = (m - z[rows, y]) + np.log1p(rest)
    p = e / (1.0 + rest)[:, None]
    grad = p.copy()
    others = np.where(y == k, rest, 1.0 + rest - e[rows, y]) / (1.0 + rest)
    grad[rows, y] = -others
    return loss, grad


def reference_mp(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss and gradient with mpmath at 50 digits."""
    mpmath.mp.dps = 50
    loss, grad = np.zeros(len(z)), np.zeros(z.shape)
    for r, (row, label) in enumerate(zip(z, y)):
        row_mp = [mpmath.mpf(float(x)) for x in row]
        m = max(row_mp)
        s = mpmath.fsum(mpmath.exp(x - m) for x in row_mp)
        lse = m + mpmath.log(s)
        loss[r] = float(lse - row_mp[label])
        p = [mpmath.exp(x - lse) for x in row_mp]
        for j, pj in enumerate(p):
            grad[r, j] = float(pj)
        grad[r, label] = float(-mpmath.fsum(pj for j, pj in enumerate(p) if j != label))
    return loss, grad


def ulps(got: np.ndarray, want: np.ndarray, dtype) -> float:
    want_rounded = want.astype(dtype)
    spacing = np.maximum(np.spacing(np.abs(want_rounded)).astype(np.float64), np.finfo(dtype).smallest_subnormal)
    return float(np.max(np.abs(got.astype(np.float64) - want) / spacing))


@pytest.mark.parametrize("name", FAMILIES)
def test_float32_within_bounds(name, capsys):
    z, y = family(name, np.random.default_rng(FAMILIES.index(name)), np.float32)
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
    want_loss, want_grad = reference_f64(z, y)
    loss_ulp, grad_ulp = ulps(loss, want_loss, np.float32), ulps(grad, want_grad, np.float32)
    with capsys.disabled():
        print(f"\n  [{fx.simd_tier()}] float32 {name:16s} loss {loss_ulp:5.2f} ulp  grad {grad_ulp:5.2f} ulp", end="")
    assert loss_ulp <= LOSS_ULP
    assert grad_ulp <= GRAD_ULP
    # The forward function is the same computation.
    assert fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z).tobytes() == loss.tobytes()


@pytest.mark.parametrize("name", ["saturated-label", "saturated-other", "offset", "steep-few", "ordinary"])
def test_float64_within_bounds(name, capsys):
    z, y = family(name, np.random.default_rng(10 + FAMILIES.index(name)), np.float64)
    z, y = z[:12, :60], y[:12] % min(60, z.shape[1])  # mpmath is slow: a slice of each family
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
    want_loss, want_grad = reference_mp(z, y)
    loss_ulp, grad_ulp = ulps(loss, want_loss, np.float64), ulps(grad, want_grad, np.float64)
    with capsys.disabled():
        print(f"\n  [{fx.simd_tier()}] float64 {name:16s} loss {loss_ulp:5.2f} ulp  grad {grad_ulp:5.2f} ulp", end="")
    assert loss_ulp <= LOSS_ULP
    assert grad_ulp <= GRAD_ULP


@pytest.mark.parametrize("name", FAMILIES)
def test_row_functions_float32(name):
    z, _ = family(name, np.random.default_rng(20 + FAMILIES.index(name)), np.float32)
    z64 = z.astype(np.float64)
    m = z64.max(axis=1, keepdims=True)
    e = np.exp(z64 - m)
    k = z64.argmax(axis=1)
    e_k = e.copy()
    e_k[np.arange(len(z)), k] = 0.0
    l1p = np.log1p(e_k.sum(axis=1, keepdims=True))
    assert ulps(fx.logsumexp(z), (m + l1p)[:, 0], np.float32) <= 1.0
    assert ulps(fx.log_softmax(z), (z64 - m) - l1p, np.float32) <= 2.0
    assert ulps(fx.softmax(z), e / (1.0 + e_k.sum(axis=1, keepdims=True)), np.float32) <= 4.0


def test_confident_row_every_peer_gets_wrong():
    # The label leads by 40: lse - z_label is 0 in float32 (NumPy, PyTorch, TF and JAX all
    # return 0); the true loss is ~4.25e-18 and so is minus the label's gradient.
    z = np.array([[40.0, 0.0, 0.5, -1.0]], np.float32)
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=np.array([0]), logits=z)
    want = float(mpmath.log1p(mpmath.exp(-40) + mpmath.exp(-39.5) + mpmath.exp(-41)))
    assert loss[0] != 0.0 and ulps(loss, np.array([want]), np.float32) <= 1.0
    assert ulps(grad[:, :1], np.array([[-want]]), np.float32) <= 2.0


def test_float64_flat_wide_row(capsys):
    # 262,144 classes in float64 against mpmath: the loss, and the gradient at 64 entries.
    rng = np.random.default_rng(30)
    z = rng.normal(0, 0.01, (1, 262144))
    y = np.array([12345])
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
    mpmath.mp.dps = 40
    row = [mpmath.mpf(float(x)) for x in z[0]]
    lse = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in row))
    want_loss = float(lse - row[12345])
    picks = rng.choice(262144, 64, replace=False)
    want_grad = np.array([float(mpmath.exp(row[j] - lse)) for j in picks])
    loss_ulp = ulps(loss, np.array([want_loss]), np.float64)
    grad_ulp = ulps(grad[0, picks], want_grad - (picks == 12345), np.float64)
    with capsys.disabled():
        print(f"\n  [{fx.simd_tier()}] float64 flat-wide        loss {loss_ulp:5.2f} ulp  grad {grad_ulp:5.2f} ulp", end="")
    assert loss_ulp <= LOSS_ULP
    assert grad_ulp <= GRAD_ULP


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [10, 4096])
def test_masked_logits_give_exact_zeros_under_large_weights(dtype, width):
    # Rows whose mass is all on class 0: the others are -inf (masked) or 2000 below. Exactly,
    # the loss is log1p(e^-2000) and the gradient -e^-2000 at class 0, e^-2000 times the
    # weight at class 1: all 0 in either precision, however large the class weights (a kernel
    # that scales its exps up on the way must not leave tiny non-zero values there).
    z = np.full((3, width), -np.inf, dtype=dtype)
    z[:, 0], z[:, 1] = 0.0, -2000.0
    labels = np.zeros(3, dtype=np.int64)
    weight = np.full(width, 1.0e3, dtype=dtype)
    for options in ({}, {"weight": weight}, {"weight": weight, "reduction": "sum"}):
        loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z, **options)
        assert np.all(loss == 0), (options, loss)
        assert np.all(grad == 0), (options, grad[grad != 0])
    assert np.all(fx.softmax(z)[:, 1:] == 0)
    assert np.all(fx.logsumexp(z) == 0)


@pytest.mark.parametrize("width", [10, 1000, 40000])
def test_weighted_gradients_of_subnormal_probabilities(width):
    # Probabilities below float32's normal range (e^-88 to e^-100) lifted back into it by a
    # class weight of 1000: the gradient must be as accurate as elsewhere, not carry the few
    # bits a subnormal exp kept (an exp rounded to 2^-140 has 9 bits left). Reference:
    # float64 on the same float32 inputs.
    rng = np.random.default_rng(width)
    rows = 32  # (two tiles of sixteen narrow rows)
    z = np.zeros((rows, width), dtype=np.float32)
    z[:, 1:] = -rng.uniform(88.0, 100.0, (rows, width - 1)).astype(np.float32)
    z[:, 1] = -1.0  # (mass off the maximum that is not tiny: no row is summed again in f64)
    labels = np.zeros(rows, dtype=np.int64)
    weight = np.full(width, 1.0e3, dtype=np.float32)
    _, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z, weight=weight)
    z64 = z.astype(np.float64)
    p = np.exp(z64 - z64.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = 1.0e3 * p[:, 1:]
    assert ulps(grad[:, 1:], want, np.float32) <= GRAD_ULP
