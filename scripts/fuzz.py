"""Fuzz fastxent's Python entry points with random garbage and near-valid inputs.

Every call must either return a result of the right type (ndarrays of a floating dtype; a
(loss, grad) tuple for the `_and_grad` functions; the logits' dtype and shape where those are
known; the `out=` buffer when one is given) without modifying its inputs, or raise ValueError.
Anything else — another exception type, a wrong result type, a modified input, a crash, a
hang — is a bug, and is counted under its own outcome.

    python scripts/fuzz.py 200000            # N calls (seed 0), prints the outcome counts
    python scripts/fuzz.py 200000 --seed 7   # another sequence
    python scripts/fuzz.py --show 1234       # print call number 1234 of seed 0 and run it

Each call draws from its own generator, seeded by (seed, call number), so any call can be
replayed alone with --show. A crash (segfault) prints the Python stack (faulthandler) after the
last "at call" progress line; a call that hangs for --hang seconds dumps every thread's stack
and exits with status 3. The exit status is 0 when every outcome is "ok" or "ValueError".

tests/test_fuzz.py runs a bounded, seeded sample of this in CI.
"""

from __future__ import annotations

import argparse
import array
import collections
import decimal
import faulthandler
import fractions
import random
import sys
import time
import warnings
from typing import Any, Callable

import ml_dtypes
import numpy as np

import fastxent as fx

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
INTS = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]
ODD_DTYPES = [
    np.dtype(np.bool_), np.dtype(np.complex64), np.dtype(np.complex128), np.dtype(np.longdouble),
    np.dtype(object), np.dtype("U3"), np.dtype("S2"), np.dtype("M8[s]"), np.dtype("m8[s]"),
    np.dtype([("a", "f4"), ("b", "i4")]), np.dtype("V4"), np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(ml_dtypes.int4), np.dtype(np.float64).newbyteorder(">"),
]

LOSSES = {
    "softmax_cross_entropy_with_logits": (fx.softmax_cross_entropy_with_logits, "dense", False),
    "softmax_cross_entropy_with_logits_v2": (fx.softmax_cross_entropy_with_logits_v2, "dense", False),
    "softmax_cross_entropy_with_logits_and_grad": (fx.softmax_cross_entropy_with_logits_and_grad, "dense", True),
    "sparse_softmax_cross_entropy_with_logits": (fx.sparse_softmax_cross_entropy_with_logits, "sparse", False),
    "sparse_softmax_cross_entropy_with_logits_and_grad": (
        fx.sparse_softmax_cross_entropy_with_logits_and_grad, "sparse", True),
}
ROWS = {"log_softmax": fx.log_softmax, "softmax": fx.softmax, "logsumexp": fx.logsumexp}
KEYWORDS = ["labels", "logits", "axis", "dim", "name", "reduction", "label_smoothing", "weight",
            "ignore_index", "out", "grad_out"]


# ---------------------------------------------------------------------------------------------
# Hostile objects


class Shifty:
    """`__array__` returns something different on every call: arrays of other shapes and
    dtypes, and now and then not an array at all."""

    def __init__(self, r: random.Random) -> None:
        self.r = r

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        kind = self.r.randrange(6)
        if kind == 0:
            return [1.0, 2.0]
        if kind == 1:
            return None
        shape = tuple(self.r.randint(0, 3) for _ in range(self.r.randint(0, 3)))
        dt = self.r.choice(FLOATS + INTS[:2] + [np.dtype(object)])
        return np.ones(shape, dt)


class RaisesInArray:
    def __init__(self, exc: type[Exception]) -> None:
        self.exc = exc

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise self.exc("raised in __array__")


class Interface:
    """A valid `__array_interface__` over a real array (kept alive by the object)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.__array_interface__ = a.__array_interface__


class BadInterface:
    def __init__(self, r: random.Random) -> None:
        self.__array_interface__ = r.choice(
            [{}, {"shape": (2,)}, {"shape": (2,), "typestr": "<f8"}, {"version": 3, "typestr": 5, "shape": "x"}, None]
        )


class RaisingInterface:
    @property
    def __array_interface__(self) -> Any:
        raise RuntimeError("raised in __array_interface__")


class DLPackOnly:
    """Only `__dlpack__` (as a PyTorch CPU tensor would be seen), over a real array."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self.a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self.a.__dlpack_device__()


