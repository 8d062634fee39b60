"""Garbage in, ValueError out: every entry point, given anything at all, returns a result of
the right type or raises ValueError. Never another exception type (TypeError, OverflowError,
PanicException, a NumPy warning escaping), never a crash or a hang.

* a systematic sweep: every keyword of every function given each value of a fixed list of
  hostile values (strings, lists, None, dicts, huge and negative ints, NaN, objects whose
  `__array__` raises or changes between calls, 0-d, complex, bool, object and string arrays,
  ...), the other arguments valid; positional arguments, missing and unknown keywords;
* a seeded random fuzz of 3000 calls (scripts/fuzz.py; `python scripts/fuzz.py N` runs a long
  one by hand), which prints its outcome counts.
"""

from __future__ import annotations

import faulthandler
import sys
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
import fuzz  # noqa: E402

CI_CALLS = 3000
CI_SEED = 20250105


class RaisingInt(int):
    """An int whose conversions raise."""

    def __int__(self) -> int:
        raise RuntimeError("raised in __int__")

    def __index__(self) -> int:
        raise RuntimeError("raised in __index__")


def matrix() -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(np.ones((2, 3)))


def hostile_values() -> dict[str, object]:
    """A fixed list of hostile values, by name."""
    r = fuzz.random.Random(0)
    bf = np.ones((2, 3), ml_dtypes.bfloat16)
    return {
        "None": None,
        "True": True,
        "0": 0,
        "-1": -1,
        "2**31": 2**31,
        "2**63": 2**63,
        "2**64": 2**64,
        "-2**63-1": -(2**63) - 1,
        "2**100": 2**100,
        "nan": float("nan"),
        "inf": float("inf"),
        "-0.5": -0.5,
        "1.5": 1.5,
        "complex": 1 + 2j,
        "str": "mean",
        "empty str": "",
        "bytes": b"sum",
        "dict": {"a": 1},
        "set": {1, 2},
        "tuple": (1, 2),
        "empty list": [],
        "list": [0, 1],
        "nested list": [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]],
        "ragged list": [[1.0, 2.0], [3.0]],
        "mixed list": [1, "a"],
        "list of None": [None, None],
        "list of huge ints": [2**70, 1],
        "list of negative huge ints": [-(2**70), 1],
        "deep list": fuzz.deep_list(70),
        "object": object(),
        "type": int,
        "function": len,
        "generator": (i for i in range(2)),
        "np.float32 nan": np.float32("nan"),
        "np.uint64 max": np.uint64(2**64 - 1),
        "np.bool_": np.bool_(False),
        "np.str_": np.str_("sum"),
        "datetime64": np.datetime64("2020-01-01"),
        "timedelta64": np.timedelta64(1, "s"),
        "0-d float": np.array(0.5),
        "0-d int": np.array(1),
        "empty float": np.zeros((0,)),
        "complex array": np.ones((2, 3), np.complex128),
        "bool array": np.ones((2, 3), bool),
        "object array": np.array([[1.0, None, 2]], dtype=object),
        "string array": np.array([["a", "b", "c"]] * 2),
        "datetime array": np.zeros((2, 3), "M8[s]"),
        "structured array": np.zeros((2, 3), [("a", "f4"), ("b", "i4")]),
        "float8 array": np.ones((2, 3), ml_dtypes.float8_e4m3fn),
        "int4 array": np.ones((2, 3), ml_dtypes.int4),
        "longdouble array": np.ones((2, 3), np.longdouble),
        "int array": np.array([[0, 1, 2], [2, 1, 0]]),
        "uint64 array": np.array([2**63, 1], np.uint64),
        "nan array": np.full((2, 3), np.nan),
        "-inf array": np.full((2, 3), -np.inf),
        "negative weights": np.array([-1.0, 1.0, 1.0]),
        "big-endian": np.ones((2, 3), ">f8"),
        "read-only": np.broadcast_to(np.ones(3), (2, 3)),
        "masked bfloat16": (lambda m: (m.tobytes(), m)[1])(np.ma.masked_array(bf, mask=np.zeros(bf.shape, bool))),
        "matrix": matrix(),
        "64-d array": np.zeros((1,) * 64),
        "__array__ changes": fuzz.Shifty(r),
        "__array__ raises RuntimeError": fuzz.RaisesInArray(RuntimeError),
        "__array__ raises TypeError": fuzz.RaisesInArray(TypeError),
        "__array__ raises MemoryError": fuzz.RaisesInArray(MemoryError),
        "bad __array_interface__": fuzz.BadInterface(r),
        "raising __array_interface__": fuzz.RaisingInterface(),
        "bad __dlpack__": fuzz.BadDLPack(r),
        "raising sequence": fuzz.BadSequence(),
        "raising __float__": fuzz.BadFloat(),
        "list with raising __float__": [fuzz.BadFloat(), 1.0],
        "raising __index__": fuzz.BadIndex(),
        "int subclass raising in __int__": RaisingInt(1),
        "raising __repr__": fuzz.BadRepr(),
        "memoryview": memoryview(b"abcdef"),
        "array.array": fuzz.array.array("d", [1.0, 2.0, 3.0]),
        "Decimal nan": fuzz.decimal.Decimal("nan"),
    }


