"""Inputs are never modified; many Python threads calling different functions at once get the
serial answers; results have the logits' dtype; the SIMD tier and thread controls."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import BF16, FLOAT_DTYPES, DENSE_LABEL_DTYPES, INT_DTYPES, LAYOUT_NAMES, dtype_id, layouts

import fastxent as fx

SPARSE = fx.sparse_softmax_cross_entropy_with_logits
SPARSE_GRAD = fx.sparse_softmax_cross_entropy_with_logits_and_grad
DENSE = fx.softmax_cross_entropy_with_logits
DENSE_V2 = fx.softmax_cross_entropy_with_logits_v2
DENSE_GRAD = fx.softmax_cross_entropy_with_logits_and_grad
LOSSES = {"sparse": SPARSE, "sparse_grad": SPARSE_GRAD, "dense": DENSE, "dense_v2": DENSE_V2, "dense_grad": DENSE_GRAD}
ROWS = {"log_softmax": fx.log_softmax, "softmax": fx.softmax, "logsumexp": fx.logsumexp}
ALL = {**LOSSES, **ROWS}


def _bytes(result):
    return tuple(np.asarray(r).tobytes() for r in (result if isinstance(result, tuple) else (result,)))


def _kwargs(fn_name, z, rng, **options):
    """Valid arguments for `fn_name` with logits `z` (class axis last)."""
    kw = {"logits": z}
    c = z.shape[-1]
    if fn_name.startswith("sparse"):
        kw["labels"] = rng.integers(0, c, z.shape[:-1])
    elif fn_name.startswith("dense"):
        kw["labels"] = rng.dirichlet(np.ones(c), z.shape[:-1])
    kw.update(options)
    return kw


# --------------------------------------------------------------------------- inputs unmodified


def _snapshot(x):
    """Bytes of an argument and of the whole buffer it views (the view's neighbours too)."""
    if isinstance(x, np.ndarray):
        base = x
        while isinstance(base.base, np.ndarray):
            base = base.base
        whole = bytes(base.base) if base.base is not None and not isinstance(base.base, np.ndarray) else base.tobytes()
        return (x.tobytes(), whole, x.flags.writeable)
    if isinstance(x, list):
        return repr(x)
    return None


def _inputs_for_unmodified(fn_name, layout, dtype):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (6, 7)).astype(dtype)
    z[0, 0] = -np.inf  # special values must survive too
    z[1, 2] = np.nan
    kw = _kwargs(fn_name, z, rng)
    kw = {k: layouts(v)[layout] for k, v in kw.items()}
    if fn_name in LOSSES:
        kw["weight"] = layouts(rng.uniform(0.5, 2.0, 7))[layout]
        kw["label_smoothing"] = 0.1
        kw["reduction"] = "mean"
    if fn_name.startswith("sparse"):
        kw["ignore_index"] = 3
    return kw


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", [pytest.param(d, id=dtype_id(d)) for d in FLOAT_DTYPES])
@pytest.mark.parametrize("fn_name", list(ALL))
def test_inputs_are_not_modified(fn_name, dtype, layout):
    fn = ALL[fn_name]
    kw = _inputs_for_unmodified(fn_name, layout, dtype)
    before = {k: _snapshot(v) for k, v in kw.items()}
    first = fn(**kw)
    after = {k: _snapshot(v) for k, v in kw.items()}
    assert before == after
    # and a second call on the same inputs gives the same bytes
    assert _bytes(fn(**kw)) == _bytes(first)


def test_gradient_does_not_alias_logits():
    z = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    keep = z.copy()
    for fn, labels in ((SPARSE_GRAD, np.arange(5) % 4), (DENSE_GRAD, np.full((5, 4), 0.25))):
        loss, grad = fn(labels=labels, logits=z)
        assert not np.may_share_memory(grad, z) and not np.may_share_memory(loss, z)
        grad[...] = 123  # the result is the caller's: writing to it leaves the logits alone
        assert np.array_equal(z, keep)


# --------------------------------------------------------------------------- threads


