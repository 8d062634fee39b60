"""`out=` and `grad_out=` buffers, including the in-place gradient (`grad_out=logits`)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def _inputs(dtype, axis=-1):
    rng = np.random.default_rng(7)
    z = rng.normal(0, 2, (6, 9)).astype(dtype)
    if axis == 0:
        z = np.ascontiguousarray(z.T)
    y = rng.integers(0, 9, 6)
    return z, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("sparse", [True, False])
def test_buffers_receive_exactly_the_returned_values(dtype, axis, sparse):
    z, y = _inputs(dtype, axis)
    labels = y if sparse else np.moveaxis(np.eye(9)[y], -1, axis).astype(dtype)
    fn = (
        fx.sparse_softmax_cross_entropy_with_logits_and_grad
        if sparse
        else fx.softmax_cross_entropy_with_logits_and_grad
    )
    loss, grad = fn(labels=labels, logits=z, axis=axis, reduction="none")
    out = np.full(6, np.nan, dtype=dtype)
    grad_out = np.full(z.shape, np.nan, dtype=dtype)
    got = fn(labels=labels, logits=z, axis=axis, out=out, grad_out=grad_out)
    assert got[0] is out and got[1] is grad_out
    assert out.tobytes() == loss.tobytes()
    assert grad_out.tobytes() == np.ascontiguousarray(grad).tobytes()
    # In place: the gradient replaces the logits.
    inplace = z.copy()
    l2, g2 = fn(labels=labels, logits=inplace, axis=axis, grad_out=inplace)
    assert g2 is inplace
    assert inplace.tobytes() == np.ascontiguousarray(grad).tobytes()
    assert l2.tobytes() == loss.tobytes()


@pytest.mark.parametrize("layout", ["fortran", "transposed", "sliced", "reversed"])
def test_strided_buffers(layout):
    z, y = _inputs(np.float32)
    _, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
    make = {
        "fortran": lambda: np.asfortranarray(np.zeros((6, 9), np.float32)),
        "transposed": lambda: np.zeros((9, 6), np.float32).T,
        "sliced": lambda: np.zeros((12, 18), np.float32)[::2, ::2],
        "reversed": lambda: np.zeros((6, 9), np.float32)[::-1, ::-1],
    }
    buf = make[layout]()
    fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, grad_out=buf)
    np.testing.assert_array_equal(buf, grad)
    # In place on a strided logits array.
    zs = make[layout]()
    zs[...] = z
    fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=zs, grad_out=zs)
    np.testing.assert_array_equal(zs, grad)


def test_reduced_loss_into_a_0d_buffer():
    z, y = _inputs(np.float64)
    out = np.empty((), np.float64)
    got = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, reduction="mean", out=out)
    assert got is out
    assert out == fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, reduction="mean")


def _overlapping():
    return np.lib.stride_tricks.as_strided(np.zeros(9, np.float32), (6, 9), (4, 4))


def _readonly():
    a = np.zeros(6, np.float32)
    a.flags.writeable = False
    return a


BAD_BUFFERS = [
    ("out", lambda z: np.zeros(5, np.float32), "out has shape"),
    ("out", lambda z: np.zeros(6, np.float64), "out has dtype float64"),
    ("out", lambda z: [0.0] * 6, "out must be a numpy.ndarray"),
    ("out", lambda z: _readonly(), "out cannot be written"),
    ("out", lambda z: z[:, 0], "out overlaps"),
    ("grad_out", lambda z: np.zeros((9, 6), np.float32), "grad_out has shape"),
    ("grad_out", lambda z: np.zeros((6, 9), np.float16), "grad_out has dtype float16"),
    ("grad_out", lambda z: z[::-1], "grad_out overlaps"),
    ("grad_out", lambda z: _overlapping(), "elements overlap"),
]


@pytest.mark.parametrize("name,make,message", BAD_BUFFERS, ids=[m for _, _, m in BAD_BUFFERS])
def test_bad_buffers_are_value_errors(name, make, message):
    z, y = _inputs(np.float32)
    before = z.copy()
    with pytest.raises(ValueError, match=message):
        fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, **{name: make(z)})
    assert np.array_equal(z, before)


def test_grad_out_needs_the_grad_function():
    z, y = _inputs(np.float32)
    with pytest.raises(ValueError, match="grad_out"):
        fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, grad_out=np.zeros_like(z))


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_large_gradient_buffers_match_a_fresh_gradient(dtype, weighted):
    # Past 64 MiB, a caller's grad_out (and the logits, in place) get rows of 2048 classes or
    # more stored past the caches; rows of 4101 classes start at every alignment. The bits
    # must be the same. Class weights above 1 (summed) scale the exps up: they are computed
    # again, not taken from the statistics (half types: from their widened rows, rounded and
    # streamed as stored).
    rng = np.random.default_rng(3)
    classes = 4101
    rows = (64 << 20) // (classes * np.dtype(dtype).itemsize) + 2
    z = rng.normal(0, 3, (rows, classes)).astype(dtype)
    y = rng.integers(0, classes, rows)
    options = {"weight": 0.5 + 3 * rng.random(classes), "reduction": "sum"} if weighted else {}

    def run(logits, **out):
        return fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=logits, **options, **out)

    loss, grad = run(z)
    buf = np.full_like(z, np.nan)
    loss_b, grad_b = run(z, grad_out=buf)
    assert grad_b is buf
    np.testing.assert_array_equal(loss_b, loss)
    np.testing.assert_array_equal(grad_b, grad)
    z_in_place = z.copy()
    loss_i, _ = run(z_in_place, grad_out=z_in_place)
    np.testing.assert_array_equal(loss_i, loss)
    np.testing.assert_array_equal(z_in_place, grad)
    if np.dtype(dtype).itemsize == 2:
        # Half types: the float32 gradient of the same values, rounded once.
        _, want = run(z.astype(np.float32))
        np.testing.assert_array_equal(grad.view(np.uint16), want.astype(dtype).view(np.uint16))
        return
    if weighted:
        return  # (the weighted gradient's values: test_grad.py)
    # And the gradient itself is right (against float64 NumPy, on a sample of rows).
    some = rng.choice(rows, 64, replace=False)
    z64 = z[some].astype(np.float64)
    p = np.exp(z64 - z64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(64), y[some]] -= 1
    np.testing.assert_allclose(grad[some], p, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-12)
