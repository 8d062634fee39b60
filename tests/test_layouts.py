"""Rows not stored contiguously in the compute type take other paths: half-type rows are widened
whole with their maximum in one pass (long ones read as stored, their statistics widened as
loaded) and their outputs rounded as stored; rows of 65536 classes or more (a class stride,
logits the gradient overwrites, strided or half-type outputs, broadcast labels) are read and
written a block at a time, never copied whole. Their results must be, bit for bit, those of
the same values laid out contiguously in float32 / float64, a path that the accuracy tests
check against float64 references; and one case here is checked against float64 NumPy
directly. The memory long rows need is in tests/test_resources.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx

BF16 = np.dtype(ml_dtypes.bfloat16)
ROWS, C = 3, 70_001  # past the split threshold (65536), and not a multiple of the 16384 block
# Labels on block and split boundaries, and the last class.
LABELS = np.array([16383, 65536, C - 1])
OPTIONS = [{}, {"label_smoothing": 0.1, "weight": "w"}, {"ignore_index": 65536, "reduction": "mean"}]


def _logits(dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (ROWS, C))
    z[0, 5] = 40.0  # a confident row: the maximum far ahead
    z[1, 70_000] = -np.inf  # a masked class
    return z.astype(dtype)


def _opts(o: dict, classes: int = C) -> dict:
    w = np.random.default_rng(1).uniform(0.5, 2.0, classes)
    return {k: (w if v == "w" else v) for k, v in o.items()}


def _every_result(z, *, axis=-1, labels=LABELS, soft=None, options=()) -> list[np.ndarray]:
    """Every function on logits `z` (class axis `axis`), results moved to (rows, C) order."""
    move = (lambda a: np.moveaxis(a, 0, -1)) if axis == 0 else (lambda a: a)
    classes = z.shape[axis]
    if soft is None:
        soft = np.full(z.shape, 1.0 / classes, np.float32)
    out = [fx.logsumexp(z, axis=axis), move(fx.log_softmax(z, axis=axis)), move(fx.softmax(z, axis=axis))]
    for o in (_opts(o, classes) for o in options or OPTIONS):
        dense_o = {k: v for k, v in o.items() if k != "ignore_index"}
        out.append(fx.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z, axis=axis, **o))
        loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z, axis=axis, **o)
        out += [loss, move(grad)]
        out.append(fx.softmax_cross_entropy_with_logits(labels=soft, logits=z, axis=axis, **dense_o))
        loss, grad = fx.softmax_cross_entropy_with_logits_and_grad(labels=soft, logits=z, axis=axis, **dense_o)
        out += [loss, move(grad)]
    return out


def _assert_same_bits(got: list[np.ndarray], want: list[np.ndarray], dtype) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w).astype(dtype)
        assert g.dtype == w.dtype and g.shape == w.shape, (i, g.dtype, g.shape, w.shape)
        same = np.ascontiguousarray(g).view(np.uint8) == np.ascontiguousarray(w).view(np.uint8)
        assert same.all(), f"result {i} differs in {np.count_nonzero(~same)} bytes"


# (rows, classes, stored with a row stride of `pad` more classes): long rows, read a block at a
# time (65536 classes or more); rows widened whole with their maximum in the same pass, up to
# 65535 classes, but for those read for their statistics alone from 768 classes on (read as
# stored, their maximum taken on the bits); narrow rows in tiles of sixteen, contiguous or
# not; a partial tile; past the tiles; narrow rows on the pool, their losses rounded a block of
# rows at a time (a partial block last).
HALF_SHAPES = [
    (3, C, 0), (3, 65536, 0), (3, 65535, 2), (64, 1000, 0), (7, 16387, 5), (5, 768, 1), (5, 767, 0),
    (50, 300, 0), (9, 512, 3),
    (100, 10, 0), (40, 10, 6), (21, 32, 0), (5, 33, 0), (18, 64, 0), (17, 48, 2), (17, 95, 1),
    (17, 97, 0), (17, 128, 1), (17, 129, 0), (4099, 10, 0), (1001, 48, 3),
]


@pytest.mark.parametrize("shape", HALF_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_half_types_equal_float32_rounded_once(dtype, shape):
    rows, classes, pad = shape
    rng = np.random.default_rng(classes)
    z = _logits(dtype) if classes == C else rng.normal(0, 3, (rows, classes)).astype(dtype)
    z[1, classes // 2] = np.nan  # a row with NaN
    z[2 % rows, :] = -np.inf  # a row of -inf
    z[-1, 0] = np.inf  # a row with +inf
    if pad:
        z = np.concatenate([z, np.zeros((rows, pad), dtype)], axis=1)[:, :classes]
    labels = (np.arange(rows) * 7919) % classes
    options = [{}, {"label_smoothing": 0.1, "weight": "w"}, {"ignore_index": int(labels[0]), "reduction": "mean"}]
    # float32 from the same values: each half-type result is the float32 one rounded once.
    want = _every_result(z.astype(np.float32), labels=labels, options=options)
    _assert_same_bits(_every_result(z, labels=labels, options=options), want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_axis_with_a_stride(dtype):
    z = _logits(dtype)
    zt = np.ascontiguousarray(z.T)  # (C, rows): the rows are columns, a stride apart
    soft = np.random.default_rng(2).random((ROWS, C)).astype(dtype)
    got = _every_result(zt, axis=0, soft=np.ascontiguousarray(soft.T))
    _assert_same_bits(got, _every_result(z, soft=soft), dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smoothing+weight", "ignore+mean"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_gradient_in_place_and_into_strided_buffers(dtype, options, sparse):
    z = _logits(dtype)
    o = _opts(options)
    if sparse:
        fn, labels = fx.sparse_softmax_cross_entropy_with_logits_and_grad, LABELS
    else:
        fn, labels = fx.softmax_cross_entropy_with_logits_and_grad, np.random.default_rng(3).random((ROWS, C))
        o.pop("ignore_index", None)
    loss, grad = fn(labels=labels, logits=z, **o)
    # Over the logits themselves: each block is read just before it is overwritten.
    inplace = z.copy()
    l2, g2 = fn(labels=labels, logits=inplace, grad_out=inplace, **o)
    assert g2 is inplace
    _assert_same_bits([l2, inplace], [loss, grad], dtype)
    # Into a buffer whose rows are columns.
    buf = np.full((C, ROWS), np.nan, dtype).T
    fn(labels=labels, logits=z, grad_out=buf, **o)
    _assert_same_bits([buf], [grad], dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_broadcast_and_half_type_dense_labels(dtype):
    z = _logits(dtype)
    soft = np.random.default_rng(4).random(C).astype(np.float16)
    want = _every_result(z, soft=np.tile(soft.astype(np.float32), (ROWS, 1)), options=[{}])
    # Labels of shape (C,): every row reads the same memory (a zero row stride), in float16.
    got = _every_result(z, soft=soft, options=[{}])
    dense = [6, 7, 8]  # the dense results, after logsumexp, log_softmax, softmax and three sparse
    _assert_same_bits([got[i] for i in dense], [want[i] for i in dense], dtype)


def test_float16_rows_against_float64():
    z = _logits(np.float16)
    z64 = z.astype(np.float64)
    m = z64.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z64 - m).sum(axis=1, keepdims=True)))[:, 0]
    want = lse - z64[np.arange(ROWS), LABELS]
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=LABELS, logits=z)
    p = np.exp(z64 - lse[:, None])
    p[np.arange(ROWS), LABELS] -= 1.0
    # Correctly rounded from float32 results within a few float32 ulp: within one float16 ulp.
    np.testing.assert_allclose(loss.astype(np.float64), want, rtol=2**-10)
    np.testing.assert_allclose(grad.astype(np.float64), p, rtol=2**-10, atol=2**-24)
    np.testing.assert_allclose(fx.logsumexp(z).astype(np.float64), lse, rtol=2**-10)


@pytest.mark.parametrize("classes", [10, 48, 96, 128, 1000, 5000])
@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64], ids=str)
def test_rows_that_keep_their_exps_take_the_same_path_in_every_layout(dtype, classes):
    # Rows under the split threshold with an output keep the exps of their sum, where the
    # output's scale allows (weights here range over 0.5-2): in place, into a strided buffer,
    # along axis 0 and in half types, every result is the contiguous one's (rounded once).
    rng = np.random.default_rng(classes)
    z = rng.normal(0, 3, (40, classes))
    z[0, 7] = 60.0  # confident: the mass off the maximum is summed again in f64
    z[1, 3] = -np.inf
    z = z.astype(dtype)
    labels = rng.integers(0, classes, 40)
    soft = rng.dirichlet(np.ones(classes), 40).astype(np.float32)
    options = [{}, {"label_smoothing": 0.1, "weight": "w"}, {"weight": "w", "reduction": "sum"}]
    opts = [_opts(o, classes) for o in options]
    want = _every_result(z.astype(np.float32) if dtype in (np.float16, BF16) else z, labels=labels, soft=soft, options=options)
    _assert_same_bits(_every_result(z, labels=labels, soft=soft, options=options), want, dtype)
    got = _every_result(np.ascontiguousarray(z.T), axis=0, labels=labels, soft=np.ascontiguousarray(soft.T), options=options)
    _assert_same_bits(got, want, dtype)
    for o in opts:
        _, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z, **o)
        inplace = z.copy()
        fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=inplace, grad_out=inplace, **o)
        strided = np.full((classes, 40), np.nan, dtype).T
        fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z, grad_out=strided, **o)
        _assert_same_bits([inplace, strided], [grad, grad], dtype)