def _calls():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 33)).astype(np.float32)
    zh = z.astype(BF16)
    y = rng.integers(0, 33, 64)
    p = rng.dirichlet(np.ones(33), 64)
    w = rng.uniform(0.5, 2, 33)
    big = rng.normal(size=(512, 1000)).astype(np.float32)
    yb = rng.integers(0, 1000, 512)
    return [
        (SPARSE, dict(labels=y, logits=z, weight=w, label_smoothing=0.1)),
        (SPARSE_GRAD, dict(labels=y, logits=zh, reduction="mean")),
        (SPARSE_GRAD, dict(labels=yb, logits=big, ignore_index=5, reduction="sum")),
        (DENSE, dict(labels=p.T, logits=z.T, axis=0)),
        (DENSE_V2, dict(labels=p.astype(np.float16), logits=z.astype(np.float16), dim=-1)),
        (DENSE_GRAD, dict(labels=p, logits=z.astype(np.float64), weight=w)),
        (fx.log_softmax, dict(logits=z)),
        (fx.softmax, dict(logits=zh, axis=0)),
        (fx.logsumexp, dict(logits=z[::-1])),
        (fx.logsumexp, dict(logits=big, axis=0)),
    ]


@pytest.mark.parametrize("workers", [8])
def test_many_threads_agree_with_serial_calls(workers):
    calls = _calls()
    serial = [_bytes(fn(**kw)) for fn, kw in calls]
    jobs = [i % len(calls) for i in range(50 * len(calls))]
    np.random.default_rng(3).shuffle(jobs)
    barrier = threading.Barrier(workers)

    def run(i):
        if i < workers:  # start the first wave together
            barrier.wait()
        fn, kw = calls[jobs[i]]
        return jobs[i], _bytes(fn(**kw))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(run, range(len(jobs))))
    for i, got in results:
        assert got == serial[i], calls[i][0].__name__


def test_errors_from_many_threads():
    # Invalid inputs raise the same ValueError from every thread, and valid calls interleaved
    # with them still get the right answers.
    z = np.zeros((3, 4), np.float32)
    good = SPARSE(labels=np.array([0, 1, 2]), logits=z).tobytes()

    def call(i):
        if i % 2:
            try:
                SPARSE(labels=np.array([0, 9, 1]), logits=z)
            except ValueError as e:
                return str(e)
            return "no error"
        return SPARSE(labels=np.array([0, 1, 2]), logits=z).tobytes()

    with ThreadPoolExecutor(max_workers=8) as pool:
        out = list(pool.map(call, range(400)))
    msgs = {o for o in out[1::2]}
    assert len(msgs) == 1 and "labels[1] = 9" in msgs.pop()
    assert all(o == good for o in out[::2])


# --------------------------------------------------------------------------- result dtypes


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [pytest.param(d, id=dtype_id(d)) for d in FLOAT_DTYPES])
def test_result_dtype_is_logits_dtype(dtype, reduction):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4, 5)).astype(dtype)
    for label_dtype in INT_DTYPES:
        y = (np.arange(4) % 5).astype(label_dtype)
        assert SPARSE(labels=y, logits=z, reduction=reduction).dtype == dtype
        loss, grad = SPARSE_GRAD(labels=y, logits=z, reduction=reduction)
        assert loss.dtype == dtype and grad.dtype == dtype
    for label_dtype in DENSE_LABEL_DTYPES:
        p = np.full((4, 5), 0.2).astype(label_dtype)
        for fn in (DENSE, DENSE_V2):
            assert fn(labels=p, logits=z, reduction=reduction).dtype == dtype
        loss, grad = DENSE_GRAD(labels=p, logits=z, reduction=reduction)
        assert loss.dtype == dtype and grad.dtype == dtype
    for fn in ROWS.values():
        assert fn(z).dtype == dtype
    # Big-endian logits: the same dtype in native byte order.
    if dtype.itemsize > 1 and dtype != BF16:
        zb = z.astype(dtype.newbyteorder(">"))
        assert fx.log_softmax(zb).dtype == dtype
        assert SPARSE(labels=np.arange(4) % 5, logits=zb, reduction=reduction).dtype == dtype
    # Results are ndarrays (0-d for reductions), not NumPy scalars.
    assert isinstance(SPARSE(labels=np.arange(4) % 5, logits=z, reduction=reduction), np.ndarray)