def valid_call(name: str) -> dict[str, object]:
    z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], np.float32)
    if name.startswith("sparse"):
        return {"labels": np.array([0, 2]), "logits": z}
    if name in fuzz.ROWS:
        return {"logits": z}
    return {"labels": np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], np.float32), "logits": z}


FUNCTIONS = {**{k: v[0] for k, v in fuzz.LOSSES.items()}, **fuzz.ROWS}


def keywords(name: str) -> list[str]:
    if name in fuzz.ROWS:
        return ["logits", "axis"]
    sparse = name.startswith("sparse")
    grad = name.endswith("_and_grad")
    keys = ["labels", "logits", "axis", "name", "reduction", "label_smoothing", "weight", "out"]
    keys += ["ignore_index"] if sparse else ["dim"]
    return keys + (["grad_out"] if grad else [])


def outcome(name, kwargs, args=()):
    return fuzz.call_and_check(name, FUNCTIONS[name], args, kwargs)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_every_keyword_with_every_hostile_value(name):
    failures = []
    count = 0
    for key in keywords(name):
        for label, value in hostile_values().items():
            kwargs = valid_call(name)
            kwargs[key] = value
            got, call = outcome(name, kwargs)
            count += 1
            if got not in ("ok", "ValueError"):
                failures.append(f"{key}={label}: {got}")
    assert count > 100
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_signature_misuse(name):
    """Positional arguments, missing arguments and unknown keywords: ValueError (the losses
    follow TensorFlow's `_sentinel` rule; the row functions take `logits` positionally)."""
    failures = []
    valid = valid_call(name)
    calls = {
        "no arguments": ((), {}),
        "unknown keyword": ((), {**valid, "bogus": 1}),
        "missing logits": ((), {k: v for k, v in valid.items() if k != "logits"}),
    }
    if name in fuzz.ROWS:
        calls["axis positionally"] = ((valid["logits"], -1), {})
        calls["logits twice"] = ((valid["logits"],), {"logits": valid["logits"]})
        calls["TF's name="] = ((), {**valid, "name": "x"})
    else:
        calls["positional"] = ((valid["labels"], valid["logits"]), {})
        calls["one positional"] = ((valid["labels"],), {"logits": valid["logits"]})
        calls["missing labels"] = ((), {"logits": valid["logits"]})
    for label, (args, kwargs) in calls.items():
        got, _ = outcome(name, kwargs, args)
        if got != "ValueError":
            failures.append(f"{label}: {got}")
    assert not failures, "\n".join(failures)


def test_set_num_threads_garbage():
    try:
        for value in [None, -1, 2**64, 1.5, "2", [2], np.float64(2.0), True, 10**6, fuzz.BadIndex()]:
            try:
                fx.set_num_threads(value)
            except ValueError:
                continue
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"set_num_threads({value!r}) raised {type(e).__name__}: {e}")
    finally:
        fx.set_num_threads(0)


def test_random_fuzz(capsys):
    examples: dict[str, str] = {}
    faulthandler.dump_traceback_later(600, exit=True, file=sys.__stderr__)  # a hang: stacks, exit
    try:
        counts = fuzz.run(CI_CALLS, seed=CI_SEED, examples=examples)
    finally:
        faulthandler.cancel_dump_traceback_later()
    with capsys.disabled():
        print(f"\n  random fuzz: {sum(counts.values())} calls (seed {CI_SEED}): {dict(counts.most_common())}")
    bad = [k for k in counts if k not in ("ok", "ValueError")]
    assert not bad, "\n".join(f"{counts[k]} x {k}\n    {examples.get(k, '')}" for k in bad)
    # The fuzz reaches both sides: results and refusals.
    assert counts["ok"] >= CI_CALLS // 20 and counts["ValueError"] >= CI_CALLS // 4, dict(counts)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_output_buffers_are_what_is_returned(sparse):
    """`out=` and `grad_out=` are returned as given, whatever else shares their memory: the
    logits themselves (in place), or a view with the logits' layout."""
    z = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3]) if sparse else np.full((4, 5), 0.2, np.float32)
    fn = fx.sparse_softmax_cross_entropy_with_logits_and_grad if sparse else fx.softmax_cross_entropy_with_logits_and_grad
    want_loss, want_grad = fn(labels=labels, logits=z.copy())
    failures = []
    for what, logits_of, grad_out_of in [
        ("grad_out=logits", lambda a: a, lambda a: a),
        ("grad_out=the array, logits=a view of it", lambda a: a[...], lambda a: a),
        ("grad_out=a view, logits=the array", lambda a: a, lambda a: a[...]),
    ]:
        base = z.copy()
        logits, grad_out = logits_of(base), grad_out_of(base)
        out = np.empty(4, np.float32)
        loss, grad = fn(labels=labels, logits=logits, out=out, grad_out=grad_out)
        if loss is not out:
            failures.append(f"{what}: the loss returned is not out=")
        if grad is not grad_out:
            failures.append(f"{what}: the gradient returned is not grad_out= (it is {'the logits' if grad is logits else type(grad).__name__})")
        if loss.tobytes() != want_loss.tobytes() or base.tobytes() != want_grad.tobytes():
            failures.append(f"{what}: wrong values")
    assert not failures, failures
