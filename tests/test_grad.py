"""The fused loss-and-gradient functions and the PyTorch options (issue 3).

Gradients are checked against central finite differences of the float64 forward loss, for
every option combination, dense and sparse, on several axes; the loss of `*_and_grad` must be
the forward loss bit for bit.
"""

from __future__ import annotations

import itertools
import zlib

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx
from conftest import assert_close, ref_dense, ref_sparse

REDUCTIONS = ["none", "sum", "mean"]
SMOOTHING = [0.0, 0.3]
AXES = [-1, 0, 1]


def _sum_loss(fn, z, **kw):
    return float(np.sum(fn(logits=z, **kw), dtype=np.float64))


def _finite_differences(fn, z, h=1e-6, **kw):
    grad = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (_sum_loss(fn, up, **kw) - _sum_loss(fn, down, **kw)) / (2 * h)
    return grad


def _moved(shape, axis):
    """Logits shape with the class axis (size 5) at `axis` of a rank-3 array."""
    dims = [3, 4]
    dims.insert(axis % 3, 5)
    return tuple(dims)


@pytest.mark.parametrize(
    "reduction,smoothing,weighted,ignore,axis",
    list(itertools.product(REDUCTIONS, SMOOTHING, [False, True], [False, True], AXES)),
)
def test_sparse_gradient_matches_finite_differences(reduction, smoothing, weighted, ignore, axis):
    rng = np.random.default_rng(zlib.crc32(repr((reduction, smoothing, weighted, ignore, axis)).encode()))
    z = rng.normal(0, 2, _moved(None, axis))
    batch = tuple(n for d, n in enumerate(z.shape) if d != axis % 3)
    labels = rng.integers(0, 5, batch)
    kw: dict = dict(labels=labels, axis=axis, reduction=reduction, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = rng.uniform(0.2, 2.0, 5)
    if ignore:
        labels.flat[::3] = -100
        kw["ignore_index"] = -100
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(logits=z, **kw)
    want = _finite_differences(fx.sparse_softmax_cross_entropy_with_logits, z, **kw)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)  # FD error ~ eps * |loss| / h
    assert grad.shape == z.shape and grad.dtype == z.dtype
    if ignore:
        ignored = np.expand_dims(labels == -100, axis % 3)
        assert np.all(np.where(ignored, grad, 0.0) == 0.0)


@pytest.mark.parametrize(
    "reduction,smoothing,weighted,axis",
    list(itertools.product(REDUCTIONS, SMOOTHING, [False, True], AXES)),
)
def test_dense_gradient_matches_finite_differences(reduction, smoothing, weighted, axis):
    rng = np.random.default_rng(zlib.crc32(repr((reduction, smoothing, weighted, axis)).encode()))
    z = rng.normal(0, 2, _moved(None, axis))
    labels = rng.uniform(0, 1, z.shape)  # not normalised: the true derivative differs from TF's
    kw: dict = dict(labels=labels, axis=axis, reduction=reduction, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = rng.uniform(0.2, 2.0, 5)
    loss, grad = fx.softmax_cross_entropy_with_logits_and_grad(logits=z, **kw)
    want = _finite_differences(fx.softmax_cross_entropy_with_logits, z, **kw)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)  # FD error ~ eps * |loss| / h


def test_dense_gradient_equals_tf_rule_for_distributions():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6, 9))
    p = rng.dirichlet(np.ones(9), size=6)
    _, grad = fx.softmax_cross_entropy_with_logits_and_grad(labels=p, logits=z)
    softmax = np.exp(z - z.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(grad, softmax - p, rtol=1e-12, atol=1e-15)


SPARSE_CASES = [
    dict(),
    dict(reduction="mean", label_smoothing=0.2),
    dict(reduction="sum", weight=np.linspace(0.5, 2, 7)),
    dict(reduction="mean", ignore_index=2, weight=np.linspace(0.5, 2, 7)),
    dict(weight=np.r_[0.0, np.linspace(0.5, 2, 6)]),  # (the tiles' losses times the weights)
]


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(SPARSE_CASES)))
def test_fused_loss_is_the_forward_loss_bit_for_bit(dtype, case):
    rng = np.random.default_rng(case)
    z = rng.normal(0, 3, (37, 7)).astype(dtype)
    y = rng.integers(0, 7, 37)
    kw = SPARSE_CASES[case]
    forward = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, **kw)
    fused, _ = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, **kw)
    assert forward.dtype == fused.dtype == np.dtype(dtype)
    assert forward.tobytes() == fused.tobytes()
    p = rng.dirichlet(np.ones(7), size=37).astype(dtype)
    kw = {k: v for k, v in kw.items() if k != "ignore_index"}
    forward = fx.softmax_cross_entropy_with_logits(labels=p, logits=z, **kw)
    fused, _ = fx.softmax_cross_entropy_with_logits_and_grad(labels=p, logits=z, **kw)
    assert forward.tobytes() == fused.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("options", ["plain", "weighted", "smoothed"])
