"""Every case recorded from TensorFlow 2.21 and PyTorch 2.13 (tests/data, copied from
shared/golden): same call, same answer.

Where fastxent deliberately differs from TensorFlow, the case is checked against our rule and
the float64 reference instead (see the golden README):
- `dense_extreme_onehot2`: a zero label on a -inf logit; TF gives NaN, we give the finite loss.
- `dense_extreme_uniform`: TF overflows in an intermediate; either its answer or ours.
- float16/bfloat16: TF rounds in its own way; we compare with the float64 reference rounded
  to the output dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_close, ref_dense, ref_log_softmax, ref_logsumexp, ref_softmax, ref_sparse

import fastxent as fx

DATA = Path(__file__).parent / "data"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
ARRAYS = np.load(DATA / "golden.npz")
CASES = MANIFEST["cases"]

FUNCTIONS = {
    "sparse": fx.sparse_softmax_cross_entropy_with_logits,
    "dense": fx.softmax_cross_entropy_with_logits,
    "sparse_and_grad": fx.sparse_softmax_cross_entropy_with_logits_and_grad,
    "dense_and_grad": fx.softmax_cross_entropy_with_logits_and_grad,
}
REFERENCES = {"log_softmax": ref_log_softmax, "softmax": ref_softmax, "logsumexp": ref_logsumexp}


def _array(case, kind, name):
    a = ARRAYS[f"{case['name']}__{kind}__{name}"]
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # bfloat16 stored as raw 2-byte records
        a = a.view(ml_dtypes.bfloat16)
    return a


def _call(case):
    inputs = {name: _array(case, "in", name) for name in case["inputs"]}
    kwargs = {k: (inputs["weight"] if v == "W" else v) for k, v in case["kwargs"].items()}
    op = case["op"]
    if op in REFERENCES:
        return getattr(fx, op)(inputs["logits"], **kwargs), inputs, kwargs
    return FUNCTIONS[op](labels=inputs["labels"], logits=inputs["logits"], **kwargs), inputs, kwargs


def _half(case, inputs):
    return inputs["logits"].dtype in (np.float16, ml_dtypes.bfloat16)


def _reference(case, inputs, kwargs):
    z = inputs["logits"].astype(np.float64)
    op = case["op"]
    axis = kwargs.get("axis", kwargs.get("dim", -1))
    if op in REFERENCES:
        return (REFERENCES[op](z, axis),)
    options = {k: v for k, v in kwargs.items() if k not in ("axis", "dim")}
    if op.startswith("sparse"):
        return ref_sparse(z, inputs["labels"], axis, **options)
    return ref_dense(z, inputs["labels"].astype(np.float64), axis, **options)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden(case):
    got, inputs, kwargs = _call(case)
    got = got if isinstance(got, tuple) else (got,)
    dtype = inputs["logits"].dtype
    names = [n for n in case["outputs"] if n != "grad_labels"]
    assert len(got) == len(names)
    if _half(case, inputs) or case["name"] == "dense_extreme_onehot2":
        # Our rule against the float64 reference (TF's half rounding, or TF's NaN, differ).
        for value, want in zip(got, _reference(case, inputs, kwargs)):
            assert_close(value, want, dtype, case["name"])
        return
    for value, name in zip(got, names):
        want = _array(case, "out", name)
        assert value.shape == want.shape and value.dtype == want.dtype, name
        if case["name"] == "dense_extreme_uniform" and name == "loss":
            ours = _reference(case, inputs, kwargs)[0]
            assert all(
                np.isclose(v, w, rtol=1e-6, equal_nan=True) or np.isclose(v, o, rtol=1e-6)
                for v, w, o in zip(value, want, ours)
            )
            continue
        # TF computes `lse - z`, which carries an absolute error of a few ulp of the logits'
        # magnitude (where the loss is small, that is most of it): allow it that much, and hold
        # our own value to the float64 reference, which is the stricter test.
        eps = np.finfo(value.dtype).eps
        scale = 1.0 + float(np.nanmax(np.abs(np.where(np.isfinite(inputs["logits"]), inputs["logits"], 0)), initial=0))
        tol = case["tol"] or 4 * eps
        np.testing.assert_allclose(value, want, rtol=tol, atol=4 * eps * scale, err_msg=f"{case['name']}: {name}")
        if name == "loss":
            assert_close(value, _reference(case, inputs, kwargs)[0], value.dtype, case["name"])
    if "grad_labels" in case["outputs"]:
        # TF's gradient with respect to the labels is -log_softmax(logits): fx.log_softmax serves it.
        axis = kwargs.get("axis", kwargs.get("dim", -1))
        want = _array(case, "out", "grad_labels")
        np.testing.assert_allclose(-fx.log_softmax(inputs["logits"], axis=axis), want, rtol=2e-6, atol=1e-6)


def test_every_recorded_case_is_checked():
    ops = {c["op"] for c in CASES}
    assert ops <= set(FUNCTIONS) | set(REFERENCES)
    assert len(CASES) == len({c["name"] for c in CASES}) > 150
