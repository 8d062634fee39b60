"""`python -m fastxent`: a self-check, then a timing table against NumPy and whichever of
PyTorch, TensorFlow and JAX are installed.

    python -m fastxent                       # self-check + a small default benchmark
    python -m fastxent bench                 # the shapes of the design notes (slow: minutes)
    python -m fastxent bench --shapes 4096x32768,65536x1000 --ops sparse,sparse_grad
    python -m fastxent bench --plot bench.png
    python -m fastxent bench --ops sparse_grad --reuse-grad   # gradients into one grad_out
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

import fastxent as fx

# (op, rows, classes): design notes §3.
DESIGN_CASES = [
    ("sparse", 8192, 32768),
    ("sparse", 65536, 1000),
    ("sparse", 1_000_000, 10),
    ("sparse", 8, 262144),
    ("dense", 4096, 32768),
    ("dense", 65536, 1000),
    ("sparse_grad", 8192, 32768),
    ("sparse_grad", 65536, 1000),
]
DEFAULT_CASES = [("sparse", 2048, 8192), ("dense", 1024, 8192), ("sparse_grad", 2048, 8192)]
OPS = ("sparse", "dense", "sparse_grad", "dense_grad")


def _reference(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 `(logsumexp, log_softmax)` per row, with the maximum's own term kept out of the
    sum so that confident rows stay exact."""
    k = z.argmax(axis=1)
    m = z[np.arange(len(z)), k][:, None]
    e = np.exp(z - m)
    e[np.arange(len(z)), k] = 0.0
    l1p = np.log1p(e.sum(axis=1))[:, None]
    return (m + l1p)[:, 0], (z - m) - l1p


def self_check() -> bool:
    """Compare every function with a float64 NumPy reference on random and extreme rows."""
    rng = np.random.default_rng(0)
    base = rng.normal(0, 4, (257, 1000))
    base[0, 3] += 60.0  # a confident row
    base[1] += 1e4  # a large common offset
    y = rng.integers(0, 1000, 257)
    y[0] = 3
    p = rng.random((257, 1000))
    p /= p.sum(axis=1, keepdims=True)
    ok = True
    print(f"fastxent {fx.__version__}: self-check (SIMD tier {fx.simd_tier()}, {fx.get_num_threads()} threads)")
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 4e-6)):
        z = base.astype(dtype)
        lse, logp = _reference(z.astype(np.float64))
        checks = {
            "sparse": (fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z), -logp[np.arange(257), y]),
            "dense": (fx.softmax_cross_entropy_with_logits(labels=p, logits=z), -(p * logp).sum(axis=1)),
            "log_softmax": (fx.log_softmax(z), logp),
            "softmax": (fx.softmax(z), np.exp(logp)),
            "logsumexp": (fx.logsumexp(z), lse),
        }
        for name, (got, ref) in checks.items():
            tiny = np.finfo(dtype).tiny
            err = float(np.max(np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref), tiny)))
            passed = bool(err <= tol)
            ok &= passed
            print(f"  {name:12s} {np.dtype(dtype).name:8s} max rel err {err:9.2e}  {'ok' if passed else 'FAIL'}")
    print("self-check:", "passed" if ok else "FAILED")
    return ok