@pytest.mark.parametrize("classes", [10, 64, 65, 128])
def test_tiles_of_rows_that_need_the_row_function(classes, options, dtype):
    # Narrow rows go sixteen at a time, and a call without smoothing takes a tile's losses
    # straight from its statistics (times the label's weight) unless a row in it needs more
    # (NaN, inf, a row of -inf, statistics to refine): the tile is then left to the row
    # function. Ignored labels do not. Each kind of row, at several places in its tile,
    # against the float64 reference and the fused loss. Weighted: a class of weight 0, the
    # label of rows where its logit is -inf (a loss of 0, not NaN). Smoothed (and weighted):
    # the tile's statistics take each row's weighted gap (rows of up to 16 classes).
    rng = np.random.default_rng(classes)
    rows = 16 * 8 + 5
    z = rng.normal(0, 3, (rows, classes)).astype(dtype)
    y = rng.integers(0, classes, rows)
    special = {
        "nan": [3, 16, 47],
        "inf": [17, 63],
        "all -inf": [34, 127],
        # e^-80 below the maximum: a mass of 1e-34 to 2e-33, summed again in f64.
        "confident": [0, 50, 79, 128],
        "ignored": [5, 15, 64, 65, 66, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111],
    }
    z[special["nan"], 1] = np.nan
    z[special["inf"], 0] = np.inf
    z[special["all -inf"]] = -np.inf
    for r in special["confident"]:
        z[r] = -80.0
        z[r, y[r]] = 0.0
    y[special["ignored"]] = -100
    z[97, 3] = np.nan  # (ignored: it needs nothing)
    kw: dict = dict(ignore_index=-100)
    if options != "plain":
        kw["weight"] = rng.uniform(0.5, 2.0, classes).astype(dtype)
        kw["weight"][2] = 0.0
        weightless = [81, 86, 95, 130]  # (three in a tile of otherwise plain rows)
        y[weightless] = 2
        z[weightless, 2] = -np.inf
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, **kw)
    want, _ = ref_sparse(z, y, **kw)
    assert_close(loss, want, dtype)
    assert 0 < loss[special["confident"]].min() and np.all(loss[special["ignored"]] == 0)
    if options == "weighted":
        assert np.all(loss[weightless] == 0)
    if options == "smoothed":
        kw["label_smoothing"] = 0.1
        loss = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, **kw)
        want, _ = ref_sparse(z, y, **kw)
        assert_close(loss, want, dtype)
        assert np.all(np.isfinite(loss[weightless]))
    fused, _ = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, **kw)
    assert loss.tobytes() == fused.tobytes()
    # The same rows not one after another (read through a copy of each tile).
    strided = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=np.asfortranarray(z), **kw)
    assert loss.tobytes() == strided.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16], ids=str)
@pytest.mark.parametrize("options", ["plain", "weighted"])
@pytest.mark.parametrize("classes", [3, 10, 16, 17])
def test_dense_tiles_of_rows_that_need_the_row_function(classes, dtype, options):
    # Narrow dense rows take the sums of their targets (the labels; with weights and
    # smoothing, the labels mapped) from a tile's statistics, and a call without outputs its
    # losses straight from them unless a regular row needs its statistics refined. Special
    # rows at several places in their tiles (the last one partial), against float64, the
    # fused loss bit for bit, and the Fortran-order layout's loss and gradient bit for bit (a
    # copied tile).
    rng = np.random.default_rng(classes)
    rows = 16 * 8 + 5
    z = rng.normal(0, 3, (rows, classes))
    p = rng.dirichlet(np.ones(classes), rows)
    p[::7] *= rng.uniform(0.5, 2.0, (len(p[::7]), 1))  # not distributions
    p[[2, 40]] = -p[[2, 40]]  # negative labels
    z[[3, 16, 47], 1] = np.nan
    z[[17, 63], 0] = np.inf
    z[[34, 127]] = -np.inf
    z[[9, 90], classes - 1] = -np.inf  # a masked logit: no mass on it, then some
    p[9, classes - 1], p[90, classes - 1] = 0.0, 0.25
    for r in [0, 50, 79, 128]:  # confident, labelled at the maximum: a loss of ~1e-43,
        z[r] = -100.0  # its exps subnormal: the rest summed again in f64
        z[r, r % classes] = 0.0
        p[r] = np.eye(classes)[r % classes]
    infinite = [20, 131]  # an infinite label at the maximum: NaN loss and gradient, anywhere
    z[infinite, 0], p[infinite, 0] = 50.0, np.inf
    z, p = z.astype(dtype), p.astype(dtype)
    kw = {} if options == "plain" else dict(weight=rng.uniform(0.5, 2.0, classes), label_smoothing=0.1)
    loss = fx.softmax_cross_entropy_with_logits(labels=p, logits=z, **kw)
    want, _ = ref_dense(z, p, **kw)
    finite = np.setdiff1d(np.arange(rows), infinite)
    assert_close(loss[finite], want[finite], dtype)
    # (Smoothing puts mass on every class: row 9's masked logit too.)
    assert np.isinf(loss[90]) and np.isfinite(loss[9]) == (options == "plain")
    assert np.isnan(loss[[3, 17, 34, *infinite]]).all()
    fused, grad = fx.softmax_cross_entropy_with_logits_and_grad(labels=p, logits=z, **kw)
    assert loss.tobytes() == fused.tobytes()
    assert np.isnan(grad[infinite].astype(np.float32)).all()
    fortran = fx.softmax_cross_entropy_with_logits_and_grad(
        labels=np.asfortranarray(p), logits=np.asfortranarray(z), **kw
    )
    assert loss.tobytes() == fortran[0].tobytes() and grad.tobytes() == np.ascontiguousarray(fortran[1]).tobytes()