# --------------------------------------------------------------------------- runtime controls


@pytest.mark.parametrize("shape", [(3000, 300), (8, 262144), (100_000, 10)], ids=str)
def test_thread_count_does_not_change_results(shape):
    # Wide rows are split across threads, narrow ones go sixteen at a time: neither split may
    # depend on how many threads there are.
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, shape).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    p = rng.random(shape).astype(np.float32)
    try:
        outs = []
        for n in (1, 2, 16):
            fx.set_num_threads(n)
            assert fx.get_num_threads() == n
            outs.append(
                _bytes(SPARSE_GRAD(labels=y, logits=z, reduction="sum"))
                + _bytes(DENSE(labels=p, logits=z, reduction="mean"))
                + _bytes(fx.logsumexp(z))
                + _bytes(fx.softmax(z))
            )
        assert outs[0] == outs[1] == outs[2]
    finally:
        fx.set_num_threads(0)


def test_simd_tier_reporting_and_cap():
    assert fx.simd_tier() in fx.simd_tiers()
    assert fx.simd_tiers()[0] == "scalar"
    code = "import fastxent; print(fastxent.simd_tier())"
    env = dict(os.environ, FASTXENT_SIMD="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"


def test_set_num_threads_rejects_nonsense():
    for bad in (-1, "two", 1.5, 10**30):
        with pytest.raises(ValueError):
            fx.set_num_threads(bad)


def test_gil_is_released_while_computing():
    # While another thread runs one long call, the main thread keeps running Python code: with
    # the GIL held through the call, the main thread would stall for the call's whole length.
    z = np.random.default_rng(2).normal(size=(4096, 16384)).astype(np.float32)
    y = np.arange(4096) % 16384
    fx.set_num_threads(1)  # leave a core to the main thread
    try:
        started, done = threading.Event(), threading.Event()
        seconds = []

        def work():
            started.set()
            t0 = time.perf_counter()
            SPARSE_GRAD(labels=y, logits=z)
            seconds.append(time.perf_counter() - t0)
            done.set()

        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        stamps = [time.perf_counter()]
        while not done.is_set():
            stamps.append(time.perf_counter())
        worker.join()
    finally:
        fx.set_num_threads(0)
    longest_stall = max(np.diff(stamps), default=0.0)
    # (~40 ms on a 2-core Zen 4; a stall of a whole call would be twice the bound below.)
    assert seconds[0] > 0.02, "the call is long enough to tell"
    assert longest_stall < 0.5 * seconds[0], f"main thread stalled {longest_stall:.3f}s of {seconds[0]:.3f}s"


def test_bench_command_runs_every_op(capsys):
    from fastxent.__main__ import main

    ops = "sparse,dense,sparse_grad,dense_grad"
    assert main(["bench", "--shapes", "64x100", "--ops", ops, "--repeat", "1", "--min-time", "0", "--reuse-grad"]) == 0
    out = capsys.readouterr().out
    assert "self-check: passed" in out and "reused grad_out" in out
    for op in ops.split(","):
        assert f"{op} 64x100" in out, out


def test_bench_times_repeat_calls_and_min_time_at_least():
    from fastxent.__main__ import _median_time

    calls = []
    _median_time(lambda: calls.append(1), 3, 0.0)
    assert len(calls) == 1 + 3, "a warm-up call, then `repeat` timed ones"
    calls.clear()
    _median_time(lambda: (calls.append(1), time.sleep(0.001)), 3, 0.05)
    assert len(calls) >= 1 + 20, f"0.05 s of 1 ms calls timed, not {len(calls) - 1}"
    calls.clear()
    _median_time(lambda: calls.append(1), 0, 0.0)
    assert len(calls) == 1 + 1, "one timed call at least"
