"""Values of every function against the float64 references of conftest.py: ranks 1-4, every
axis, every dtype, odd layouts, broadcasting, edge values, empty inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import (
    FLOAT_DTYPES,
    INT_DTYPES,
    assert_close,
    layouts,
    ref_dense,
    ref_log_softmax,
    ref_logsumexp,
    ref_softmax,
    ref_sparse,
)

import fastxent as fx

SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 3, 2, 5), (20, 40)]
AXES = [(shape, axis) for shape in SHAPES for axis in range(-len(shape), len(shape))]


def _logits(shape, dtype, seed=0, scale=3.0):
    z = np.random.default_rng(seed).normal(0, scale, shape)
    return z.astype(dtype)


def _sparse_labels(shape, axis, dtype=np.int64, seed=1):
    batch = tuple(n for d, n in enumerate(shape) if d != axis % len(shape))
    c = shape[axis]
    return np.random.default_rng(seed).integers(0, min(c, 127), batch).astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", AXES, ids=str)
def test_row_functions(shape, axis, dtype):
    z = _logits(shape, dtype)
    z64 = z.astype(np.float64)
    assert_close(fx.log_softmax(z, axis=axis), ref_log_softmax(z64, axis), dtype, "log_softmax")
    assert_close(fx.softmax(z, axis=axis), ref_softmax(z64, axis), dtype, "softmax")
    assert_close(fx.logsumexp(z, axis=axis), ref_logsumexp(z64, axis), dtype, "logsumexp")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", AXES, ids=str)
def test_sparse_every_axis_and_dtype(shape, axis, dtype):
    z = _logits(shape, dtype)
    y = _sparse_labels(shape, axis)
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, axis=axis)
    want, _ = ref_sparse(z.astype(np.float64), y, axis)
    assert loss.shape == y.shape
    assert_close(loss, want, dtype, "sparse")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,axis", AXES, ids=str)
def test_dense_every_axis_and_dtype(shape, axis, dtype):
    z = _logits(shape, dtype)
    p = np.random.default_rng(2).random(shape)
    p /= p.sum(axis=axis, keepdims=True)
    loss = fx.softmax_cross_entropy_with_logits(labels=p, logits=z, axis=axis)
    want, _ = ref_dense(z.astype(np.float64), p, axis)
    assert_close(loss, want, dtype, "dense")
    same = fx.softmax_cross_entropy_with_logits_v2(labels=p, logits=z, dim=axis)
    assert same.tobytes() == loss.tobytes()


@pytest.mark.parametrize("label_dtype", INT_DTYPES, ids=str)
def test_every_integer_label_dtype(label_dtype):
    z = _logits((9, 6), np.float32)
    y = np.arange(9) % 6
    want = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
    got = fx.sparse_softmax_cross_entropy_with_logits(labels=y.astype(label_dtype), logits=z)
    assert got.tobytes() == want.tobytes()
    ref, _ = ref_sparse(z.astype(np.float64), y)
    assert_close(got, ref, np.float32)


@pytest.mark.parametrize("label_dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_every_dense_label_dtype(dtype, label_dtype):
    z = _logits((5, 6), dtype)
    p = np.random.default_rng(3).dirichlet(np.ones(6), 5).astype(label_dtype)
    got = fx.softmax_cross_entropy_with_logits(labels=p, logits=z)
    want, _ = ref_dense(z.astype(np.float64), p.astype(np.float64))
    # Labels are converted to the compute type (float32, or float64 for float64 logits).
    compute = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    want_c, _ = ref_dense(z.astype(np.float64), p.astype(compute).astype(np.float64))
    assert_close(got, want_c, dtype)
    assert np.allclose(got.astype(np.float64), want, rtol=1e-2)


@pytest.mark.parametrize("name", ["c", "fortran", "readonly", "negative", "strided", "bigendian", "unaligned"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
def test_memory_layouts(name, dtype):
    z = _logits((6, 9), dtype)
    y = _sparse_labels((6, 9), -1)
    p = np.random.default_rng(4).dirichlet(np.ones(9), 6)
    zl, yl, pl = layouts(z)[name], layouts(y)[name], layouts(p)[name]
    assert_close(fx.sparse_softmax_cross_entropy_with_logits(labels=yl, logits=zl), ref_sparse(z, y)[0], dtype)
    assert_close(fx.softmax_cross_entropy_with_logits(labels=pl, logits=zl), ref_dense(z, p)[0], dtype)
    for axis in (0, 1):
        assert_close(fx.log_softmax(zl, axis=axis), ref_log_softmax(z.astype(np.float64), axis), dtype)
        assert_close(fx.logsumexp(zl, axis=axis), ref_logsumexp(z.astype(np.float64), axis), dtype)


def test_array_likes():
    z = [[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]]
    y = [2, 0]
    want, _ = ref_sparse(np.array(z), np.array(y))

    class HasArray:
        def __array__(self, dtype=None, copy=None):
            return np.array(z)

    class HasInterface:
        def __init__(self) -> None:
            self._a = np.array(z)
            self.__array_interface__ = self._a.__array_interface__

    for logits in (z, HasArray(), HasInterface(), np.array(z)):
        assert_close(fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits), want, np.float64)
    # DLPack: an object exposing only __dlpack__ (a NumPy array's own, wrapped).
    arr = np.array(z)

    class OnlyDLPack:
        def __dlpack__(self, **kw):
            return arr.__dlpack__(**kw)

        def __dlpack_device__(self):
            return arr.__dlpack_device__()

    assert_close(fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=OnlyDLPack()), want, np.float64)


@pytest.mark.parametrize(
    "logits_shape,labels_shape,axis",
    [((4, 6), (6,), -1), ((4, 6), (1, 6), -1), ((4, 6), (4, 1), -1), ((4, 6), (3, 4, 6), -1), ((6,), (2, 6), -1),
     ((2, 6, 3), (6, 1), 1), ((2, 6, 3), (2, 6, 3), -2)],
)
def test_dense_broadcasting(logits_shape, labels_shape, axis):
    z = _logits(logits_shape, np.float64)
    p = np.random.default_rng(5).random(labels_shape)
    got = fx.softmax_cross_entropy_with_logits(labels=p, logits=z, axis=axis)
    want, _ = ref_dense(z, p, axis)
    assert got.shape == want.shape
    assert_close(got, want, np.float64)


EDGE = [1e30, -1e30, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan, 0.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
def test_edge_values(dtype):
    rows = [list(r) for r in itertools.product(EDGE, repeat=2)]
    z = np.array([r + [0.0, 1.0] for r in rows], dtype=dtype)
    z64 = z.astype(np.float64)
    for label in range(4):
        y = np.full(len(z), label)
        with np.errstate(over="ignore"):
            assert_close(fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z), ref_sparse(z64, y)[0], dtype)
    p = np.tile(np.array([0.0, 0.5, 0.5, 0.0]), (len(z), 1))
    assert_close(fx.softmax_cross_entropy_with_logits(labels=p, logits=z), ref_dense(z64, p)[0], dtype)
    assert_close(fx.log_softmax(z), ref_log_softmax(z64), dtype)
    assert_close(fx.logsumexp(z), ref_logsumexp(z64), dtype)


def test_zero_label_on_minus_inf_is_zero_not_nan():
    # TF returns NaN here (0 * -inf); our rule: a term with y_j == 0 contributes 0.
    z = np.array([[0.0, -np.inf, 2.0]])
    p = np.array([[0.5, 0.0, 0.5]])
    got = fx.softmax_cross_entropy_with_logits(labels=p, logits=z)
    want = -(0.5 * (0 - np.log(1 + np.exp(2))) + 0.5 * (2 - np.log(1 + np.exp(2))))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [want], rtol=1e-14)
    mass = fx.softmax_cross_entropy_with_logits(labels=np.array([[0.5, 0.5, 0.0]]), logits=z)
    assert mass[0] == np.inf


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_empty_inputs(dtype):
    z = np.zeros((0, 5), dtype)
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=np.zeros(0, np.int64), logits=z)
    assert loss.shape == (0,) and loss.dtype == np.dtype(dtype)
    loss, grad = fx.softmax_cross_entropy_with_logits_and_grad(labels=z, logits=z)
    assert loss.shape == (0,) and grad.shape == (0, 5) and grad.dtype == np.dtype(dtype)
    assert fx.log_softmax(np.zeros((3, 0, 4), dtype), axis=0).shape == (3, 0, 4)
    assert fx.logsumexp(np.zeros((0, 4), dtype)).shape == (0,)
    empty_classes = fx.sparse_softmax_cross_entropy_with_logits(labels=np.zeros(0, np.int8), logits=np.zeros((0, 0), dtype))
    assert empty_classes.shape == (0,)


def test_rank1_logits_with_0d_label():
    z = np.array([1.0, 2.0, 0.5], np.float32)
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=np.array(1), logits=z)
    assert loss.shape == () and loss.dtype == np.float32
    assert_close(loss, ref_sparse(z.astype(np.float64), np.array(1))[0], np.float32)
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=2, logits=z)
    assert_close(loss, ref_sparse(z.astype(np.float64), np.array(2))[0], np.float32)


def test_pytorch_image_layout():
    z = _logits((2, 5, 4, 3), np.float32)
    y = _sparse_labels((2, 5, 4, 3), 1)
    assert y.shape == (2, 4, 3)
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, axis=1)
    want, want_grad = ref_sparse(z.astype(np.float64), y, axis=1)
    assert_close(loss, want, np.float32)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("classes", [1, 2, 15, 16, 17, 31, 32, 33, 1000, 70000])
@pytest.mark.parametrize("rows", [1, 15, 16, 17, 100])
def test_row_widths_and_counts(rows, classes):
    # Narrow rows go sixteen at a time, wide rows are split across threads: every boundary.
    if rows * classes > 2_000_000:
        rows = 3
    z = _logits((rows, classes), np.float32, seed=rows * classes)
    y = np.arange(rows) % classes
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
    want, want_grad = ref_sparse(z.astype(np.float64), y)
    assert_close(loss, want, np.float32)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=1e-9)