class BadDLPack:
    def __init__(self, r: random.Random) -> None:
        self.r = r

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        if self.r.random() < 0.5:
            raise RuntimeError("raised in __dlpack__")
        return 42

    def __dlpack_device__(self) -> Any:
        return (1, 0)


class Mutator:
    """`__array__` returns `value`, after changing `victim` (another argument of the call)."""

    def __init__(self, value: np.ndarray, victim: Any, r: random.Random) -> None:
        self.value, self.victim, self.r = value, victim, r

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        if isinstance(self.victim, np.ndarray) and self.victim.flags.writeable and self.victim.size:
            self.victim[...] = self.r.choice([np.nan, np.inf, 0.0, -np.inf])
        return self.value


class BadSequence:
    """Looks like a sequence; raises half way through."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> float:
        if i == 1:
            raise RuntimeError("raised in __getitem__")
        if i >= 3:
            raise IndexError(i)
        return 1.0


class BadFloat:
    def __float__(self) -> float:
        raise RuntimeError("raised in __float__")


class BadIndex:
    def __index__(self) -> int:
        raise RuntimeError("raised in __index__")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("raised in __repr__")


class Sub(np.ndarray):
    """An ndarray subclass."""


def deep_list(depth: int) -> Any:
    x: Any = 1.0
    for _ in range(depth):
        x = [x]
    return x


# ---------------------------------------------------------------------------------------------
# Values


def garbage(r: random.Random) -> Any:
    """Anything at all."""
    nr = np.random.default_rng(r.getrandbits(32))
    choices: list[Callable[[], Any]] = [
        lambda: None,
        lambda: r.choice([True, False]),
        lambda: r.choice([0, 1, -1, 2, 3, -100, 2**31, 2**63, 2**64, -(2**63) - 1, 2**100, -(2**100)]),
        lambda: r.choice([float("nan"), float("inf"), -float("inf"), -0.0, 1e308, 5e-324, 0.5, 1.5, -0.1]),
        lambda: complex(1, 2),
        lambda: r.choice(["", "mean", "sum", "none", "MEAN", "labels", "1.0", "\x00", "é" * 100]),
        lambda: r.choice([b"mean", bytearray(b"\x00\x01"), memoryview(b"abcd")]),
        lambda: r.choice([{}, {"a": 1}, {1, 2}, frozenset(), (), (1, 2), range(5), slice(1), Ellipsis]),
        lambda: r.choice([object(), int, len, lambda: 0, (i for i in range(3)), BadRepr()]),
        lambda: r.choice([[], [[]], [1, [2, 3]], [[1.0, 2.0], [3.0]], [1, "a"], [None], [[1, 2], [3, None]]]),
        lambda: r.choice([[2**70], [-(2**70)], [2**63], [2**64 - 1], [-(2**63)], [float("nan")], [1, 2.5]]),
        lambda: deep_list(r.choice([20, 40, 70])),
        lambda: np.float32(r.choice([np.nan, 1.0, -1.0])),
        lambda: r.choice([np.int64(-1), np.uint64(2**64 - 1), np.bool_(True), np.str_("sum"), np.int8(3)]),
        lambda: r.choice([np.datetime64("2020-01-01"), np.timedelta64(1, "s"), np.void(b"ab")]),
        lambda: np.array(r.choice([0.5, 1, np.nan, 2**40])),  # 0-d arrays
        lambda: odd_array(r, nr),
        lambda: plausible_float_array(r, nr, tuple(r.randint(0, 4) for _ in range(r.randint(0, 3)))),
        lambda: nr.integers(-5, 5, tuple(r.randint(0, 4) for _ in range(r.randint(0, 3)))).astype(r.choice(INTS)),
        lambda: Shifty(r),
        lambda: RaisesInArray(r.choice([RuntimeError, TypeError, ValueError, MemoryError, OverflowError, KeyError])),
        lambda: r.choice([BadInterface(r), RaisingInterface(), BadDLPack(r), BadSequence()]),
        lambda: r.choice([BadFloat(), BadIndex(), [BadFloat(), 1.0]]),
        lambda: array.array("d", [1.0, 2.0, 3.0]),
        lambda: r.choice([decimal.Decimal("0.1"), fractions.Fraction(1, 3), decimal.Decimal("nan")]),
        lambda: np.empty((1,) * r.choice([10, 32, 64])),
    ]
    return r.choice(choices)()


def odd_array(r: random.Random, nr: np.random.Generator) -> np.ndarray:
    shape = tuple(r.randint(0, 3) for _ in range(r.randint(0, 3)))
    dt = r.choice(ODD_DTYPES)
    try:
        return np.zeros(shape, dt) if dt.kind in "OUSMmV" else nr.normal(size=shape).astype(dt)
    except (TypeError, ValueError):
        return np.zeros(shape, dt)


def plausible_float_array(r: random.Random, nr: np.random.Generator, shape: tuple[int, ...], dtype: Any = None) -> np.ndarray:
    z = nr.normal(0, r.choice([0.1, 3.0, 50.0]), shape)
    if z.size and r.random() < 0.3:
        z.flat[r.randrange(z.size)] = r.choice([np.nan, np.inf, -np.inf, 1e30, -1e30, 60.0])
    with np.errstate(over="ignore"):
        return z.astype(dtype if dtype is not None else r.choice(FLOATS))


def layout(r: random.Random, a: np.ndarray) -> Any:
    """The same values in another layout or container."""
    kind = r.randrange(18)
    if kind == 0 and a.ndim:
        return np.asfortranarray(a)
    if kind == 1 and a.ndim:
        return np.flip(np.flip(a).copy())
    if kind == 2 and a.ndim:
        big = np.repeat(a, 2, axis=-1)
        return big[..., ::2]
    if kind == 3 and a.ndim > 1:
        return np.ascontiguousarray(a.T).T
    if kind == 4 and a.dtype.itemsize > 1:
        buf = bytearray(a.nbytes + 1)
        out = np.frombuffer(buf, a.dtype, a.size, offset=1).reshape(a.shape)
        out[...] = a
        return out
    if kind == 5 and a.dtype.itemsize > 1 and a.dtype != BF16:
        return a.astype(a.dtype.newbyteorder("S"))
    if kind == 6:
        b = a.copy()
        b.flags.writeable = False
        return b
    if kind == 7 and a.ndim and a.shape[0]:
        return np.broadcast_to(a[:1], a.shape)
    if kind == 8 and a.dtype in (np.float64, np.int64):
        return a.tolist()
    if kind == 9:
        return Interface(a)
    if kind == 10 and a.dtype.kind in "fiu" and a.dtype != BF16 and a.dtype.isnative:
        return DLPackOnly(a)
    if kind == 11:
        return a.view(Sub)
    if kind == 12 and a.ndim == 2:
        return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    return a


# ---------------------------------------------------------------------------------------------
# One call


def draw_call(r: random.Random) -> tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    nr = np.random.default_rng(r.getrandbits(32))
    if r.random() < 0.25:
        name = r.choice(list(ROWS))
        fn = ROWS[name]
        shape = tuple(r.randint(0, 5) for _ in range(r.randint(0, 3)))
        logits = layout(r, plausible_float_array(r, nr, shape)) if r.random() < 0.7 else garbage(r)
        args: tuple[Any, ...] = (logits,)
        kwargs: dict[str, Any] = {}
        if r.random() < 0.6:
            kwargs["axis"] = r.randint(-3, 2) if r.random() < 0.6 else garbage(r)
        if r.random() < 0.03:  # misuse of the signature
            choice = r.randrange(3)
            if choice == 0:
                args = (logits, r.randint(-2, 1))
            elif choice == 1:
                args, kwargs = (), {"logits": logits}
            else:
                kwargs[r.choice(["name", "dim", "bogus"])] = garbage(r)
        return name, fn, args, kwargs

    name = r.choice(list(LOSSES))
    fn, kind, with_grad = LOSSES[name]
    shape = tuple(r.randint(0, 5) for _ in range(r.randint(0, 3)))
    axis = r.randint(-len(shape), len(shape) - 1) if shape else -1
    z = plausible_float_array(r, nr, shape)
    c = z.shape[axis] if z.ndim else 0
    batch = tuple(n for d, n in enumerate(z.shape) if d != axis % max(z.ndim, 1))
    if kind == "sparse":
        y: Any = nr.integers(0, max(c, 1), batch)
        if y.size and r.random() < 0.2:
            y.flat[r.randrange(y.size)] = r.choice([-1, c, -100, 2**40, -(2**62)])
        y = y.astype(r.choice(INTS[:4])) if r.random() < 0.3 and np.all((y > -128) & (y < 127)) else y
        if r.random() < 0.1:
            y = y.tolist() if isinstance(y, np.ndarray) else y
            if isinstance(y, list) and y and r.random() < 0.5:
                y[0] = r.choice([2**70, -(2**70), 2**64, 2**63, 1.5, None, "0"])
    else:
        lshape = shape if r.random() < 0.7 else tuple(n if r.random() < 0.6 else 1 for n in shape)
        y = nr.random(lshape).astype(r.choice(FLOATS))
    kwargs = {}
    for key in KEYWORDS:
        p = r.random()
        if key == "logits":
            value = layout(r, z) if p < 0.8 else garbage(r)
        elif key == "labels":
            value = layout(r, y) if p < 0.8 and isinstance(y, np.ndarray) else y if p < 0.8 else garbage(r)
        elif p < 0.75:
            continue  # left at its default
        elif p < 0.9:
            value = {
                "axis": axis,
                "dim": axis,
                "name": "loss",
                "reduction": r.choice(["none", "sum", "mean"]),
                "label_smoothing": r.choice([0.0, 0.1, 1.0]),
                "weight": nr.uniform(0, 2, max(c, 0)),
                "ignore_index": r.choice([-100, 0, 1]),
                "out": np.zeros(batch, z.dtype),
                "grad_out": r.choice([np.zeros(z.shape, z.dtype), z]),
            }[key]
            if key == "weight" and r.random() < 0.3:
                value = value.copy()
                if value.size:
                    value[r.randrange(value.size)] = r.choice([np.nan, np.inf, -1.0])
        else:
            value = garbage(r)
        kwargs[key] = value
    if r.random() < 0.03 and isinstance(kwargs.get("labels"), np.ndarray):
        kwargs["labels"] = Mutator(kwargs["labels"], kwargs.get(r.choice(["logits", "weight", "out"])), r)
    if r.random() < 0.05:
        kwargs["bogus"] = garbage(r)
    args = ()
    if r.random() < 0.04:
        args = (kwargs.pop("labels", None), kwargs.pop("logits", None))[: r.randint(1, 2)]
    return name, fn, args, kwargs


def snapshot(x: Any) -> Any:
    return (x.shape, x.dtype, x.tobytes()) if isinstance(x, np.ndarray) else None


def check_result(name: str, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """None when `result` is of the right type; otherwise what is wrong."""
    with_grad = name.endswith("_and_grad")
    if with_grad:
        if not (isinstance(result, tuple) and len(result) == 2):
            return f"expected a (loss, grad) tuple, got {type(result).__name__}"
        parts = list(result)
    else:
        parts = [result]
    for part in parts:
        if not isinstance(part, np.ndarray):
            return f"result of type {type(part).__name__}"
        if part.dtype not in FLOATS:
            return f"result of dtype {part.dtype}"
    logits = args[0] if args else kwargs.get("logits")
    if type(logits) is np.ndarray and logits.dtype.kind == "f" or isinstance(logits, np.ndarray) and logits.dtype == BF16:
        want = logits.dtype.newbyteorder("=") if logits.dtype != BF16 else BF16
        if any(p.dtype != want for p in parts):
            return f"result dtype {[str(p.dtype) for p in parts]} for logits of dtype {logits.dtype}"
        if name in ("log_softmax", "softmax") and parts[0].shape != logits.shape:
            return f"{name} of shape {parts[0].shape} for logits of shape {logits.shape}"
        if with_grad and parts[1].shape != logits.shape:
            return f"gradient of shape {parts[1].shape} for logits of shape {logits.shape}"
    if kwargs.get("out") is not None and parts[0] is not kwargs["out"]:
        return "out= given but not returned"
    if with_grad and kwargs.get("grad_out") is not None and parts[1] is not kwargs["grad_out"]:
        return "grad_out= given but not returned"
    return None


def describe(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    def short(v: Any) -> str:
        if isinstance(v, np.ndarray):
            return f"{type(v).__name__}({v.dtype}, {v.shape}, strides={v.strides})"
        try:
            text = repr(v)
        except Exception:
            text = f"<{type(v).__name__}>"
        return text if len(text) < 60 else f"<{type(v).__name__}>"

    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return f"fx.{name}({', '.join(parts)})"


def one_call(r: random.Random) -> tuple[str, str]:
    """(outcome, description of the call). Outcome "ok", "ValueError" or what went wrong."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (drawing the inputs may overflow a cast: not the call's doing)
        name, fn, args, kwargs = draw_call(r)
    return call_and_check(name, fn, args, kwargs)


