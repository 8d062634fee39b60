"""float16 and bfloat16 against float32, per element: the sparse forward pass and the
gradient into a reused `grad_out`, the three types' calls interleaved (so that the machine's
swings fall on all three alike), median of 15. `python scripts/half_types.py` (needs
fastxent and ml_dtypes installed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

import fastxent as fx

SHAPES = [(4096, 32768), (65536, 1000), (1_000_000, 10), (262144, 96), (131072, 256), (65536, 512)]
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


def medians(calls: dict[str, Callable[[], Any]], repeat: int = 15) -> dict[str, float]:
    for call in calls.values():
        call()  # warm up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def main() -> None:
    rng = np.random.default_rng(0)
    print("case                          float32 / float16 / bfloat16 ms   float16, bfloat16 per element")
    for rows, classes in SHAPES:
        z32 = rng.standard_normal((rows, classes), dtype=np.float32)
        y = rng.integers(0, classes, rows)
        logits = {np.dtype(d).name: z32.astype(d) for d in DTYPES}
        grads = {name: np.empty_like(z) for name, z in logits.items()}
        for op in ("sparse", "sparse + grad"):

            def call(name: str) -> Callable[[], Any]:
                z, g = logits[name], grads[name]
                if op == "sparse":
                    return lambda: fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
                return lambda: fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, grad_out=g)

            ms = medians({name: call(name) for name in logits})
            f32 = ms["float32"]
            times = " / ".join(f"{t:.2f}" for t in ms.values())
            rates = ", ".join(f"{f32 / ms[name]:.2f}x" for name in ("float16", "bfloat16"))
            print(f"{op + ' ' + str(rows) + 'x' + str(classes):29s} {times:33s} {rates}", flush=True)


if __name__ == "__main__":
    main()