def _numpy_peer(op: str) -> Callable[..., Any] | None:
    def sparse(z: np.ndarray, y: np.ndarray, p: np.ndarray) -> Any:
        m = z.max(axis=-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=-1))
        return lse - np.take_along_axis(z, y[:, None], axis=-1)[:, 0]

    def dense(z: np.ndarray, y: np.ndarray, p: np.ndarray) -> Any:
        m = z.max(axis=-1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        return -(p * logp).sum(axis=-1)

    return {"sparse": sparse, "dense": dense}.get(op)


def _torch_peer(op: str) -> Callable[..., Any] | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None

    def tensor(a: np.ndarray) -> Any:
        # torch.from_numpy refuses ml_dtypes' bfloat16: share its bits as torch's own bfloat16.
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    def run(z: np.ndarray, y: np.ndarray, p: np.ndarray) -> Any:
        zt = tensor(z)  # a fresh leaf each call, so gradients never accumulate across calls
        target = tensor(y if op.startswith("sparse") else p)
        if op.endswith("grad"):
            zt.requires_grad_(True)
            loss = F.cross_entropy(zt, target, reduction="none")
            loss.sum().backward()
            return loss.detach(), zt.grad  # (tensors: `.numpy()` refuses bfloat16)
        with torch.no_grad():
            return F.cross_entropy(zt, target, reduction="none")

    return run


def _tf_peer(op: str) -> Callable[..., Any] | None:
    try:
        import tensorflow as tf
    except ImportError:
        return None

    def loss(z: Any, y: Any, p: Any) -> Any:
        if op.startswith("sparse"):
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
        return tf.nn.softmax_cross_entropy_with_logits(labels=p, logits=z)

    def run(z: Any, y: Any, p: Any) -> Any:
        zt = z  # already a tensor: see _prepare
        if op.endswith("grad"):
            with tf.GradientTape() as tape:
                tape.watch(zt)
                l = loss(zt, y, p)
            return l.numpy(), tape.gradient(l, zt).numpy()
        return loss(zt, y, p).numpy()

    return run


def _jax_peer(op: str) -> Callable[..., Any] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    def loss(z: Any, y: Any, p: Any) -> Any:
        logp = jax.nn.log_softmax(z, axis=-1)
        if op.startswith("sparse"):
            return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        return -(p * logp).sum(axis=-1)

    if op.endswith("grad"):
        fn = jax.jit(lambda z, y, p: jax.value_and_grad(lambda z: loss(z, y, p).sum())(z))
    else:
        fn = jax.jit(loss)

    def run(z: np.ndarray, y: np.ndarray, p: np.ndarray) -> Any:
        return jax.block_until_ready(fn(z, y, p))  # type: ignore[no-untyped-call]

    return run


def _fastxent(op: str, grad_out: np.ndarray | None = None) -> Callable[..., Any]:
    """fastxent's call for `op`; gradients into `grad_out` when given (a reused buffer, as in
    a training loop)."""
    def run(z: np.ndarray, y: np.ndarray, p: np.ndarray) -> Any:
        if op == "sparse":
            return fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
        if op == "sparse_grad":
            return fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, grad_out=grad_out)
        if op == "dense":
            return fx.softmax_cross_entropy_with_logits(labels=p, logits=z)
        return fx.softmax_cross_entropy_with_logits_and_grad(labels=p, logits=z, grad_out=grad_out)

    return run


PEERS = {"numpy": _numpy_peer, "torch": _torch_peer, "tensorflow": _tf_peer, "jax": _jax_peer}


def _prepare(name: str) -> Callable[[Any], Any]:
    """Moves an input into the peer's own array type once, outside the timed region, so each
    peer is timed at its best (JAX and TensorFlow would otherwise copy NumPy inputs per call)."""
    if name == "jax":
        import jax

        return lambda a: None if a is None else jax.device_put(a)
    if name == "tensorflow":
        import tensorflow as tf

        return lambda a: None if a is None else tf.constant(a)
    return lambda a: a