def test_pytorch_mean_semantics():
    # Reference computed here in float64 from the definition in PyTorch's docs.
    rng = np.random.default_rng(5)
    z = rng.normal(size=(8, 4))
    y = np.array([0, 1, 2, 3, -1, 1, -1, 0])
    w = np.array([1.0, 2.0, 0.5, 3.0])
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    keep = y != -1
    nll = -logp[np.arange(8), np.where(keep, y, 0)] * w[np.where(keep, y, 0)]
    smooth = -(logp * w).sum(1)
    eps = 0.25
    per_row = np.where(keep, (1 - eps) * nll + eps / 4 * smooth, 0.0)
    want_mean = per_row.sum() / w[y[keep]].sum()
    got = fx.sparse_softmax_cross_entropy_with_logits(
        labels=y, logits=z, reduction="mean", weight=w, ignore_index=-1, label_smoothing=eps
    )
    assert got.shape == ()
    np.testing.assert_allclose(got, want_mean, rtol=1e-13)
    none = fx.sparse_softmax_cross_entropy_with_logits(
        labels=y, logits=z, weight=w, ignore_index=-1, label_smoothing=eps
    )
    np.testing.assert_allclose(none, per_row, rtol=1e-13, atol=1e-300)
    # Dense "mean" divides by the number of rows, whatever the weights.
    p = rng.dirichlet(np.ones(4), size=8)
    dense_mean = fx.softmax_cross_entropy_with_logits(labels=p, logits=z, reduction="mean", weight=w)
    np.testing.assert_allclose(dense_mean, -(p * w * logp).sum() / 8, rtol=1e-13)


def test_all_rows_ignored_mean_is_nan_with_zero_gradient():
    z = np.random.default_rng(0).normal(size=(4, 3))
    y = np.full(4, -100)
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(
        labels=y, logits=z, reduction="mean", ignore_index=-100
    )
    assert np.isnan(loss)
    assert np.all(grad == 0)


def test_mean_over_zero_weight_is_nan_even_with_smoothing():
    # The labels' classes weigh 0, so the mean's divisor is 0; smoothing still puts loss on
    # the other classes. PyTorch: NaN (0/0 on the label term), not inf.
    z = np.random.default_rng(1).normal(size=(4, 3))
    y = np.array([0, 0, 1, 1])
    w = np.array([0.0, 0.0, 2.0])
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(
        labels=y, logits=z, reduction="mean", weight=w, label_smoothing=0.3
    )
    assert np.isnan(loss)
    assert np.all(np.isnan(grad))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_reductions_accumulate_in_float64(dtype):
    # 2**16 rows of the same loss (~0.44): a half-type running sum would stall near 1024
    # (float16) or far earlier (bfloat16), far below the total of ~28,800.
    rows = 1 << 16
    z = np.tile(np.array([[1.0, 0.0, -1.0, 0.5]], dtype=dtype), (rows, 1))
    y = np.zeros(rows, dtype=np.int64)
    per_row = float(fx.sparse_softmax_cross_entropy_with_logits(labels=y[:1], logits=z[:1])[0])
    total = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, reduction="sum")
    mean = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, reduction="mean")
    z64 = z[:1].astype(np.float64)
    exact_row = float(np.log(np.exp(z64).sum()) - z64[0, 0])
    # The float64 total is then rounded once to the half type.
    assert total.dtype == np.dtype(dtype)
    assert float(total) == float(np.array(float(np.float32(exact_row)) * rows).astype(dtype))
    assert float(mean) == float(np.array(np.float32(exact_row)).astype(dtype))
    assert abs(per_row - exact_row) <= abs(exact_row) * 2**-7


def test_numpy_training_step_learns():
    # Softmax regression on three separable blobs: the loss must fall by a large factor.
    rng = np.random.default_rng(0)
    centers = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = rng.integers(0, 3, 600)
    x = (centers[y] + rng.normal(size=(600, 2))).astype(np.float32)
    w = np.zeros((2, 3), np.float32)
    b = np.zeros(3, np.float32)
    losses = []
    for _ in range(100):
        loss, g = fx.sparse_softmax_cross_entropy_with_logits_and_grad(
            labels=y, logits=x @ w + b, reduction="mean"
        )
        w -= 0.5 * x.T @ g
        b -= 0.5 * g.sum(axis=0)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(np.log(3), rel=1e-6)
    assert losses[-1] < 0.1 * losses[0]
