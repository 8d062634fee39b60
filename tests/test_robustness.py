"""Random shapes, layouts, dtypes and options give the float64 reference's answer
(hypothesis). The fuzz of invalid input is in `test_fuzz.py`."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from conftest import FLOAT_DTYPES, INT_DTYPES, assert_close, ref_dense, ref_sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastxent as fx

# CI runs a fixed sample (a red CI must mean a bug, not a draw); by hand, a new draw each run.
SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=bool(os.environ.get("CI")), suppress_health_check=[HealthCheck.too_slow]
)


def _layout(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "fortran" and a.ndim:  # (asfortranarray makes a 0-d array 1-d)
        return np.asfortranarray(a)
    if kind == "reversed" and a.ndim:
        return np.flip(np.flip(a).copy())
    if kind == "sliced" and a.ndim:
        return np.repeat(a, 3, axis=0)[::3]
    if kind == "transposed" and a.ndim > 1:
        return np.ascontiguousarray(a.T).T
    if kind == "unaligned" and a.ndim:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
        out[...] = a
        return out
    if kind == "byteswapped" and a.dtype.kind in "fiu" and a.dtype.itemsize > 1:
        return a.astype(a.dtype.newbyteorder("S"))
    return a


LAYOUTS = ["c", "fortran", "reversed", "sliced", "transposed", "unaligned", "byteswapped"]


@st.composite
def problems(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    z = rng.normal(0, draw(st.sampled_from([0.1, 3.0, 50.0])), shape)
    if z.size and draw(st.booleans()):
        z.flat[rng.integers(0, z.size)] = draw(st.sampled_from([np.inf, -np.inf, np.nan, 1e30]))
    options = {}
    if draw(st.booleans()):
        options["reduction"] = draw(st.sampled_from(["none", "sum", "mean"]))
    if draw(st.booleans()):
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 1.0]))
    if draw(st.booleans()) and shape[axis]:
        options["weight"] = rng.uniform(0, 2, shape[axis])
    layout = draw(st.sampled_from(LAYOUTS))
    with np.errstate(over="ignore"):
        return z.astype(dtype), axis, options, layout, rng


def _check(got, want, dtype):
    if isinstance(got, tuple):
        for g, w in zip(got, want):
            _check(g, w, dtype)
        return
    got = np.asarray(got)
    if np.dtype(dtype) in (np.float16, ml_dtypes.bfloat16) or got.size > 1 and np.asarray(want).ndim == 0:
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-2, atol=1e-3)
    else:
        tol = 1e-9 if np.dtype(dtype) == np.float64 else 2e-5
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


@SETTINGS
@given(problems(), st.booleans())
def test_sparse_property(problem, with_grad):
    z, axis, options, layout, rng = problem
    batch = tuple(n for d, n in enumerate(z.shape) if d != axis % z.ndim)
    classes = z.shape[axis]
    labels = rng.integers(0, max(classes, 1), batch).astype(rng.choice(INT_DTYPES))
    fn = fx.sparse_softmax_cross_entropy_with_logits_and_grad if with_grad else fx.sparse_softmax_cross_entropy_with_logits
    try:
        got = fn(labels=_layout(labels, layout), logits=_layout(z, layout), axis=axis, **options)
    except ValueError as e:
        # Only an input that really is invalid: zero classes with a non-empty batch.
        assert classes == 0 and labels.size > 0, e
        return
    want = ref_sparse(z.astype(np.float64), labels, axis, **options)
    _check(got if with_grad else got, want if with_grad else want[0], z.dtype)


@SETTINGS
@given(problems(), st.booleans())
def test_dense_property(problem, with_grad):
    z, axis, options, layout, rng = problem
    labels = rng.random(z.shape).astype(rng.choice([np.float32, np.float64]))
    fn = fx.softmax_cross_entropy_with_logits_and_grad if with_grad else fx.softmax_cross_entropy_with_logits
    try:
        got = fn(labels=_layout(labels, layout), logits=_layout(z, layout), axis=axis, **options)
    except ValueError as e:
        # Only zero classes with a non-empty batch (a rank-1 batch of one row counts).
        batch = int(np.prod([n for d, n in enumerate(z.shape) if d != axis % z.ndim]))
        assert z.shape[axis] == 0 and batch > 0, e
        return
    # Labels are read in the compute type: float64 for float64 logits, float32 otherwise.
    compute = np.float64 if z.dtype == np.float64 else np.float32
    want = ref_dense(z.astype(np.float64), labels.astype(compute).astype(np.float64), axis, **options)
    _check(got, want if with_grad else want[0], z.dtype)