def _median_time(fn: Callable[[], Any], repeat: int, min_time: float) -> float:
    """The median of at least `repeat` calls and of at least `min_time` seconds of calls,
    after a warm-up call (which compiles, for JAX). Short calls are timed hundreds of times:
    the median of seven calls of a millisecond moves with the scheduling hiccups of a loaded
    machine."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(repeat, 1) or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def bench(
    cases: list[tuple[str, int, int]],
    repeat: int,
    dtype: str,
    plot: str | None,
    reuse_grad: bool = False,
    min_time: float = 0.5,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    results = []
    reuse = ", fastxent's gradients into one reused grad_out" if reuse_grad else ""
    timing = f"median of {repeat} calls or more ({min_time:g} s of calls at least)"
    print(f"\n{timing}, {dtype}, SIMD tier {fx.simd_tier()}, {fx.get_num_threads()} threads{reuse}")
    header = f"{'case':28s} {'fastxent':>10s} {'GB/s':>6s}"
    peers = {name: make for name, make in PEERS.items()}
    for name in peers:
        header += f" {name:>11s} {'ratio':>6s}"
    print(header)
    for op, rows, classes in cases:
        z = rng.standard_normal((rows, classes), dtype=np.float32).astype(_dtype(dtype))
        y = rng.integers(0, classes, rows)
        p = rng.random((rows, classes), dtype=np.float32).astype(_dtype(dtype)) if op.startswith("dense") else None
        if p is not None:
            p /= p.sum(axis=-1, keepdims=True)
        grad_out = np.empty_like(z) if reuse_grad and op.endswith("_grad") else None
        ours = _median_time(lambda: _fastxent(op, grad_out)(z, y, p), repeat, min_time)
        gbs = z.nbytes / ours / 1e9
        line = f"{op + ' ' + str(rows) + 'x' + str(classes):28s} {ours * 1e3:8.2f}ms {gbs:6.1f}"
        row: dict[str, Any] = {"op": op, "rows": rows, "classes": classes, "fastxent": ours}
        for name, make in peers.items():
            fn = make(op)
            if fn is None:
                line += f" {'-':>11s} {'':>6s}"
                continue
            prepare = _prepare(name)
            args = (prepare(z), prepare(y), prepare(p))
            t = _median_time(lambda: fn(*args), repeat, min_time)
            row[name] = t
            line += f" {t * 1e3:9.2f}ms {t / ours:5.1f}x"
        print(line, flush=True)
        results.append(row)
    if plot:
        _plot(results, plot)
    return results


def _plot(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    names = ["fastxent"] + [n for n in PEERS if any(n in r for r in results)]
    labels = [f"{r['op']}\n{r['rows']}x{r['classes']}" for r in results]
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(results)), 4.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        speed = [r["fastxent"] / r[n] if n in r else 0.0 for r in results]
        ax.bar(np.arange(len(results)) + i * width, speed, width, label=n)
    ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2, labels, fontsize=8)
    ax.set_ylabel("speed relative to fastxent (higher is faster)")
    ax.set_title("softmax cross-entropy, float32, same inputs, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def _parse_cases(shapes: str, ops: str) -> list[tuple[str, int, int]]:
    cases = []
    for op in ops.split(","):
        if op not in OPS:
            raise SystemExit(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
        for s in shapes.split(","):
            rows, classes = (int(v) for v in s.lower().split("x"))
            cases.append((op, rows, classes))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxent", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="check", choices=["check", "bench"])
    parser.add_argument("--shapes", help="comma-separated ROWSxCLASSES (default: design notes' cases)")
    parser.add_argument("--ops", default="sparse,dense,sparse_grad", help=f"comma-separated, of {', '.join(OPS)}")
    parser.add_argument("--repeat", type=int, default=7, help="calls timed at least, for each library and case")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of calls timed at least, likewise")
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"])
    parser.add_argument("--plot", help="write a PNG bar chart here (needs matplotlib)")
    parser.add_argument(
        "--reuse-grad", action="store_true", help="fastxent writes gradients into one reused grad_out (a training loop)"
    )
    args = parser.parse_args(argv)
    ok = self_check()
    if args.command == "check":
        bench(DEFAULT_CASES, args.repeat, args.dtype, args.plot, min_time=args.min_time)
    else:
        cases = _parse_cases(args.shapes, args.ops) if args.shapes else DESIGN_CASES
        bench(cases, args.repeat, args.dtype, args.plot, args.reuse_grad, args.min_time)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
