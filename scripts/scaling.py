"""How fastxent alone scales with its thread count: the median time and GB/s of logits of
each case at each count. `python scripts/scaling.py 1,2,4,8,16` (needs fastxent and
ml_dtypes installed)."""

from __future__ import annotations

import sys
import time

import ml_dtypes
import numpy as np

import fastxent as fx

FORWARD = [(8192, 32768), (65536, 1000), (1_000_000, 10), (8, 262144), (1, 1 << 20)]
GRADIENT = [(8192, 32768), (65536, 1000), (1_000_000, 10)]
# (name, rows, classes, dtype, op)
CASES = [
    *[(f"sparse {r}x{c}", r, c, np.float32, "sparse") for r, c in FORWARD],
    *[(f"sparse + grad_out {r}x{c}", r, c, np.float32, "grad") for r, c in GRADIENT],
    ("sparse bfloat16 8192x32768", 8192, 32768, ml_dtypes.bfloat16, "sparse"),
    ("sparse float16 65536x1000", 65536, 1000, np.float16, "sparse"),
    ("logsumexp float64 16384x4096", 16384, 4096, np.float64, "logsumexp"),
]


def call(op: str, z: np.ndarray, y: np.ndarray, grad_out: np.ndarray | None) -> object:
    if op == "sparse":
        return fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
    if op == "grad":
        return fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, grad_out=grad_out)
    return fx.logsumexp(z)


def main(threads: list[int], repeat: int = 7) -> None:
    rng = np.random.default_rng(0)
    print(f"SIMD tier {fx.simd_tier()}; median of {repeat} calls: ms, GB/s of logits")
    print(f"{'case':30s}" + "".join(f"{f'{t} threads':>20s}" for t in threads))
    for name, rows, classes, dtype, op in CASES:
        z = rng.standard_normal((rows, classes), dtype=np.float32).astype(dtype)
        y = rng.integers(0, classes, rows)
        grad_out = np.empty_like(z) if op == "grad" else None
        line = f"{name:30s}"
        for t in threads:
            fx.set_num_threads(t)
            call(op, z, y, grad_out)  # warm up (pages, pool)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                call(op, z, y, grad_out)
                times.append(time.perf_counter() - t0)
            ms = float(np.median(times)) * 1e3
            line += f"{ms:11.2f} ms {z.nbytes / ms / 1e6:5.1f}"
        print(line, flush=True)
    fx.set_num_threads(0)


if __name__ == "__main__":
    main([int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "1,2").split(",")])
