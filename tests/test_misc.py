"""Inputs are never modified; concurrent calls from many Python threads agree with serial ones;
the SIMD tier and thread controls."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx


def _calls():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 33)).astype(np.float32)
    zh = z.astype(ml_dtypes.bfloat16)
    y = rng.integers(0, 33, 64)
    p = rng.dirichlet(np.ones(33), 64)
    w = rng.uniform(0.5, 2, 33)
    return [
        (fx.sparse_softmax_cross_entropy_with_logits, dict(labels=y, logits=z, weight=w, label_smoothing=0.1)),
        (fx.sparse_softmax_cross_entropy_with_logits_and_grad, dict(labels=y, logits=zh, reduction="mean")),
        (fx.softmax_cross_entropy_with_logits, dict(labels=p.T, logits=z.T, axis=0)),
        (fx.softmax_cross_entropy_with_logits_and_grad, dict(labels=p, logits=z.astype(np.float64), weight=w)),
        (fx.log_softmax, dict(logits=z)),
        (fx.softmax, dict(logits=zh, axis=0)),
        (fx.logsumexp, dict(logits=z[::-1])),
    ]


def _bytes(result):
    return tuple(np.asarray(r).tobytes() for r in (result if isinstance(result, tuple) else (result,)))


@pytest.mark.parametrize("index", range(7))
def test_inputs_are_not_modified(index):
    fn, kwargs = _calls()[index]
    before = {k: np.array(v, copy=True) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    fn(**kwargs)
    for k, v in before.items():
        assert np.asarray(kwargs[k]).tobytes() == v.tobytes(), k


def test_many_threads_agree_with_serial_calls():
    calls = _calls()
    serial = [_bytes(fn(**kw)) for fn, kw in calls]
    jobs = [i % len(calls) for i in range(400)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: (i, _bytes(calls[i][0](**calls[i][1]))), jobs))
    for i, got in results:
        assert got == serial[i]


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
                _bytes(fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z, reduction="sum"))
                + _bytes(fx.softmax_cross_entropy_with_logits(labels=p, logits=z, reduction="mean"))
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
    import threading
    import time

    z = np.random.default_rng(2).normal(size=(4096, 16384)).astype(np.float32)
    y = np.arange(4096) % 16384
    fx.set_num_threads(1)  # leave a core to the main thread
    try:
        started, done = threading.Event(), threading.Event()
        seconds = []

        def work():
            started.set()
            t0 = time.perf_counter()
            fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
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
    assert seconds[0] > 0.05, "the call is long enough to tell"
    assert longest_stall < 0.5 * seconds[0], f"main thread stalled {longest_stall:.3f}s of {seconds[0]:.3f}s"
