"""Every case recorded from TensorFlow 2.21 and PyTorch 2.13 (tests/data, copied from
shared/golden): same call, same answer; forward ops and the `*_and_grad` twins.

Where fastxent deliberately departs from the recording (see tests/data/README.md, the golden
data's README), the case is checked against our rule and the float64 reference instead:
- `dense_extreme_onehot2`: a zero label on a -inf logit. TF gives NaN (0 * -inf); our rule is
  that a term with a zero label contributes 0, so the true, finite loss is expected. Tested
  against the float64 reference, and the test asserts that TF's NaN there is what we depart from.
- `dense_extreme_uniform`: TF overflows to inf in an intermediate where the true float32 loss
  is finite (2.55e38): either TF's answer or the reference's is accepted, row by row.
- float16/bfloat16 cases: TF rounds in its own way; compared with the float64 reference
  rounded to the output dtype (1 ulp).
- `axis-2`/`dim-2` cases: recorded with the equivalent positive axis, valid as given.
Every other output is compared with the recording (the case's `tol` when given), and the
losses and gradients with the float64 reference as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import (
    HALF_DTYPES,
    as_compute,
    assert_close,
    dense_loss_atol,
    grad_atol,
    lsm_atol,
    ref_dense,
    ref_log_softmax,
    ref_logsumexp,
    ref_softmax,
    ref_sparse,
)

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
OUR_RULE = {"dense_extreme_onehot2"}  # TF's NaN is wrong there: checked against the reference
EITHER = {"dense_extreme_uniform"}  # TF's intermediate overflow: either answer


def _array(case, kind, name):
    a = ARRAYS[f"{case['name']}__{kind}__{name}"]
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # bfloat16 stored as raw 2-byte records
        a = a.view(ml_dtypes.bfloat16)
    return a


def _inputs(case):
    inputs = {name: _array(case, "in", name) for name in case["inputs"]}
    kwargs = {k: (inputs["weight"] if v == "W" else v) for k, v in case["kwargs"].items()}
    return inputs, kwargs


def _call(case, inputs, kwargs):
    op = case["op"]
    if op in REFERENCES:
        out = getattr(fx, op)(inputs["logits"], **kwargs)
    else:
        out = FUNCTIONS[op](labels=inputs["labels"], logits=inputs["logits"], **kwargs)
    return out if isinstance(out, tuple) else (out,)


def _axis(kwargs):
    return kwargs.get("axis", kwargs.get("dim", -1))


def _reference(case, inputs, kwargs):
    """The float64 reference for each output the call returns."""
    z = inputs["logits"].astype(np.float64)
    op = case["op"]
    axis = _axis(kwargs)
    if op in REFERENCES:
        return (REFERENCES[op](z, axis),)
    options = {k: v for k, v in kwargs.items() if k not in ("axis", "dim")}
    if op.startswith("sparse"):
        loss, grad = ref_sparse(z, inputs["labels"], axis, **options)
    else:
        loss, grad = ref_dense(z, as_compute(inputs["labels"], inputs["logits"].dtype), axis, **options)
    return (loss, grad) if op.endswith("_and_grad") else (loss,)


def _grad_atol(case, inputs, kwargs, dtype):
    if "labels" not in inputs or not case["op"].endswith("_and_grad"):
        return 0.0
    if case["op"].startswith("sparse"):
        scale = 1.0 if "weight" not in inputs else float(np.max(inputs["weight"]))
    else:
        scale = float(np.max(np.abs(inputs["labels"].astype(np.float64)).sum(axis=_axis(kwargs)), initial=1.0))
    return grad_atol(scale, dtype)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden(case):
    inputs, kwargs = _inputs(case)
    got = _call(case, inputs, kwargs)
    dtype = inputs["logits"].dtype
    names = [n for n in case["outputs"] if n != "grad_labels"]
    assert len(got) == len(names), f"{case['op']} returned {len(got)} arrays, expected {names}"
    references = _reference(case, inputs, kwargs)
    for value, name, ref in zip(got, names, references):
        recorded = _array(case, "out", name)
        what = f"{case['name']}: {name}"
        # Shapes and dtypes always match the recording.
        assert value.shape == recorded.shape, f"{what}: shape {value.shape}, recorded {recorded.shape}"
        assert value.dtype == recorded.dtype == dtype, f"{what}: dtype {value.dtype}, recorded {recorded.dtype}"
        if name == "grad":
            atol = _grad_atol(case, inputs, kwargs, dtype)
        elif case["op"] == "log_softmax":
            atol = lsm_atol(inputs["logits"], dtype)
        elif case["op"].startswith("dense"):
            atol = dense_loss_atol(inputs["logits"], inputs["labels"], _axis(kwargs), dtype)
        else:
            atol = 0.0
        if dtype in HALF_DTYPES or case["name"] in OUR_RULE:
            # Our rule, against the float64 reference (rounded to the half type).
            assert_close(value, ref, dtype, what, atol=atol)
            if case["name"] in OUR_RULE:
                # The departure is real: TF's NaN where the true loss is finite.
                departs = np.isnan(recorded) & np.isfinite(value)
                assert departs.any(), "the recording no longer shows TF's 0 * -inf NaN"
                rtol = 1e-2 if dtype in HALF_DTYPES else 1e-6
                assert np.allclose(value[~departs], recorded[~departs], rtol=rtol, equal_nan=True), what
            continue
        if case["name"] in EITHER:
            for v, w, o in zip(value.astype(np.float64), recorded.astype(np.float64), ref):
                with np.errstate(over="ignore"):
                    o32 = np.float64(np.float32(o)) if np.isfinite(o) else o
                assert np.isclose(v, w, rtol=1e-6, equal_nan=True) or np.isclose(v, o32, rtol=1e-6, equal_nan=True), (
                    f"{what}: {v} is neither TF's {w} nor the reference's {o}"
                )
            continue
        # TF computes `lse - z`, which carries an absolute error of a few ulp of the logits'
        # magnitude (where the loss is small, that is most of it): allow it that much, and hold
        # our own value to the float64 reference, which is the stricter test.
        eps = float(np.finfo(dtype).eps)
        finite_z = np.where(np.isfinite(inputs["logits"]), inputs["logits"], 0).astype(np.float64)
        scale = 1.0 + float(np.max(np.abs(finite_z), initial=0))
        tol = case["tol"] if case["tol"] is not None else 4 * eps
        np.testing.assert_allclose(value, recorded, rtol=tol, atol=4 * eps * scale, err_msg=what)
        assert_close(value, ref, dtype, what + " (reference)", atol=atol)
    if "grad_labels" in case["outputs"]:
        # TF's gradient with respect to the labels is -log_softmax(logits): fx.log_softmax serves it.
        want = _array(case, "out", "grad_labels")
        np.testing.assert_allclose(-fx.log_softmax(inputs["logits"], axis=_axis(kwargs)), want, rtol=2e-6, atol=1e-6)


def test_every_recorded_case_is_checked():
    ops = {c["op"] for c in CASES}
    assert ops == set(FUNCTIONS) | set(REFERENCES)
    assert len(CASES) == len({c["name"] for c in CASES}) == 183
    stored = {k.split("__")[0] for k in ARRAYS.files}
    assert stored == {c["name"] for c in CASES}
    for c in CASES:
        for name in c["inputs"]:
            assert f"{c['name']}__in__{name}" in ARRAYS.files
        for name in c["outputs"]:
            assert f"{c['name']}__out__{name}" in ARRAYS.files


def test_departures_named_in_the_readme_exist():
    names = {c["name"] for c in CASES}
    assert OUR_RULE <= names and EITHER <= names
    assert any(np.dtype(_inputs(c)[0]["logits"].dtype) in HALF_DTYPES for c in CASES)
