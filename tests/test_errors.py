"""Every invalid input is a ValueError whose message names the argument, what was found and what
was expected (table-driven, each row run on every function it applies to); nothing else escapes:
no TypeError, OverflowError, IndexError or PanicException."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx

Z = np.zeros((3, 4), np.float32)
Y = np.array([0, 1, 2])
P = np.full((3, 4), 0.25, np.float32)

SPARSE_FNS = {
    "sparse": fx.sparse_softmax_cross_entropy_with_logits,
    "sparse_grad": fx.sparse_softmax_cross_entropy_with_logits_and_grad,
}
DENSE_FNS = {
    "dense": fx.softmax_cross_entropy_with_logits,
    "dense_v2": fx.softmax_cross_entropy_with_logits_v2,
    "dense_grad": fx.softmax_cross_entropy_with_logits_and_grad,
}
LOSS_FNS = {**SPARSE_FNS, **DENSE_FNS}
ROW_FNS = {"log_softmax": fx.log_softmax, "softmax": fx.softmax, "logsumexp": fx.logsumexp}
ALL_FNS = {**LOSS_FNS, **ROW_FNS}
VALID = object()  # placeholder: the valid labels of the function's family


class Unconvertible:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("no array here")


class BadRepr:
    """Neither convertible nor printable."""

    def __repr__(self):
        raise RuntimeError("no repr either")

    def __array__(self, dtype=None, copy=None):
        raise TypeError("no array")


class BadLen:
    def __len__(self):
        raise OverflowError("too long")

    def __getitem__(self, i):
        raise IndexError(i)


def _labels_for(name):
    return Y if name in SPARSE_FNS else P


def _expand(table, fns):
    """One pytest param per (row, function)."""
    out = []
    for row in table:
        case_id, args, kwargs, match = row
        for fn_name, fn in fns.items():
            out.append(pytest.param(fn_name, fn, args, kwargs, match, id=f"{case_id}-{fn_name}"))
    return out


def _resolve(fn_name, args, kwargs):
    labels = _labels_for(fn_name)
    args = tuple(labels if a is VALID else a for a in args)
    kwargs = {k: (labels if v is VALID else v) for k, v in kwargs.items()}
    return args, kwargs


# Rows: (id, positional args, keyword args, regex the message must match).
LOSS_CASES = [
    # calling convention
    ("positional-both", (VALID, Z), {}, "keyword arguments only"),
    ("positional-one", (VALID,), {"logits": Z}, "keyword arguments only"),
    ("missing-labels", (), {"logits": Z}, "labels"),
    ("missing-logits", (), {"labels": VALID}, "logits"),
    ("missing-both", (), {}, "labels|logits"),
    ("labels-None", (), {"labels": None, "logits": Z}, "labels is required"),
    ("logits-None", (), {"labels": VALID, "logits": None}, "logits is required"),
    ("unknown-keyword", (), {"labels": VALID, "logits": Z, "temperature": 2}, "temperature"),
    ("misspelled-keyword", (), {"labels": VALID, "logit": Z}, "logit"),
    # logits dtype / conversion
    ("logits-0d", (), {"labels": VALID, "logits": np.float32(1.0)}, "logits.*at least one dimension"),
    ("logits-bool", (), {"labels": VALID, "logits": Z.astype(bool)}, "logits has dtype bool.*expected"),
    ("logits-int32", (), {"labels": VALID, "logits": Z.astype(np.int32)}, "logits has dtype int32.*expected"),
    ("logits-int64", (), {"labels": VALID, "logits": Z.astype(np.int64)}, "logits has dtype int64.*expected"),
    ("logits-uint8", (), {"labels": VALID, "logits": Z.astype(np.uint8)}, "logits has dtype uint8.*expected"),
    ("logits-int-list", (), {"labels": VALID, "logits": [[1, 2, 3, 4]] * 3}, "logits has dtype int64.*expected"),
    ("logits-complex128", (), {"labels": VALID, "logits": Z.astype(complex)}, "logits has dtype complex128.*expected"),
    ("logits-complex64", (), {"labels": VALID, "logits": Z.astype(np.complex64)}, "logits has dtype complex64"),
    ("logits-object", (), {"labels": VALID, "logits": np.array([[None] * 4] * 3)}, "logits has dtype object.*expected"),
    ("logits-str", (), {"labels": VALID, "logits": np.array([["a"] * 4] * 3)}, "logits has dtype <U1.*expected"),
    ("logits-bytes", (), {"labels": VALID, "logits": np.array([[b"a"] * 4] * 3)}, r"logits has dtype \|S1"),
    ("logits-float128", (), {"labels": VALID, "logits": Z.astype(np.longdouble)}, "logits has dtype float128"),
    ("logits-datetime", (), {"labels": VALID, "logits": np.zeros((3, 4), "datetime64[s]")}, "logits has dtype datetime64"),
    ("logits-structured", (), {"labels": VALID, "logits": np.zeros((3, 4), [("a", "f4")])}, "logits has dtype"),
    ("logits-ragged", (), {"labels": VALID, "logits": [[1.0, 2.0, 3.0, 4.0], [3.0]]}, "logits could not be converted.*expected"),
    ("logits-unconvertible", (), {"labels": VALID, "logits": Unconvertible()}, "logits could not be converted"),
    ("logits-bad-repr", (), {"labels": VALID, "logits": BadRepr()}, "logits"),
    ("logits-object()", (), {"labels": VALID, "logits": object()}, "logits has dtype object"),
    ("logits-string", (), {"labels": VALID, "logits": "abc"}, "logits has dtype <U3"),
    ("logits-dict", (), {"labels": VALID, "logits": {}}, "logits"),
    # labels conversion
    ("labels-ragged", (), {"labels": [[0.0], [1.0, 2.0]], "logits": Z}, "labels could not be converted"),
    ("labels-unconvertible", (), {"labels": Unconvertible(), "logits": Z}, "labels could not be converted"),
    ("labels-object", (), {"labels": np.array([None, None, None]), "logits": Z}, "labels has dtype object"),
    ("labels-str", (), {"labels": np.array(["a", "b", "c"]), "logits": Z}, "labels has dtype <U1"),
    ("labels-complex", (), {"labels": np.ones((3, 4), complex), "logits": Z}, "labels has dtype complex128.*expected"),
    ("labels-bool", (), {"labels": np.ones((3, 4), bool), "logits": Z}, "labels has dtype bool.*expected"),
    # axis
    ("axis-too-large", (), {"labels": VALID, "logits": Z, "axis": 2}, r"axis 2 is out of range.*expected.*\[-2, 2\)"),
    ("axis-too-small", (), {"labels": VALID, "logits": Z, "axis": -3}, r"axis -3 is out of range.*\[-2, 2\)"),
    ("axis-huge", (), {"labels": VALID, "logits": Z, "axis": 2**70}, "axis"),
    ("axis-float", (), {"labels": VALID, "logits": Z, "axis": 1.0}, "axis = 1.0 is invalid.*integer"),
    ("axis-str", (), {"labels": VALID, "logits": Z, "axis": "1"}, "axis.*integer"),
    ("axis-None", (), {"labels": VALID, "logits": Z, "axis": None}, "axis.*integer"),
    ("axis-bool", (), {"labels": VALID, "logits": Z, "axis": True}, "axis.*integer"),
    ("axis-array", (), {"labels": VALID, "logits": Z, "axis": np.array([1])}, "axis.*integer"),
    # options
    ("reduction-unknown", (), {"labels": VALID, "logits": Z, "reduction": "avg"}, r"reduction = 'avg' is invalid.*'none', 'sum', 'mean'"),
    ("reduction-case", (), {"labels": VALID, "logits": Z, "reduction": "MEAN"}, "reduction = 'MEAN'"),
    ("reduction-None", (), {"labels": VALID, "logits": Z, "reduction": None}, "reduction"),
    ("reduction-bytes", (), {"labels": VALID, "logits": Z, "reduction": b"mean"}, "reduction"),
    ("reduction-int", (), {"labels": VALID, "logits": Z, "reduction": 1}, "reduction"),
    ("smoothing-above-1", (), {"labels": VALID, "logits": Z, "label_smoothing": 1.5}, r"label_smoothing = 1.5 is invalid.*\[0, 1\]"),
    ("smoothing-just-above-1", (), {"labels": VALID, "logits": Z, "label_smoothing": 1 + 1e-12}, "label_smoothing"),
    ("smoothing-negative", (), {"labels": VALID, "logits": Z, "label_smoothing": -0.1}, r"label_smoothing = -0.1.*\[0, 1\]"),
    ("smoothing-NaN", (), {"labels": VALID, "logits": Z, "label_smoothing": float("nan")}, "label_smoothing = NaN"),
    ("smoothing-inf", (), {"labels": VALID, "logits": Z, "label_smoothing": float("inf")}, "label_smoothing"),
    ("smoothing-None", (), {"labels": VALID, "logits": Z, "label_smoothing": None}, "label_smoothing"),
    ("smoothing-str", (), {"labels": VALID, "logits": Z, "label_smoothing": "0.1"}, "label_smoothing"),
    ("smoothing-array", (), {"labels": VALID, "logits": Z, "label_smoothing": np.array([0.1, 0.2])}, "label_smoothing"),
    ("smoothing-complex", (), {"labels": VALID, "logits": Z, "label_smoothing": 0.1j}, "label_smoothing"),
    ("weight-short", (), {"labels": VALID, "logits": Z, "weight": np.ones(3)}, r"weight has shape \(3,\).*\(4,\)"),
    ("weight-long", (), {"labels": VALID, "logits": Z, "weight": np.ones(5)}, r"weight has shape \(5,\)"),
    ("weight-2d", (), {"labels": VALID, "logits": Z, "weight": np.ones((4, 1))}, r"weight has shape \(4, 1\)"),
    ("weight-scalar", (), {"labels": VALID, "logits": Z, "weight": 1.0}, r"weight has shape \(\)"),
    ("weight-negative", (), {"labels": VALID, "logits": Z, "weight": [1.0, 1.0, -1.0, 1.0]}, r"weight\[2\] = -1.*expected"),
    ("weight-NaN", (), {"labels": VALID, "logits": Z, "weight": [1.0, np.nan, 1.0, 1.0]}, r"weight\[1\] = NaN"),
    ("weight-inf", (), {"labels": VALID, "logits": Z, "weight": [1.0, 1.0, 1.0, np.inf]}, r"weight\[3\] = inf"),
    ("weight-minus-inf", (), {"labels": VALID, "logits": Z, "weight": [-np.inf, 1.0, 1.0, 1.0]}, r"weight\[0\] = -inf"),
    ("weight-strings", (), {"labels": VALID, "logits": Z, "weight": ["a"] * 4}, "weight has dtype"),
    ("weight-complex", (), {"labels": VALID, "logits": Z, "weight": np.ones(4, complex)}, "weight has dtype complex128"),
    ("weight-bool", (), {"labels": VALID, "logits": Z, "weight": np.ones(4, bool)}, "weight has dtype bool"),
    ("weight-ragged", (), {"labels": VALID, "logits": Z, "weight": [[1.0, 1.0], [1.0]]}, "weight could not be converted"),
    ("weight-object", (), {"labels": VALID, "logits": Z, "weight": object()}, "weight"),
]

SPARSE_CASES = [
    ("labels-shape", (), {"labels": np.zeros(4, int), "logits": Z}, r"labels shape \(4,\).*expected labels of shape \(3,\)"),
    ("labels-rank-high", (), {"labels": np.zeros((3, 1), int), "logits": Z}, r"labels shape \(3, 1\).*expected.*\(3,\)"),
    ("labels-full-shape", (), {"labels": np.zeros((3, 4), int), "logits": Z}, r"labels shape \(3, 4\).*expected.*\(3,\)"),
    ("labels-0d-rank2-logits", (), {"labels": np.array(0), "logits": Z}, r"labels shape \(\).*expected.*\(3,\)"),
    ("labels-1d-rank1-logits", (), {"labels": np.array([0]), "logits": np.zeros(3)}, r"labels shape \(1,\).*expected.*\(\)"),
    ("labels-shape-axis0", (), {"labels": Y, "logits": Z, "axis": 0}, r"labels shape \(3,\).*expected.*\(4,\)"),
    ("label-too-large", (), {"labels": np.array([0, 4, 1]), "logits": Z}, r"labels\[1\] = 4 is out of range.*\[0, 4\)"),
    ("label-negative", (), {"labels": np.array([0, 1, -1]), "logits": Z}, r"labels\[2\] = -1 is out of range.*\[0, 4\)"),
    ("label-first-offender", (), {"labels": np.array([5, 0, 9]), "logits": Z}, r"labels\[0\] = 5 is out of range"),
    ("label-position-nd", (), {"labels": np.array([[0, 9]]), "logits": np.zeros((1, 2, 3))}, r"labels\[0, 1\] = 9 .*\[0, 3\)"),
    ("label-position-axis1", (), {"labels": np.array([[0, 1, 2, 5]]), "logits": np.zeros((1, 3, 4)), "axis": 1}, r"labels\[0, 3\] = 5 .*\[0, 3\)"),
    ("label-int8-min", (), {"labels": np.array([0, -128, 0], np.int8), "logits": Z}, r"labels\[1\] = -128"),
    ("label-uint8-max", (), {"labels": np.array([0, 0, 255], np.uint8), "logits": Z}, r"labels\[2\] = 255"),
    ("label-int64-min", (), {"labels": np.array([np.iinfo(np.int64).min, 0, 0]), "logits": Z}, r"labels\[0\] = -9223372036854775808"),
    ("label-uint64-max", (), {"labels": np.array([2**64 - 1, 0, 0], np.uint64), "logits": Z}, r"labels\[0\] = 18446744073709551615"),
    ("label-rank1-0d", (), {"labels": np.array(3), "logits": np.zeros(3)}, r"labels\[\(\)\]|labels = 3|labels.*3 is out of range"),
    ("label-out-with-ignore", (), {"labels": np.array([-100, 4, 0]), "logits": Z, "ignore_index": -100}, r"labels\[1\] = 4 is out of range.*\[0, 4\)"),
    ("label-float", (), {"labels": Y.astype(np.float32), "logits": Z}, "labels has dtype float32.*expected an integer"),
    ("label-float-list", (), {"labels": [0.0, 1.0, 2.0], "logits": Z}, "labels has dtype float64.*integer"),
    ("label-float16", (), {"labels": Y.astype(np.float16), "logits": Z}, "labels has dtype float16"),
    ("label-bool", (), {"labels": Y > 0, "logits": Z}, "labels has dtype bool"),
    ("label-complex", (), {"labels": Y.astype(complex), "logits": Z}, "labels has dtype complex128"),
    ("dim-on-sparse", (), {"labels": Y, "logits": Z, "dim": 1}, "dim"),
    ("ignore_index-float", (), {"labels": Y, "logits": Z, "ignore_index": 1.0}, "ignore_index = 1.0 is invalid.*integer"),
    ("ignore_index-huge", (), {"labels": Y, "logits": Z, "ignore_index": 2**80}, "ignore_index"),
    ("ignore_index-str", (), {"labels": Y, "logits": Z, "ignore_index": "x"}, "ignore_index"),
    ("ignore_index-bool", (), {"labels": Y, "logits": Z, "ignore_index": True}, "ignore_index"),
    ("zero-classes", (), {"labels": Y, "logits": np.zeros((3, 0), np.float32)}, "0 classes.*expected at least one class"),
    ("zero-classes-rank1", (), {"labels": np.array(0), "logits": np.zeros(0, np.float32)}, "0 classes"),
]

DENSE_CASES = [
    ("not-broadcastable", (), {"labels": np.zeros((3, 5)), "logits": Z}, r"labels shape \(3, 5\) does not broadcast.*\(3, 4\).*expected"),
    ("not-broadcastable-batch", (), {"labels": np.zeros((2, 4)), "logits": Z}, r"labels shape \(2, 4\) does not broadcast"),
    ("not-broadcastable-rank3", (), {"labels": np.zeros((2, 2, 4)), "logits": Z}, r"labels shape \(2, 2, 4\) does not broadcast"),
    ("labels-int", (), {"labels": P.astype(int), "logits": Z}, "labels has dtype int64.*expected a floating dtype"),
    ("labels-int-list", (), {"labels": [[0, 1, 0, 0]] * 3, "logits": Z}, "labels has dtype int64.*floating"),
    ("labels-uint8", (), {"labels": P.astype(np.uint8), "logits": Z}, "labels has dtype uint8"),
    ("ignore_index-on-dense", (), {"labels": P, "logits": Z, "ignore_index": 1}, "ignore_index"),
    ("axis-and-dim-differ", (), {"labels": P, "logits": Z, "axis": 0, "dim": 1}, "axis = 0 and dim = 1 name different axes"),
    # An explicit -1 is an axis too (only the default gives way to dim).
    ("axis-last-and-dim-differ", (), {"labels": P, "logits": Z, "axis": -1, "dim": 0}, "axis = -1 and dim = 0 name different"),
    ("axis-out-of-range-with-dim", (), {"labels": P, "logits": Z, "axis": 2, "dim": 0}, "axis = 2 and dim = 0"),
    ("dim-out-of-range", (), {"labels": P, "logits": Z, "dim": 5}, r"dim.* 5 .*out of range|dim = 5"),
    ("dim-float", (), {"labels": P, "logits": Z, "dim": 1.0}, "dim = 1.0 is invalid.*integer"),
    ("dim-str", (), {"labels": P, "logits": Z, "dim": "0"}, "dim"),
    ("zero-classes", (), {"labels": np.zeros((3, 0)), "logits": np.zeros((3, 0), np.float32)}, "0 classes.*expected at least one class"),
    ("zero-classes-broadcast", (), {"labels": np.zeros(0), "logits": np.zeros((3, 0), np.float32)}, "0 classes"),
]

ROW_CASES = [
    ("positional-axis", (Z, 1), {}, "axis|keyword|positional"),
    ("missing-logits", (), {}, "logits"),
    ("unknown-keyword", (Z,), {"dim": 1}, "dim"),
    ("labels-keyword", (Z,), {"labels": Y}, "labels"),
    ("logits-None", (None,), {}, "logits is required"),
    ("logits-0d", (np.float32(1.0),), {}, "logits.*at least one dimension"),
    ("logits-bool", (Z.astype(bool),), {}, "logits has dtype bool.*expected"),
    ("logits-int", (Z.astype(np.int16),), {}, "logits has dtype int16.*expected"),
    ("logits-int-list", ([1, 2, 3],), {}, "logits has dtype int64"),
    ("logits-complex", (Z.astype(complex),), {}, "logits has dtype complex128"),
    ("logits-object", (np.array([None, 1.0]),), {}, "logits has dtype object"),
    ("logits-str", ("abc",), {}, "logits has dtype <U3"),
    ("logits-ragged", ([[1.0], [1.0, 2.0]],), {}, "logits could not be converted"),
    ("logits-unconvertible", (Unconvertible(),), {}, "logits could not be converted"),
    ("axis-too-large", (Z,), {"axis": 2}, r"axis 2 is out of range.*\[-2, 2\)"),
    ("axis-too-small", (Z,), {"axis": -3}, r"axis -3 is out of range"),
    ("axis-huge", (Z,), {"axis": 2**70}, "axis"),
    ("axis-float", (Z,), {"axis": 1.5}, "axis = 1.5 is invalid"),
    ("axis-bool", (Z,), {"axis": False}, "axis"),
    ("axis-None", (Z,), {"axis": None}, "axis"),
]

PARAMS = (
    _expand(LOSS_CASES, LOSS_FNS)
    + _expand(SPARSE_CASES, SPARSE_FNS)
    + _expand(DENSE_CASES, DENSE_FNS)
    + _expand(ROW_CASES, ROW_FNS)
    + [
        pytest.param(
            "dense_grad",
            fx.softmax_cross_entropy_with_logits_and_grad,
            (),
            {"labels": np.zeros((2, 3, 4)), "logits": Z},
            "full broadcast shape",
            id="grad-needs-broadcast-logits-dense_grad",
        )
    ]
)


@pytest.mark.parametrize("fn_name,fn,args,kwargs,match", PARAMS)
def test_invalid_input_is_a_value_error(fn_name, fn, args, kwargs, match):
    args, kwargs = _resolve(fn_name, args, kwargs)
    # pytest.raises(ValueError) lets any other exception type (TypeError, ...) fail the test.
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert type(info.value) is ValueError, type(info.value)
    assert len(str(info.value)) < 1000, "message too long to read"


@pytest.mark.parametrize("fn_name,fn", list(LOSS_FNS.items()), ids=list(LOSS_FNS))
def test_name_is_accepted_and_ignored(fn_name, fn):
    labels = _labels_for(fn_name)
    want = fn(labels=labels, logits=Z)
    for name in ("loss", None, "x" * 1000):
        got = fn(labels=labels, logits=Z, name=name)
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert a.tobytes() == b.tobytes()


GARBAGE = [
    None,
    True,
    0,
    -1,
    7,
    2**70,
    -(2**70),
    1.5,
    float("nan"),
    float("inf"),
    1j,
    "x",
    "",
    b"mean",
    object(),
    [],
    [[]],
    [1, [2]],
    {},
    {"a": 1},
    (1, 2),
    np.array([]),
    np.zeros((2, 2, 2)),
    np.array(["a"]),
    np.array([None]),
    np.array([1, 2], np.uint64),
    Unconvertible(),
    BadRepr(),
    BadLen(),
    np.float64("nan"),
    np.int8(-1),
]
ARGUMENTS = {
    "sparse": ["labels", "logits", "axis", "name", "reduction", "label_smoothing", "weight", "ignore_index"],
    "sparse_grad": ["labels", "logits", "axis", "name", "reduction", "label_smoothing", "weight", "ignore_index"],
    "dense": ["labels", "logits", "axis", "dim", "name", "reduction", "label_smoothing", "weight"],
    "dense_v2": ["labels", "logits", "axis", "dim", "name", "reduction", "label_smoothing", "weight"],
    "dense_grad": ["labels", "logits", "axis", "dim", "name", "reduction", "label_smoothing", "weight"],
    "log_softmax": ["logits", "axis"],
    "softmax": ["logits", "axis"],
    "logsumexp": ["logits", "axis"],
}


@pytest.mark.parametrize(
    "fn_name,argument", [pytest.param(f, a, id=f"{f}-{a}") for f, args in ARGUMENTS.items() for a in args]
)
def test_only_value_errors_escape(fn_name, argument):
    """Any value in any argument: a result or a ValueError, never another exception."""
    fn = ALL_FNS[fn_name]
    base = {"logits": Z} if fn_name in ROW_FNS else {"labels": _labels_for(fn_name), "logits": Z}
    for value in GARBAGE:
        kwargs = dict(base, **{argument: value})
        try:
            fn(**kwargs)
        except ValueError:
            pass
        except BaseException as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{fn_name}({argument}={type(value).__name__}) raised {type(e).__name__}: {e}")


@pytest.mark.parametrize("fn_name", list(ROW_FNS))
def test_row_functions_take_logits_by_position_or_keyword(fn_name):
    # `log_softmax(logits, *, axis=-1)`; misuse of the signature is in ROW_CASES above.
    fn = ROW_FNS[fn_name]
    assert fn(logits=Z, axis=0).tobytes() == fn(Z, axis=0).tobytes()


def test_error_reports_first_offender_in_memory_order_independent_layout():
    # The index reported is the label's position in the labels array, whatever its strides.
    y = np.array([[0, 1, 2], [1, 7, 0]])
    z = np.zeros((2, 3, 4), np.float32)
    for labels in (y, np.asfortranarray(y), np.flip(np.flip(y).copy())):
        with pytest.raises(ValueError, match=r"labels\[1, 1\] = 7 is out of range.*\[0, 4\)"):
            fx.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z)


def test_no_partial_output_on_error():
    out = np.full(3, 7.0, np.float32)
    with pytest.raises(ValueError):
        fx.sparse_softmax_cross_entropy_with_logits(labels=np.array([0, 1, 9]), logits=Z, out=out)
    assert np.all(out == 7.0)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_every_label_of_a_large_batch_is_checked(dtype):
    # Past 32768 labels the check runs in parallel chunks, class indices first, then the
    # exact test (ignore_index included) where that finds anything else.
    rows, classes = 100_000, 4
    y = (np.arange(rows) % classes).astype(dtype)
    z = np.zeros((rows, classes), np.float32)
    info = np.iinfo(dtype)
    bad = [classes, info.max] + ([-1, info.min] if info.min < 0 else [])
    for k, value in enumerate(bad):
        labels = y.copy()
        at = 40_000 + 17_011 * k
        labels[at] = value
        labels[at + 5000] = value
        with pytest.raises(ValueError, match=rf"labels\[{at}\] = {value} is out of range.*\[0, {classes}\)"):
            fx.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z)
        if info.min < 0 and value != -1:
            # Ignored labels pass; the bad one is still found.
            labels[::7] = -1
            labels[at] = value
            with pytest.raises(ValueError, match=rf"labels\[{at}\] = {value} is out of range"):
                fx.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z, ignore_index=-1)
    labels = y.copy()
    if info.min < 0:
        labels[::3] = -1
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z, ignore_index=-1)
    assert np.all(loss == np.where(labels == -1, 0.0, np.float32(np.log(4.0))))
