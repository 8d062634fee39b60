"""Fuzz fastxent's Python entry points with random garbage: every call must return a result
of the right type or raise ValueError; anything else (another exception, a crash) is a bug.

    python scripts/fuzz.py 200000        # N random calls, prints the outcome counts
"""

from __future__ import annotations

import collections
import random
import sys
from typing import Any

import ml_dtypes
import numpy as np

import fastxent as fx

FUNCTIONS = [
    fx.softmax_cross_entropy_with_logits,
    fx.softmax_cross_entropy_with_logits_v2,
    fx.softmax_cross_entropy_with_logits_and_grad,
    fx.sparse_softmax_cross_entropy_with_logits,
    fx.sparse_softmax_cross_entropy_with_logits_and_grad,
]
ROW_FUNCTIONS = [fx.log_softmax, fx.softmax, fx.logsumexp]


class Shifty:
    """An object whose `__array__` returns something different on every call."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.zeros(tuple(self.rng.randint(0, 3) for _ in range(self.rng.randint(0, 3))))


class Raises:
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise RuntimeError("boom")


def garbage(rng: random.Random) -> Any:
    nprng = np.random.default_rng(rng.getrandbits(32))
    kind = rng.randrange(24)
    shape = tuple(rng.randint(0, 4) for _ in range(rng.randint(0, 3)))
    dtypes = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int8, np.uint64, np.int64, bool, complex, object]
    return [
        lambda: None,
        lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.random() * 10 ** rng.randint(-40, 40),
        lambda: float("nan"),
        lambda: "labels",
        lambda: b"\x00\x01",
        lambda: {"a": 1},
        lambda: [1, [2, 3]],
        lambda: [[1.0, 2.0], [3.0]],
        lambda: [[rng.random() for _ in range(3)] for _ in range(2)],
        lambda: list(range(rng.randint(0, 5))),
        lambda: object(),
        lambda: Shifty(rng),
        lambda: Raises(),
        lambda: np.array(rng.random()),
        lambda: nprng.normal(size=shape).astype(rng.choice(dtypes)),
        lambda: nprng.integers(-5, 5, shape).astype(rng.choice(dtypes)),
        lambda: np.full(shape, rng.choice([np.nan, np.inf, -np.inf, 0.0])),
        lambda: nprng.normal(size=(2, 3)).astype(np.float32)[:, ::-1],
        lambda: nprng.normal(size=(3, 2)).astype(">f8"),
        lambda: np.array([2**63, 1], dtype=np.uint64),
        lambda: nprng.integers(-3, 4, (2,)),
        lambda: nprng.random((2, 3)),
        lambda: (1, 2),
    ][kind]()


def one_call(rng: random.Random) -> str:
    if rng.random() < 0.25:
        fn = rng.choice(ROW_FUNCTIONS)
        args: tuple = (garbage(rng),)
        kwargs = {"axis": garbage(rng)} if rng.random() < 0.5 else {}
    else:
        fn = rng.choice(FUNCTIONS)
        args = (garbage(rng),) if rng.random() < 0.05 else ()
        kwargs = {}
        for key in ["labels", "logits", "axis", "dim", "name", "reduction", "label_smoothing", "weight", "ignore_index", "out", "grad_out", "bogus"]:
            if rng.random() < (0.9 if key in ("labels", "logits") else 0.15):
                kwargs[key] = garbage(rng)
    try:
        result = fn(*args, **kwargs)
    except ValueError:
        return "ValueError"
    except Exception as e:  # noqa: BLE001 - the whole point: report anything else
        shown = {k: (type(v).__name__, getattr(v, "dtype", None), getattr(v, "shape", None)) for k, v in kwargs.items()}
        return f"{type(e).__name__}: {e} in {fn.__name__}{args and ' (positional)' or ''} {shown}"
    parts = result if isinstance(result, tuple) else (result,)
    return "ok" if all(isinstance(p, np.ndarray) for p in parts) else f"bad result type {type(result)}"


def run(n: int, seed: int = 0) -> collections.Counter:
    rng = random.Random(seed)
    return collections.Counter(one_call(rng) for _ in range(n))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    counts = run(n, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for outcome, count in counts.most_common():
        print(f"{count:9d}  {outcome}")
    sys.exit(0 if set(counts) <= {"ok", "ValueError"} else 1)
