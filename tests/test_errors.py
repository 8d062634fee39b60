"""Every invalid input is a ValueError whose message names the problem (table-driven)."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx

Z = np.zeros((3, 4), np.float32)
Y = np.array([0, 1, 2])
P = np.full((3, 4), 0.25, np.float32)
sparse = fx.sparse_softmax_cross_entropy_with_logits
sparse_grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad
dense = fx.softmax_cross_entropy_with_logits
dense_grad = fx.softmax_cross_entropy_with_logits_and_grad


class Unconvertible:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("no array here")


CASES = [
    # (id, call, message fragment)
    ("positional", lambda: sparse(Y, Z), "keyword arguments only"),
    ("positional dense", lambda: dense(P, Z), "keyword arguments only"),
    ("missing labels", lambda: sparse(logits=Z), "labels"),
    ("missing logits", lambda: dense(labels=P), "logits"),
    ("unknown keyword", lambda: sparse(labels=Y, logits=Z, temperature=2), "temperature"),
    ("ignore_index on dense", lambda: dense(labels=P, logits=Z, ignore_index=1), "ignore_index"),
    ("sparse labels shape", lambda: sparse(labels=np.zeros(4, int), logits=Z), r"labels shape \(4,\).*expected labels of shape \(3,\)"),
    ("sparse labels rank", lambda: sparse(labels=np.zeros((3, 1), int), logits=Z), r"labels shape \(3, 1\)"),
    ("label too large", lambda: sparse(labels=np.array([0, 4, 1]), logits=Z), r"labels\[1\] = 4 is out of range.*\[0, 4\)"),
    ("negative label", lambda: sparse(labels=np.array([0, 1, -1]), logits=Z), r"labels\[2\] = -1 is out of range"),
    ("label position nd", lambda: sparse(labels=np.array([[0, 9]]), logits=np.zeros((1, 2, 3)), axis=-1), r"labels\[0, 1\] = 9"),
    ("huge uint64 label", lambda: sparse(labels=np.array([2**64 - 1, 0, 0], np.uint64), logits=Z), "18446744073709551615"),
    ("zero classes", lambda: sparse(labels=Y, logits=np.zeros((3, 0), np.float32)), "0 classes"),
    ("zero classes dense", lambda: dense(labels=np.zeros((3, 0)), logits=np.zeros((3, 0), np.float32)), "0 classes"),
    ("dense not broadcastable", lambda: dense(labels=np.zeros((3, 5)), logits=Z), r"labels shape \(3, 5\) does not broadcast"),
    ("grad with broadcast logits", lambda: dense_grad(labels=np.zeros((2, 3, 4)), logits=Z), "full broadcast shape"),
    ("bool logits", lambda: sparse(labels=Y, logits=Z.astype(bool)), "logits has dtype bool"),
    ("int logits", lambda: sparse(labels=Y, logits=Z.astype(np.int32)), "logits has dtype int32"),
    ("complex logits", lambda: sparse(labels=Y, logits=Z.astype(complex)), "logits has dtype complex128"),
    ("object logits", lambda: sparse(labels=Y, logits=np.array([[None] * 4] * 3)), "logits has dtype object"),
    ("string logits", lambda: sparse(labels=Y, logits=np.array([["a"] * 4] * 3)), "logits has dtype <U1"),
    ("float128 logits", lambda: sparse(labels=Y, logits=Z.astype(np.longdouble)), "logits has dtype float128"),
    ("float sparse labels", lambda: sparse(labels=Y.astype(np.float32), logits=Z), "labels has dtype float32.*integer"),
    ("bool sparse labels", lambda: sparse(labels=Y > 0, logits=Z), "labels has dtype bool"),
    ("int dense labels", lambda: dense(labels=P.astype(int), logits=Z), "labels has dtype int64.*floating"),
    ("ragged list", lambda: sparse(labels=Y, logits=[[1.0, 2.0], [3.0]]), "logits could not be converted"),
    ("unconvertible object", lambda: sparse(labels=Y, logits=Unconvertible()), "logits could not be converted"),
    ("plain object", lambda: sparse(labels=Y, logits=object()), "logits has dtype object"),
    ("scalar logits", lambda: fx.log_softmax(np.float32(1.0)), "at least one dimension"),
    ("axis too large", lambda: sparse(labels=Y, logits=Z, axis=2), r"axis 2 is out of range.*\[-2, 2\)"),
    ("axis too small", lambda: fx.softmax(Z, axis=-3), r"axis -3 is out of range"),
    ("axis huge", lambda: fx.logsumexp(Z, axis=2**70), "axis"),
    ("axis float", lambda: fx.log_softmax(Z, axis=1.5), "axis"),
    ("axis bool", lambda: fx.log_softmax(Z, axis=True), "axis"),
    ("axis and dim differ", lambda: dense(labels=P, logits=Z, axis=0, dim=1), "disagree"),
    ("unknown reduction", lambda: sparse(labels=Y, logits=Z, reduction="avg"), "reduction = 'avg' is invalid"),
    ("reduction not a string", lambda: sparse(labels=Y, logits=Z, reduction=None), "reduction"),
    ("smoothing above 1", lambda: sparse(labels=Y, logits=Z, label_smoothing=1.5), r"label_smoothing = 1.5 is invalid.*\[0, 1\]"),
    ("smoothing negative", lambda: dense(labels=P, logits=Z, label_smoothing=-0.1), "label_smoothing"),
    ("smoothing NaN", lambda: sparse(labels=Y, logits=Z, label_smoothing=float("nan")), "label_smoothing = NaN"),
    ("smoothing string", lambda: sparse(labels=Y, logits=Z, label_smoothing="0.1"), "label_smoothing"),
    ("weight shape", lambda: sparse(labels=Y, logits=Z, weight=np.ones(3)), r"weight has shape \(3,\).*\(4,\)"),
    ("weight rank", lambda: sparse(labels=Y, logits=Z, weight=np.ones((4, 1))), "weight"),
    ("weight negative", lambda: sparse(labels=Y, logits=Z, weight=[1, 1, -1, 1]), r"weight\[2\] = -1"),
    ("weight NaN", lambda: dense(labels=P, logits=Z, weight=[1, np.nan, 1, 1]), r"weight\[1\] = NaN"),
    ("weight inf", lambda: sparse(labels=Y, logits=Z, weight=[1, 1, 1, np.inf]), r"weight\[3\] = inf"),
    ("weight strings", lambda: sparse(labels=Y, logits=Z, weight=["a"] * 4), "weight"),
    ("ignore_index float", lambda: sparse(labels=Y, logits=Z, ignore_index=1.0), "ignore_index"),
    ("ignore_index huge", lambda: sparse(labels=Y, logits=Z, ignore_index=2**80), "ignore_index"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_input_is_a_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_no_partial_output_on_error():
    out = np.full(3, 7.0, np.float32)
    with pytest.raises(ValueError):
        sparse(labels=np.array([0, 1, 9]), logits=Z, out=out)
    assert np.all(out == 7.0)