def same_memory(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are arrays over the same memory with the same layout (grad_out laid
    over the logits: an in-place gradient, which modifies them by design)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    layout = (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype)
    return layout == (b.__array_interface__["data"][0], b.shape, b.strides, b.dtype)


def call_and_check(name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
    """Make the call; (outcome, description of the call when the outcome is bad). A warning
    the call lets out (a NumPy RuntimeWarning, a DeprecationWarning) counts as an exception."""
    mutator = any(isinstance(v, Mutator) for v in kwargs.values())  # (changes the others itself)
    inputs = {} if mutator else {k: snapshot(v) for k, v in kwargs.items() if k in ("labels", "logits", "weight")}
    in_place = same_memory(kwargs.get("grad_out"), kwargs.get("logits"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = fn(*args, **kwargs)
    except ValueError:
        return "ValueError", ""
    except Exception as e:  # noqa: BLE001 - the point: anything else is a bug
        return f"{type(e).__name__} from {name}: {str(e)[:100]}", describe(name, args, kwargs)
    problem = check_result(name, result, args, kwargs)
    if problem is None:
        for k, before in inputs.items():
            if before is not None and snapshot(kwargs[k]) != before and not (k == "logits" and in_place):
                problem = f"{k} was modified"
    if problem:
        return f"bad result from {name}: {problem}", describe(name, args, kwargs)
    return "ok", ""


def call_rng(seed: int, i: int) -> random.Random:
    return random.Random(f"{seed}:{i}")


def run(n: int, seed: int = 0, start: int = 0, progress: float = 0.0, examples: dict[str, str] | None = None) -> collections.Counter:
    """`n` calls; the outcome counts. `examples` (if given) receives one call per bad outcome."""
    counts: collections.Counter = collections.Counter()
    last = time.monotonic()
    try:
        for i in range(start, start + n):
            if progress and time.monotonic() - last > progress:
                print(f"at call {i}: {dict(counts)}", file=sys.stderr, flush=True)
                last = time.monotonic()
            outcome, call = one_call(call_rng(seed, i))
            counts[outcome] += 1
            if call and examples is not None:
                examples.setdefault(outcome, f"call {i} (seed {seed}): {call}")
    finally:
        fx.set_num_threads(0)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=100_000, help="number of calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first call number")
    parser.add_argument("--show", type=int, help="print call number SHOW and run it alone")
    parser.add_argument("--hang", type=float, default=120.0, help="seconds before a call counts as hung")
    a = parser.parse_args()
    faulthandler.enable()
    if a.show is not None:
        name, fn, args, kwargs = draw_call(call_rng(a.seed, a.show))
        print(describe(name, args, kwargs))
        print(one_call(call_rng(a.seed, a.show)))
        return 0
    start = time.monotonic()
    examples: dict[str, str] = {}
    counts: collections.Counter = collections.Counter()
    # In chunks, so that a hang is caught per chunk with a stack dump (faulthandler).
    chunk = 1000
    last = start
    for lo in range(a.start, a.start + a.n, chunk):
        if time.monotonic() - last > 30:
            print(f"at call {lo}: {dict(counts)}", file=sys.stderr, flush=True)
            last = time.monotonic()
        faulthandler.dump_traceback_later(a.hang, exit=True)
        counts += run(min(chunk, a.start + a.n - lo), a.seed, lo, examples=examples)
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - start
    print(f"{sum(counts.values())} calls (seed {a.seed}) in {elapsed:.0f} s")
    for outcome, count in counts.most_common():
        print(f"{count:9d}  {outcome}")
    for outcome, call in examples.items():
        print(f"\n{outcome}\n    {call}")
    return 0 if set(counts) <= {"ok", "ValueError"} else 1


if __name__ == "__main__":
    sys.exit(main())
