"""Values of every function against the float64 references of conftest.py: ranks 1-4, every
axis (positive and negative), every dtype, every label dtype, odd layouts, broadcasting, edge
values, empty inputs, the 0-d label, the `dim` alias and the [N, C, H, W] layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import (
    DENSE_LABEL_DTYPES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    INT_DTYPES,
    LAYOUT_NAMES,
    as_compute,
    assert_close,
    dtype_id,
    grad_atol,
    layouts,
    lsm_atol,
    ref_dense,
    ref_log_softmax,
    ref_logsumexp,
    ref_softmax,
    ref_sparse,
    result_dtype,
)

import fastxent as fx

SPARSE = fx.sparse_softmax_cross_entropy_with_logits
SPARSE_GRAD = fx.sparse_softmax_cross_entropy_with_logits_and_grad
DENSE = fx.softmax_cross_entropy_with_logits
DENSE_V2 = fx.softmax_cross_entropy_with_logits_v2
DENSE_GRAD = fx.softmax_cross_entropy_with_logits_and_grad

SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 3, 2, 5), (20, 40)]


def _sid(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


AXES = [
    pytest.param(shape, axis, id=f"{_sid(shape)}-axis{axis}")
    for shape in SHAPES
    for axis in range(-len(shape), len(shape))
]
DTYPES = [pytest.param(dt, id=dtype_id(dt)) for dt in FLOAT_DTYPES]


def _logits(shape, dtype, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype(dtype)


def _batch(shape, axis):
    return tuple(n for d, n in enumerate(shape) if d != axis % len(shape))


def _sparse_labels(shape, axis, dtype=np.int64, seed=1):
    c = shape[axis]
    return np.random.default_rng(seed).integers(0, min(c, 127), _batch(shape, axis)).astype(dtype)


def _check_sparse(z, y, dtype, what="sparse", **kw):
    """Forward and fused results against the reference; the fused loss is the forward loss
    bit for bit."""
    loss = SPARSE(labels=y, logits=z, **kw)
    loss2, grad = SPARSE_GRAD(labels=y, logits=z, **kw)
    axis = kw.pop("axis", -1)
    want, want_grad = ref_sparse(np.asarray(z).astype(np.float64), np.asarray(y), axis, **kw)
    assert_close(loss, want, dtype, what)
    assert loss2.tobytes() == loss.tobytes() and loss2.dtype == loss.dtype, f"{what}: fused loss differs"
    assert_close(grad, want_grad, dtype, what + " grad", atol=grad_atol(1.0, dtype))
    return loss, grad


# --------------------------------------------------------------------------- ranks, axes, dtypes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", AXES)
def test_row_functions(shape, axis, dtype):
    z = _logits(shape, dtype)
    z64 = z.astype(np.float64)
    assert_close(fx.log_softmax(z, axis=axis), ref_log_softmax(z64, axis), dtype, "log_softmax", atol=lsm_atol(z, dtype))
    assert_close(fx.softmax(z, axis=axis), ref_softmax(z64, axis), dtype, "softmax")
    lse = fx.logsumexp(z, axis=axis)
    assert lse.shape == _batch(shape, axis)
    assert_close(lse, ref_logsumexp(z64, axis), dtype, "logsumexp")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", AXES)
def test_sparse_every_axis_and_dtype(shape, axis, dtype):
    z = _logits(shape, dtype)
    y = _sparse_labels(shape, axis)
    loss, grad = _check_sparse(z, y, dtype, axis=axis)
    assert loss.shape == y.shape and grad.shape == z.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", AXES)
def test_dense_every_axis_and_dtype(shape, axis, dtype):
    z = _logits(shape, dtype)
    # Not normalised: the gradient's sum(t) factor matters.
    p = np.random.default_rng(2).uniform(0, 1, shape)
    loss = DENSE(labels=p, logits=z, axis=axis)
    want, want_grad = ref_dense(z.astype(np.float64), as_compute(p, dtype), axis)
    assert loss.shape == _batch(shape, axis)
    assert_close(loss, want, dtype, "dense")
    for fn in (DENSE, DENSE_V2):
        assert fn(labels=p, logits=z, dim=axis).tobytes() == loss.tobytes(), "dim= alias"
    assert DENSE_V2(labels=p, logits=z, axis=axis).tobytes() == loss.tobytes(), "v2"
    loss2, grad = DENSE_GRAD(labels=p, logits=z, axis=axis)
    assert loss2.tobytes() == loss.tobytes()
    scale = np.abs(p).sum(axis=axis).max()
    assert_close(grad, want_grad, dtype, "dense grad", atol=grad_atol(scale, dtype))


# --------------------------------------------------------------------------- label dtypes

LABEL_SHAPES = [
    pytest.param((9, 6), -1, id="9x6-axis-1"),
    pytest.param((3, 100, 2), 1, id="3x100x2-axis1"),
    pytest.param((100,), 0, id="100-axis0-0d-label"),
    pytest.param((4, 2, 5), -3, id="4x2x5-axis-3"),
]


@pytest.mark.parametrize("label_dtype", [pytest.param(d, id=dtype_id(d)) for d in INT_DTYPES])
@pytest.mark.parametrize("shape,axis", LABEL_SHAPES)
def test_every_integer_label_dtype(shape, axis, label_dtype):
    z = _logits(shape, np.float32, seed=3)
    y = np.random.default_rng(4).integers(0, shape[axis], _batch(shape, axis))
    y.flat[0] = shape[axis] - 1  # the largest valid class
    loss, grad = _check_sparse(z, y.astype(label_dtype), np.float32, axis=axis)
    ref_loss, ref_grad = SPARSE_GRAD(labels=y, logits=z, axis=axis)
    assert loss.tobytes() == ref_loss.tobytes() and grad.tobytes() == ref_grad.tobytes()


@pytest.mark.parametrize("label_dtype", [pytest.param(d, id="labels-" + dtype_id(d)) for d in DENSE_LABEL_DTYPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dense_label_dtype(dtype, label_dtype):
    z = _logits((5, 6), dtype)
    p = np.random.default_rng(3).dirichlet(np.ones(6), 5).astype(label_dtype)
    loss = DENSE(labels=p, logits=z)
    loss2, grad = DENSE_GRAD(labels=p, logits=z)
    # Labels are converted to the compute type (float32, or float64 for float64 logits).
    want, want_grad = ref_dense(z.astype(np.float64), as_compute(p, dtype))
    assert_close(loss, want, dtype, "dense")
    assert loss2.tobytes() == loss.tobytes()
    assert_close(grad, want_grad, dtype, "grad", atol=grad_atol(1.0, dtype))


def test_labels_converted_not_truncated():
    # float64 labels with float32 logits: converted to float32, not read as raw bytes or ints.
    z = np.array([[0.0, 1.0, 2.0]], np.float32)
    p = np.array([[0.1, 0.2, 0.7]], np.float64)
    want, _ = ref_dense(z.astype(np.float64), p)
    assert_close(DENSE(labels=p, logits=z), want, np.float32)


# --------------------------------------------------------------------------- memory layouts

LAYOUTS = [pytest.param(n, id=n) for n in LAYOUT_NAMES]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_layouts(layout, dtype):
    shape = (4, 5, 6)
    z = _logits(shape, dtype)
    z64 = z.astype(np.float64)
    zl = layouts(z)[layout]
    rdt = result_dtype(zl)  # a list of numbers is float64
    for axis in (0, 1, -1):
        assert_close(fx.log_softmax(zl, axis=axis), ref_log_softmax(z64, axis), rdt, f"log_softmax {axis}", atol=lsm_atol(z, rdt))
        assert_close(fx.softmax(zl, axis=axis), ref_softmax(z64, axis), rdt, f"softmax {axis}")
        assert_close(fx.logsumexp(zl, axis=axis), ref_logsumexp(z64, axis), rdt, f"logsumexp {axis}")
        y = _sparse_labels(shape, axis, seed=axis + 5)
        yl = layouts(y.astype(np.int32))[layout]
        _check_sparse(zl, yl, rdt, f"sparse {axis}", axis=axis)
        p = np.random.default_rng(axis + 7).dirichlet(np.ones(shape[axis]), _batch(shape, axis))
        p = np.moveaxis(p, -1, axis)
        pl = layouts(p)[layout]
        want, want_grad = ref_dense(z64, as_compute(p, rdt), axis)
        assert_close(DENSE(labels=pl, logits=zl, axis=axis), want, rdt, f"dense {axis}")
        loss, grad = DENSE_GRAD(labels=pl, logits=zl, axis=axis)
        assert_close(loss, want, rdt, f"dense fused {axis}")
        assert_close(grad, want_grad, rdt, f"dense grad {axis}", atol=grad_atol(1.0, rdt))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weight_layouts(layout):
    z = _logits((6, 5), np.float64)
    y = np.arange(6) % 5
    w = np.array([0.5, 1.0, 2.0, 0.25, 3.0])
    wl = layouts(w)[layout]
    _check_sparse(z, y, np.float64, weight=wl, reduction="mean")
    p = np.random.default_rng(0).random((6, 5))
    want, want_grad = ref_dense(z, p, weight=w, reduction="sum")
    loss, grad = DENSE_GRAD(labels=p, logits=z, weight=wl, reduction="sum")
    assert_close(loss, want, np.float64)
    assert_close(grad, want_grad, np.float64, atol=1e-15)


@pytest.mark.parametrize("logits_layout,labels_layout", list(itertools.product(LAYOUT_NAMES, repeat=2)))
def test_mixed_layouts_sparse(logits_layout, labels_layout):
    shape = (3, 7, 4)
    z = _logits(shape, np.float32, seed=11)
    y = _sparse_labels(shape, 1, dtype=np.int16)
    zl, yl = layouts(z)[logits_layout], layouts(y)[labels_layout]
    _check_sparse(zl, yl, result_dtype(zl), axis=1)


def test_zero_stride_inputs():
    # Broadcast views (stride 0, read-only) are valid arrays too.
    row = _logits((1, 9), np.float32)
    z = np.broadcast_to(row, (5, 9))
    y = np.broadcast_to(np.array(3), (5,))
    p = np.broadcast_to(np.full((1, 9), 1 / 9), (5, 9))
    _check_sparse(z, y, np.float32)
    want, _ = ref_dense(np.array(z, np.float64), as_compute(np.array(p), np.float32))
    assert_close(DENSE(labels=p, logits=z), want, np.float32)
    assert_close(fx.log_softmax(z), ref_log_softmax(np.array(z, np.float64)), np.float32)


def test_array_likes():
    z = [[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]]
    y = [2, 0]
    want, _ = ref_sparse(np.array(z), np.array(y))

    class HasArray:
        def __init__(self, a):
            self._a = np.asarray(a)

        def __array__(self, dtype=None, copy=None):
            return self._a

    class HasInterface:
        def __init__(self, a) -> None:
            self._a = np.asarray(a)
            self.__array_interface__ = self._a.__array_interface__

    arr = np.array(z)

    class OnlyDLPack:
        def __dlpack__(self, **kw):
            return arr.__dlpack__(**kw)

        def __dlpack_device__(self):
            return arr.__dlpack_device__()

    for logits in (z, tuple(map(tuple, z)), HasArray(z), HasInterface(z), np.array(z), OnlyDLPack(), memoryview(arr)):
        for labels in (y, tuple(y), HasArray(y), HasInterface(np.array(y)), np.array(y, np.uint8)):
            got = SPARSE(labels=labels, logits=logits)
            assert_close(got, want, np.float64, f"{type(logits).__name__}/{type(labels).__name__}")
    p = [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]
    want_d, _ = ref_dense(np.array(z), np.array(p))
    for labels in (p, HasArray(p), HasInterface(p)):
        assert_close(DENSE(labels=labels, logits=HasArray(z)), want_d, np.float64)
    assert_close(fx.logsumexp([1.0, 2.0, 3.0]), ref_logsumexp(np.array([1.0, 2.0, 3.0])), np.float64)


# --------------------------------------------------------------------------- broadcasting

BROADCAST = [
    pytest.param((4, 6), (6,), -1, id="labels-row-over-batch"),
    pytest.param((4, 6), (1, 6), -1, id="labels-batch-dim-1"),
    pytest.param((4, 6), (4, 1), -1, id="labels-class-dim-1"),
    pytest.param((4, 6), (), -1, id="labels-0d"),
    pytest.param((4, 6), (3, 4, 6), -1, id="labels-rank-above-logits"),
    pytest.param((6, 4), (3, 6, 4), 0, id="labels-rank-above-logits-axis0"),
    pytest.param((6, 4), (3, 6, 4), -2, id="labels-rank-above-logits-axis-2"),
    pytest.param((2, 6, 3), (5, 1, 2, 6, 3), 1, id="labels-rank+2-axis1"),
    pytest.param((6,), (2, 6), -1, id="rank1-logits-batched-labels"),
    pytest.param((4, 1), (4, 6), -1, id="logits-class-dim-1"),
    pytest.param((1, 6), (4, 6), -1, id="logits-batch-dim-1"),
    pytest.param((2, 6, 3), (6, 1), 1, id="labels-lower-rank-axis1"),
    pytest.param((2, 6, 3), (2, 6, 3), -2, id="same-shape-axis-2"),
    pytest.param((2, 1, 3), (2, 5, 1), 1, id="both-broadcast-class-axis"),
]


@pytest.mark.parametrize("dtype", [pytest.param(np.dtype(np.float64), id="float64"), pytest.param(np.dtype(np.float32), id="float32")])
@pytest.mark.parametrize("logits_shape,labels_shape,axis", BROADCAST)
def test_dense_broadcasting(logits_shape, labels_shape, axis, dtype):
    z = _logits(logits_shape, dtype)
    p = np.random.default_rng(5).random(labels_shape)
    want, want_grad = ref_dense(z.astype(np.float64), as_compute(p, dtype), axis)
    got = DENSE(labels=p, logits=z, axis=axis)
    assert got.shape == want.shape
    assert_close(got, want, dtype)
    if np.broadcast_shapes(logits_shape, labels_shape) == logits_shape:
        # The fused twin's gradient has the logits' shape.
        loss, grad = DENSE_GRAD(labels=p, logits=z, axis=axis)
        assert grad.shape == logits_shape
        assert_close(loss, want, dtype)
        assert_close(grad, want_grad, dtype, atol=grad_atol(logits_shape[axis], dtype))
        for reduction in ("sum", "mean"):
            r_want, r_grad = ref_dense(z.astype(np.float64), as_compute(p, dtype), axis, reduction=reduction)
            loss, grad = DENSE_GRAD(labels=p, logits=z, axis=axis, reduction=reduction)
            assert_close(loss, r_want, dtype, reduction)
            assert_close(grad, r_grad, dtype, reduction, atol=grad_atol(logits_shape[axis], dtype))


# --------------------------------------------------------------------------- edge values

EDGE = [1e30, -1e30, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_values(dtype):
    rows = [list(r) for r in itertools.product(EDGE, repeat=2)]
    with np.errstate(over="ignore"):
        z = np.array([r + [0.0, 1.0] for r in rows], dtype=dtype)
    z64 = z.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for label in range(4):
            y = np.full(len(z), label, np.int32)
            loss, grad = _check_sparse(z, y, dtype, f"sparse label {label}")
        for p_row in ([0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.3, 0.7], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]):
            p = np.tile(np.array(p_row), (len(z), 1))
            want, want_grad = ref_dense(z64, as_compute(p, dtype))
            assert_close(DENSE(labels=p, logits=z), want, dtype, f"dense {p_row}")
            loss, grad = DENSE_GRAD(labels=p, logits=z)
            assert_close(loss, want, dtype, f"dense fused {p_row}")
            assert_close(grad, want_grad, dtype, f"dense grad {p_row}", atol=grad_atol(1.0, dtype))
        # (the logits reach 3.4e38: an absolute bound would mean nothing; rows here are exact)
        assert_close(fx.log_softmax(z), ref_log_softmax(z64), dtype, "log_softmax")
        assert_close(fx.softmax(z), ref_softmax(z64), dtype, "softmax")
        assert_close(fx.logsumexp(z), ref_logsumexp(z64), dtype, "logsumexp")
        for axis in (0,):  # the same values down columns
            assert_close(fx.log_softmax(z, axis=axis), ref_log_softmax(z64, axis), dtype, "log_softmax axis 0")
            assert_close(fx.logsumexp(z, axis=axis), ref_logsumexp(z64, axis), dtype, "logsumexp axis 0")


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_value_rules(dtype):
    """The numerics decisions, written out literally (not via the reference)."""
    inf, nan = np.inf, np.nan
    z = np.array(
        [
            [0.0, -inf, 2.0],  # 0: a masked logit
            [nan, 1.0, 2.0],  # 1: NaN
            [inf, 1.0, 2.0],  # 2: +inf
            [-inf, -inf, -inf],  # 3: all -inf
            [nan, inf, 0.0],  # 4: NaN and +inf
            [inf, inf, 0.0],  # 5: two +inf
            [-inf, 5.0, -inf],  # 6: one finite logit
        ],
        dtype,
    )
    lse = fx.logsumexp(z)
    assert np.isnan(lse[1]) and np.isnan(lse[4])
    assert lse[2] == inf and lse[5] == inf and lse[3] == -inf and lse[6] == 5.0
    for fn in (fx.log_softmax, fx.softmax):
        out = fn(z).astype(np.float64)
        assert np.isnan(out[1:6]).all(), fn.__name__
        assert not np.isnan(out[[0, 6]]).any(), fn.__name__
    ls = fx.log_softmax(z).astype(np.float64)
    assert ls[0, 1] == -inf
    assert ls[6].tolist() == [-inf, 0.0, -inf]
    assert fx.softmax(z).astype(np.float64)[6].tolist() == [0.0, 1.0, 0.0]
    # sparse: irregular rows NaN (loss and whole gradient row); a label on -inf: +inf loss.
    y = np.array([0, 1, 1, 0, 2, 2, 1])
    loss, grad = SPARSE_GRAD(labels=y, logits=z)
    loss, grad = loss.astype(np.float64), grad.astype(np.float64)
    assert np.isnan(loss[1:6]).all() and np.isnan(grad[1:6]).all()
    assert loss[6] == 0.0 and grad[6].tolist() == [0.0, 0.0, 0.0]
    assert np.isfinite(loss[0]) and np.isfinite(grad[0]).all()
    inf_loss = SPARSE(labels=np.array([1]), logits=z[:1]).astype(np.float64)
    assert inf_loss[0] == inf
    # dense: zero label on -inf contributes 0 (TF gives NaN); any mass on -inf gives +inf.
    p = np.array([[0.5, 0.0, 0.5]] * len(z))
    loss, grad = DENSE_GRAD(labels=p, logits=z)
    loss, grad = loss.astype(np.float64), grad.astype(np.float64)
    assert np.isfinite(loss[0]) and np.isfinite(grad[0]).all()
    np.testing.assert_allclose(loss[0], np.log1p(np.exp(-2.0)) + 1.0, rtol=4e-3 if dtype.itemsize == 2 else 1e-6)
    assert np.isnan(loss[1:6]).all() and np.isnan(grad[1:6]).all()
    assert loss[6] == inf  # mass 0.5 on each -inf of row 6
    # all-zero labels on an irregular row: still NaN (the row is NaN, whatever the labels)
    zero = DENSE(labels=np.zeros_like(p), logits=z).astype(np.float64)
    assert np.isnan(zero[1:6]).all() and zero[0] == 0.0 and zero[6] == 0.0
    masked = DENSE(labels=np.array([[0.5, 0.5, 0.0]]), logits=z[:1]).astype(np.float64)
    assert masked[0] == inf


def test_zero_label_on_minus_inf_is_zero_not_nan():
    # TF returns NaN here (0 * -inf); our rule: a term with y_j == 0 contributes 0.
    z = np.array([[0.0, -np.inf, 2.0]])
    p = np.array([[0.5, 0.0, 0.5]])
    got = DENSE(labels=p, logits=z)
    want = -(0.5 * (0 - np.log(1 + np.exp(2))) + 0.5 * (2 - np.log(1 + np.exp(2))))
    np.testing.assert_allclose(got, [want], rtol=1e-14)
    loss, grad = DENSE_GRAD(labels=p, logits=z)
    np.testing.assert_allclose(grad[0, [0, 2]], [1 / (1 + np.exp(2)) - 0.5, np.exp(2) / (1 + np.exp(2)) - 0.5], rtol=1e-14)
    assert grad[0, 1] == 0.0


# --------------------------------------------------------------------------- empty inputs

EMPTY = [
    pytest.param("sparse", (0, 5), (0,), -1, (0,), id="sparse-0x5"),
    pytest.param("sparse", (2, 0, 3), (2, 0), -1, (2, 0), id="sparse-2x0x3"),
    pytest.param("sparse", (0, 4, 3), (0, 3), 1, (0, 3), id="sparse-0x4x3-axis1"),
    pytest.param("sparse", (0, 0), (0,), -1, (0,), id="sparse-0x0-no-classes"),
    pytest.param("dense", (0, 5), (0, 5), -1, (0,), id="dense-0x5"),
    pytest.param("dense", (0, 5), (5,), -1, (0,), id="dense-0x5-broadcast-labels"),
    pytest.param("dense", (3, 0, 4), (3, 0, 4), 0, (0, 4), id="dense-3x0x4-axis0"),
    pytest.param("dense", (2, 3), (0, 2, 3), -1, (0, 2), id="dense-empty-from-labels"),
    pytest.param("dense", (0, 0), (0, 0), -1, (0,), id="dense-0x0-no-classes"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,logits_shape,labels_shape,axis,loss_shape", EMPTY)
def test_empty_losses(kind, logits_shape, labels_shape, axis, loss_shape, dtype):
    z = np.zeros(logits_shape, dtype)
    y = np.zeros(labels_shape, np.int64 if kind == "sparse" else np.float32)
    fwd, fused = (SPARSE, SPARSE_GRAD) if kind == "sparse" else (DENSE, DENSE_GRAD)
    loss = fwd(labels=y, logits=z, axis=axis)
    assert loss.shape == loss_shape and loss.dtype == dtype
    if kind == "sparse" or np.broadcast_shapes(logits_shape, labels_shape) == logits_shape:
        loss, grad = fused(labels=y, logits=z, axis=axis)
        assert loss.shape == loss_shape and loss.dtype == dtype
        assert grad.shape == logits_shape and grad.dtype == dtype
    for reduction, want in (("sum", 0.0), ("mean", np.nan)):
        r = fwd(labels=y, logits=z, axis=axis, reduction=reduction)
        assert r.shape == () and r.dtype == dtype
        np.testing.assert_equal(r.astype(np.float64), want, err_msg=reduction)
        assert not np.signbit(r), f"{reduction} of nothing is +0 (or NaN), not -0"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,axis",
    [
        pytest.param(s, a, id=f"{_sid(s)}-axis{a}")
        for s, a in [((3, 0, 4), 0), ((3, 0, 4), 1), ((3, 0, 4), -1), ((0, 4), -1), ((0, 4), 0), ((0,), 0)]
    ],
)
def test_empty_row_functions(shape, axis, dtype):
    z = np.zeros(shape, dtype)
    for fn in (fx.log_softmax, fx.softmax):
        out = fn(z, axis=axis)
        assert out.shape == shape and out.dtype == dtype
    lse = fx.logsumexp(z, axis=axis)
    assert lse.shape == _batch(shape, axis) and lse.dtype == dtype
    assert_close(lse, ref_logsumexp(z.astype(np.float64), axis), dtype)  # an empty row: -inf


# --------------------------------------------------------------------------- 0-d labels, dim, image layout


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank1_logits_with_0d_label(dtype):
    z = np.array([1.0, 2.0, 0.5, -3.0], dtype)
    z64 = z.astype(np.float64)
    for label in (np.array(1), 2, np.int8(3), np.uint64(0), np.array(1, np.uint16)):
        loss = SPARSE(labels=label, logits=z)
        assert loss.shape == () and loss.dtype == dtype
        assert_close(loss, ref_sparse(z64, np.array(label))[0], dtype, f"label {label!r}")
        loss2, grad = SPARSE_GRAD(labels=label, logits=z)
        assert loss2.shape == () and grad.shape == (4,) and grad.dtype == dtype
        assert loss2.tobytes() == loss.tobytes()
        assert_close(grad, ref_sparse(z64, np.array(label))[1], dtype, atol=grad_atol(1.0, dtype))
    p = np.array([0.1, 0.2, 0.3, 0.4])
    loss = DENSE(labels=p, logits=z)
    assert loss.shape == () and loss.dtype == dtype
    assert_close(loss, ref_dense(z64, as_compute(p, dtype))[0], dtype)


@pytest.mark.parametrize("fn", [DENSE, DENSE_V2, DENSE_GRAD], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dim", range(-3, 3))
def test_dim_alias(fn, dim):
    z = _logits((3, 4, 5), np.float32)
    p = np.random.default_rng(6).random((3, 4, 5))

    def as_bytes(r):
        return b"".join(x.tobytes() for x in (r if isinstance(r, tuple) else (r,)))

    by_axis = as_bytes(fn(labels=p, logits=z, axis=dim))
    assert as_bytes(fn(labels=p, logits=z, dim=dim)) == by_axis
    assert as_bytes(fn(labels=p, logits=z, axis=dim, dim=dim)) == by_axis
    # The same axis counted from the other end agrees with dim.
    assert as_bytes(fn(labels=p, logits=z, axis=dim - 3 if dim >= 0 else dim + 3, dim=dim)) == by_axis
    assert_close(DENSE(labels=p, logits=z, dim=dim), ref_dense(z.astype(np.float64), as_compute(p, np.float32), dim)[0], np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "options",
    [{}, {"reduction": "mean"}, {"weight": "w", "reduction": "mean", "ignore_index": 3}, {"label_smoothing": 0.1, "reduction": "sum"}],
    ids=["plain", "mean", "weight-ignore-mean", "smoothing-sum"],
)
def test_pytorch_image_layout(options, dtype):
    # PyTorch's [N, C, H, W] with labels [N, H, W]: class axis 1.
    z = _logits((2, 5, 4, 3), dtype)
    y = _sparse_labels((2, 5, 4, 3), 1)
    assert y.shape == (2, 4, 3)
    kw = dict(options)
    if kw.get("weight") == "w":
        kw["weight"] = np.array([1.0, 0.5, 2.0, 1.5, 0.25])
    loss, grad = _check_sparse(z, y, dtype, axis=1, **kw)
    assert grad.shape == z.shape
    if not options:
        # the same as moving the class axis last by hand
        moved = SPARSE(labels=y, logits=np.ascontiguousarray(np.moveaxis(z, 1, -1)))
        assert_close(loss, moved.astype(np.float64), dtype)


# --------------------------------------------------------------------------- options

OPTIONS = list(itertools.product(["none", "sum", "mean"], [0.0, 0.2], [False, True]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ignore", [None, -100, 2], ids=["no-ignore", "ignore-100", "ignore-2"])
@pytest.mark.parametrize(
    "reduction,smoothing,weighted", OPTIONS, ids=[f"{r}-ls{s}-{'w' if w else 'now'}" for r, s, w in OPTIONS]
)
def test_sparse_options(reduction, smoothing, weighted, ignore, dtype):
    # 37 rows: two tiles of 16 narrow rows, the first without an ignored label (-100 case),
    # the second with some, and 5 rows taken one by one.
    rng = np.random.default_rng(7)
    z = _logits((37, 5), dtype, seed=8)
    y = rng.integers(0, 5, 37)
    if ignore == -100:
        y[16::3] = -100
    kw = dict(reduction=reduction, label_smoothing=smoothing, ignore_index=ignore)
    if weighted:
        kw["weight"] = rng.uniform(0.1, 2.0, 5)
    loss, grad = _check_sparse(z, y, dtype, **kw)
    assert loss.shape == ((37,) if reduction == "none" else ())
    if ignore is not None:
        assert np.all(grad[y == ignore] == 0)
        if reduction == "none":
            assert np.all(loss[y == ignore] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "reduction,smoothing,weighted", OPTIONS, ids=[f"{r}-ls{s}-{'w' if w else 'now'}" for r, s, w in OPTIONS]
)
def test_dense_options(reduction, smoothing, weighted, dtype):
    rng = np.random.default_rng(9)
    z = _logits((11, 5), dtype, seed=10)
    p = rng.uniform(0, 1, (11, 5))
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = rng.uniform(0.1, 2.0, 5)
    want, want_grad = ref_dense(z.astype(np.float64), as_compute(p, dtype), **kw)
    loss = DENSE(labels=p, logits=z, **kw)
    assert_close(loss, want, dtype)
    loss2, grad = DENSE_GRAD(labels=p, logits=z, **kw)
    assert loss2.tobytes() == loss.tobytes()
    assert_close(grad, want_grad, dtype, atol=grad_atol(10.0, dtype))


def test_ignore_index_with_unsigned_labels():
    z = _logits((6, 4), np.float32)
    y = np.array([0, 255, 3, 255, 1, 2], np.uint8)
    loss, grad = _check_sparse(z, y, np.float32, ignore_index=255, reduction="mean")
    assert np.all(grad[y == 255] == 0)


def test_all_rows_ignored():
    z = _logits((3, 4), np.float64)
    y = np.full(3, -1)
    loss, grad = SPARSE_GRAD(labels=y, logits=z, ignore_index=-1, reduction="mean")
    assert np.isnan(loss) and np.all(grad == 0)
    assert SPARSE(labels=y, logits=z, ignore_index=-1, reduction="sum") == 0
    assert np.all(SPARSE(labels=y, logits=z, ignore_index=-1) == 0)


def test_reduction_accumulates_in_float64_for_half_types():
    # 65536 rows of the same loss: a bf16/f16 running sum would stall; the float64 sum does not.
    z = np.tile(np.array([[0.0, 1.0, 2.0, 3.0]]), (65536, 1))
    y = np.zeros(65536, np.int64)
    for dtype in HALF_DTYPES:
        zz = z.astype(dtype)
        want_sum, _ = ref_sparse(zz.astype(np.float64), y, reduction="sum")
        want_mean, _ = ref_sparse(zz.astype(np.float64), y, reduction="mean")
        assert_close(SPARSE(labels=y, logits=zz, reduction="sum"), want_sum, dtype, "sum")
        assert_close(SPARSE(labels=y, logits=zz, reduction="mean"), want_mean, dtype, "mean")


# --------------------------------------------------------------------------- row shapes


@pytest.mark.parametrize("classes", [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129, 1000, 70000])
@pytest.mark.parametrize("rows", [1, 15, 16, 17, 100])
def test_row_widths_and_counts(rows, classes):
    # Narrow rows go sixteen at a time, wide rows are split across threads: every boundary.
    if rows * classes > 2_000_000:
        rows = 3
    z = _logits((rows, classes), np.float32, seed=rows * classes)
    y = np.arange(rows) % classes
    _check_sparse(z, y, np.float32)
    assert_close(fx.logsumexp(z), ref_logsumexp(z.astype(np.float64)), np.float32)
