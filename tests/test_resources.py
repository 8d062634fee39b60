"""Nothing is lost, nothing is shared: memory stays flat over many calls (error paths
included), 16 Python threads calling every function at once get the serial answers, and
inputs past 2^31 elements give correct results (opt-in: `pytest -m slow`, needs ~10 GB).
"""

from __future__ import annotations

import gc
import os
import threading
import time

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx

BF16 = np.dtype(ml_dtypes.bfloat16)
HAVE_PROC = os.path.exists("/proc/self/statm")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# Memory


def _small_calls(rounds: int) -> int:
    """8 calls per round, each function once, with options and output buffers; returns the
    number of calls."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 10)).astype(np.float32)
    z16 = z.astype(np.float16)
    y = np.array([1, 2, 3, 4])
    soft = rng.random((4, 10)).astype(np.float32)
    w = rng.uniform(0.5, 2, 10)
    out = np.empty(4, np.float32)
    grad = np.empty((4, 10), np.float32)
    for _ in range(rounds):
        fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z16)
        fx.sparse_softmax_cross_entropy_with_logits_and_grad(
            labels=y, logits=z, weight=w, ignore_index=2, label_smoothing=0.1, out=out, grad_out=grad)
        fx.softmax_cross_entropy_with_logits(labels=soft, logits=z, reduction="mean")
        fx.softmax_cross_entropy_with_logits_v2(labels=soft.T.tolist(), logits=z.T, axis=0)
        fx.softmax_cross_entropy_with_logits_and_grad(labels=soft, logits=z[:, ::-1], dim=1)
        fx.log_softmax(z16, axis=0)
        fx.softmax(z)
        fx.logsumexp(z.astype(">f4"))
    return 8 * rounds


def _error_calls(rounds: int) -> int:
    """Calls that fail at every stage: Python-level checks, conversion, shape checks in the
    core, label checks after the outputs are allocated (bad label in the last row), output
    buffer checks; 8 per round."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(64, 100)).astype(np.float32)
    y = rng.integers(0, 100, 64)
    y_bad = y.copy()
    y_bad[-1] = 100
    unaligned = np.frombuffer(bytearray(z.nbytes + 1), np.float32, z.size, offset=1).reshape(z.shape)
    unaligned[...] = z
    calls = [
        lambda: fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, reduction="avg"),
        lambda: fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y_bad, logits=z),
        lambda: fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y_bad, logits=unaligned),
        lambda: fx.sparse_softmax_cross_entropy_with_logits(labels=y[:-1], logits=z),
        lambda: fx.softmax_cross_entropy_with_logits_and_grad(labels=z[:, :-1], logits=z),
        lambda: fx.softmax_cross_entropy_with_logits(labels=z, logits=z, weight=-np.ones(100)),
        lambda: fx.softmax_cross_entropy_with_logits(labels=z, logits=[[1.0, 2.0], [3.0]]),
        lambda: fx.log_softmax(z, axis=5),
    ]
    for _ in range(rounds):
        for call in calls:
            try:
                call()
            except ValueError:
                pass
            else:
                raise AssertionError("expected a ValueError")
    return 8 * rounds


def _large_calls(rounds: int) -> int:
    """Calls on 8 MiB inputs with fresh 8 MiB outputs, and failing ones that copied a large
    input first (unaligned, byte-swapped) or allocated large outputs; 6 per round."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(512, 4096)).astype(np.float32)
    y = rng.integers(0, 4096, 512)
    y_bad = y.copy()
    y_bad[-1] = -5
    swapped = z.astype(">f4")
    for _ in range(rounds):
        fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
        fx.softmax_cross_entropy_with_logits_and_grad(labels=z, logits=z, label_smoothing=0.1)
        fx.log_softmax(z, axis=0)
        fx.softmax(swapped)
        for bad in (y_bad, y_bad[::-1]):
            try:
                fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=bad, logits=swapped)
            except ValueError:
                pass
    return 6 * rounds


def _growth(work, warmups: int = 2) -> int:
    """RSS growth over one run of `work` after `warmups` runs of it (the allocator keeps what
    the first rounds taught it: glibc raises its mmap threshold after the first large free)."""
    for _ in range(warmups):
        work()
    gc.collect()
    before = rss_bytes()
    work()
    gc.collect()
    return rss_bytes() - before


MIB = 1 << 20


def _report(capsys, what: str, grown: int) -> None:
    with capsys.disabled():
        print(f"\n  RSS after {what}: {grown / MIB:+.2f} MiB (now {rss_bytes() / MIB:.0f} MiB)", end="")


@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc/self/statm (Linux) to read RSS")
def test_small_calls_leave_memory_flat(capsys):
    # 200k calls measured: a leak of 20 bytes per call would show as 4 MiB.
    grown = _growth(lambda: _small_calls(25_000), warmups=1)
    _report(capsys, "200,000 small calls", grown)
    assert grown < 4 * MIB, f"RSS grew by {grown / MIB:.1f} MiB over 200,000 small calls"


@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc/self/statm (Linux) to read RSS")
def test_error_paths_leave_memory_flat(capsys):
    # 40k failing calls, some after their outputs were allocated.
    grown = _growth(lambda: _error_calls(5_000), warmups=1)
    _report(capsys, "40,000 failing calls", grown)
    assert grown < 4 * MIB, f"RSS grew by {grown / MIB:.1f} MiB over 40,000 failing calls"


@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc/self/statm (Linux) to read RSS")
def test_large_calls_leave_memory_flat(capsys):
    # 300 large calls (each allocating 8 MiB or more): one leaked result would show.
    grown = _growth(lambda: _large_calls(50))
    _report(capsys, "300 large calls", grown)
    assert grown < 8 * MIB, f"RSS grew by {grown / MIB:.1f} MiB over 300 large calls"


LONG_C = 1 << 24  # one row of 16 Mi classes: 64 MiB in float32


def _long_row_child() -> None:
    """Calls on rows of LONG_C classes that are not contiguous float32 (float16, a class
    stride, the gradient in place, broadcast labels), each measured alone: the peak RSS of
    the call (reset before it) less the RSS before it and its output. Prints a JSON line."""
    import json

    def peak_rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    rng = np.random.default_rng(0)
    z16 = np.empty((1, LONG_C), np.float16)
    strided = np.empty((LONG_C, 2), np.float32)
    for s in range(0, LONG_C, 1 << 20):  # in chunks: no temporary as large as the inputs
        z16[0, s : s + (1 << 20)] = rng.normal(0, 3, 1 << 20)
        strided[s : s + (1 << 20)] = rng.normal(0, 3, (1 << 20, 2))
    in_place = strided[:, 0].copy()[None, :]
    uniform = np.broadcast_to(np.float32(1.0 / LONG_C), (LONG_C,))
    label = np.array([LONG_C - 1])
    calls = {
        "float16 sparse": lambda: fx.sparse_softmax_cross_entropy_with_logits(labels=label, logits=z16),
        "float16 logsumexp": lambda: fx.logsumexp(z16),
        "float16 sparse+grad": lambda: fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=label, logits=z16),
        "float16 log_softmax": lambda: fx.log_softmax(z16),
        "float16 dense, broadcast labels": lambda: fx.softmax_cross_entropy_with_logits(labels=uniform, logits=z16),
        "float32 class stride": lambda: fx.sparse_softmax_cross_entropy_with_logits(
            labels=np.array([0, 1]), logits=strided, axis=0),
        "float32 gradient in place": lambda: fx.sparse_softmax_cross_entropy_with_logits_and_grad(
            labels=label, logits=in_place, grad_out=in_place),
    }
    fx.logsumexp(z16[:, :1000])  # the thread pool, before anything is measured
    extra = {}
    for name, call in calls.items():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS to the current RSS
        before = rss_bytes()
        result = call()
        outputs = sum(r.nbytes for r in (result if isinstance(result, tuple) else (result,)) if r is not in_place)
        extra[name] = peak_rss() - before - outputs
        del result
    print(json.dumps(extra))


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs /proc/self/clear_refs (Linux)")
def test_long_rows_are_never_copied_whole(capsys):
    """A row of 16 Mi classes in float16 would take 64 MiB of float32 if widened whole (and
    as much again for its output); read and written a block at a time, it takes a few
    blocks per thread."""
    import json
    import subprocess
    import sys

    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_resources as t; t._long_row_child()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    extra = json.loads(proc.stdout.strip().splitlines()[-1])
    with capsys.disabled():
        print("\n  memory beyond inputs and outputs, rows of 16 Mi classes: "
              + ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in extra.items()), end="")
    too_much = {k: f"{v / MIB:.1f} MiB" for k, v in extra.items() if v > 8 * MIB}
    assert not too_much, f"calls on long rows took row-sized scratch: {too_much}"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc/self/statm (Linux) to read RSS")
def test_million_small_and_thousand_large_calls_leave_memory_flat(capsys):
    grown = _growth(lambda: (_small_calls(125_000), _error_calls(12_500), _large_calls(170)), warmups=1)
    _report(capsys, "1,000,000 small, 100,000 failing and 1,020 large calls", grown)
    # A million small calls, 100k failing ones, a thousand large ones.
    assert grown < 8 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# Threads


def _cases(seed: int) -> list[tuple[str, object]]:
    """Calls of every function on a shape and dtype of this seed's own."""
    rng = np.random.default_rng(seed)
    dtype = [np.float16, BF16, np.float32, np.float64][seed % 4]
    shape = [(3, 7), (64, 1000), (2, 5, 33), (1000, 10), (1, 70000), (17, 3, 4)][seed % 6]
    axis = [-1, 0, 1][seed % 3] % len(shape)
    z = rng.normal(0, 4, shape).astype(dtype)
    c = shape[axis]
    batch = tuple(n for d, n in enumerate(shape) if d != axis)
    y = rng.integers(0, c, batch)
    soft = rng.random(shape).astype(np.float32)
    w = rng.uniform(0.5, 2, c)
    return [
        ("sparse", lambda: fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, axis=axis)),
        ("sparse+grad", lambda: fx.sparse_softmax_cross_entropy_with_logits_and_grad(
            labels=y, logits=z, axis=axis, weight=w, ignore_index=0, reduction="mean")),
        ("dense", lambda: fx.softmax_cross_entropy_with_logits(labels=soft, logits=z, axis=axis)),
        ("dense v2", lambda: fx.softmax_cross_entropy_with_logits_v2(
            labels=soft, logits=z, axis=axis, label_smoothing=0.2, reduction="sum")),
        ("dense+grad", lambda: fx.softmax_cross_entropy_with_logits_and_grad(labels=soft, logits=z, axis=axis, weight=w)),
        ("log_softmax", lambda: fx.log_softmax(z, axis=axis)),
        ("softmax", lambda: fx.softmax(z, axis=axis)),
        ("logsumexp", lambda: fx.logsumexp(z, axis=axis)),
        ("error", lambda: fx.sparse_softmax_cross_entropy_with_logits(labels=y + c, logits=z, axis=axis)),
    ]


def _as_bytes(result) -> bytes:
    parts = result if isinstance(result, tuple) else (result,)
    return b"".join(np.ascontiguousarray(p).tobytes() + str(p.dtype).encode() + str(p.shape).encode() for p in parts)


def _run(call) -> bytes:
    try:
        return _as_bytes(call())
    except ValueError as e:
        return f"ValueError: {e}".encode()


def _hammer(n_threads: int, rounds: int, toggle_threads: bool = False) -> list[str]:
    cases = {seed: _cases(seed) for seed in range(n_threads)}
    serial = {seed: [_run(call) for _, call in calls] for seed, calls in cases.items()}
    barrier = threading.Barrier(n_threads + (1 if toggle_threads else 0))
    failures: list[str] = []
    done = threading.Event()

    def worker(seed: int) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                order = list(range(len(cases[seed])))
                np.random.default_rng(seed * 1000 + r).shuffle(order)
                for i in order:
                    name, call = cases[seed][i]
                    if _run(call) != serial[seed][i]:
                        failures.append(f"thread {seed}, round {r}: {name} differs from the serial result")
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"thread {seed}: {type(e).__name__}: {e}")

    def toggler() -> None:
        barrier.wait()
        n = 0
        while not done.is_set():
            fx.set_num_threads([1, 2, 16, 0][n % 4])
            n += 1
            time.sleep(0.001)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(n_threads)]
    if toggle_threads:
        threads.append(threading.Thread(target=toggler, daemon=True))
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        for t in threads[:n_threads]:
            t.join(max(0.0, deadline - time.monotonic()))
        done.set()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"threads still running after 300 s (a deadlock?): {hung}"
    finally:
        done.set()
        fx.set_num_threads(0)
    return failures


def test_sixteen_threads_get_the_serial_answers():
    failures = _hammer(16, rounds=25)
    assert not failures, "\n".join(failures[:20])


def test_threads_while_the_thread_count_changes():
    # set_num_threads from one thread while 8 others compute: results stay bit-identical
    # (they do not depend on the thread count) and nothing deadlocks.
    failures = _hammer(8, rounds=25, toggle_threads=True)
    assert not failures, "\n".join(failures[:20])


# ---------------------------------------------------------------------------------------------
# Past 2^31 elements. Each case runs in a child process: it needs several GB, and a process
# that runs out of memory must fail this test, not kill the test run (the child's address space
# is capped below the machine's free memory, so an allocation fails there first).

BIG_ROWS, BIG_C = 2, 1_100_000_000
BIG_COLS = [0, 1, BIG_C // 2, BIG_C - 7, BIG_C - 5, BIG_C - 3, BIG_C - 1]


def _big_logits() -> np.ndarray:
    """float16 (2, 1.1e9): a random block repeated with shifts; the maximum of row 0 at its
    very end, of row 1 near its end (flat index past 2^31), a few large entries whose gradient
    float16 can hold (the bulk's underflows)."""
    z = np.empty((BIG_ROWS, BIG_C), np.float16)
    block = np.random.default_rng(0).normal(0, 1, 1_000_003).astype(np.float16)
    for r in range(BIG_ROWS):
        for s in range(0, BIG_C, len(block)):
            piece = np.roll(block, 7919 * r + s // len(block))[: BIG_C - s]
            z[r, s : s + len(piece)] = piece
        z[r, [1, BIG_C // 2, BIG_C - 5]] = [9.0, 10.0, 8.0]
    z[0, BIG_C - 1] = 12.0
    z[1, BIG_C - 7] = 11.0
    return z


MANY_ROWS, MANY_C = 2048, 1_048_583  # 2,147,497,984 elements: past 2^31 by rows
MANY_CHECK = [0, 1024, MANY_ROWS - 1]


def _many_child() -> dict:
    """float16 (2048, 1,048,583): rows past the 2^31st element; the sparse loss and gradient,
    log_softmax and the dense loss (labels of shape (C,), broadcast over the rows), each
    checked on a few rows (the last starts past 2^31)."""
    import resource

    z = np.empty((MANY_ROWS, MANY_C), np.float16)
    block = np.random.default_rng(1).normal(0, 2, MANY_C + 4099).astype(np.float16)
    for r in range(MANY_ROWS):
        z[r] = block[r % 4099 : r % 4099 + MANY_C]
    labels = (np.arange(MANY_ROWS) * 7919) % MANY_C
    soft = np.random.default_rng(2).random(MANY_C).astype(np.float32)
    soft /= soft.sum()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t1 = time.monotonic()
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z)
    got = {"loss": loss[MANY_CHECK].tolist(), "grad": grad[MANY_CHECK].astype(np.float64)}
    del grad
    got["log_softmax"] = fx.log_softmax(z)[MANY_CHECK].astype(np.float64)
    got["dense"] = fx.softmax_cross_entropy_with_logits(labels=soft, logits=z)[MANY_CHECK].tolist()
    t2 = time.monotonic()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    bad = []
    for i, r in enumerate(MANY_CHECK):
        row = z[r].astype(np.float64)
        m = row.max()
        lse = m + np.log(np.exp(row - m).sum())
        logp = row - lse
        p = np.exp(logp)
        p[labels[r]] -= 1.0
        checks = [
            ("loss", got["loss"][i], lse - row[labels[r]], 1e-3, 0.0),
            ("dense", got["dense"][i], -(soft * logp).sum(), 1e-3, 0.0),
            ("grad", got["grad"][i], p, 1e-3, 6e-8),
            ("log_softmax", got["log_softmax"][i], logp, 1e-3, 1e-3),
        ]
        for what, g, w, rtol, atol in checks:
            if not np.allclose(g, w, rtol=rtol, atol=atol):
                bad.append(f"{what} of row {r}: max error {np.max(np.abs(np.subtract(g, w)))}")
    return {"bad": bad, "extra": max(peak - base, 0), "outputs": z.nbytes, "input": z.nbytes, "call": t2 - t1,
            "loss": got["loss"]}


def _big_child(kind: str) -> None:
    """Run one case; print a JSON line: results, references, peak RSS and timings."""
    import json
    import resource

    if kind == "many-rows":
        print(json.dumps(_many_child()))
        return
    t0 = time.monotonic()
    z = _big_logits()
    labels = np.array([BIG_C - 1, BIG_C - 3])
    t1 = time.monotonic()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss0 = rss_bytes()
    out: dict = {}
    if kind == "forward":
        out["loss"] = fx.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z).tolist()
        out["logsumexp"] = fx.logsumexp(z).tolist()
        outputs = 0
    elif kind == "gradient":
        loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=labels, logits=z)
        out["loss"] = loss.tolist()
        out["grad"] = [grad[r, BIG_COLS].astype(np.float64).tolist() for r in range(BIG_ROWS)]
        outputs = grad.nbytes
        del grad
    else:  # dense, with zero-stride labels (1/C everywhere): no memory of their own
        uniform = np.broadcast_to(np.float32(1.0 / BIG_C), (BIG_C,))
        out["dense"] = fx.softmax_cross_entropy_with_logits(labels=uniform, logits=z).tolist()
        outputs = 0
    t2 = time.monotonic()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The float64 reference, by chunks.
    ref: dict = {"lse": [], "zsum": [], "zlabel": [], "grad": []}
    for r in range(BIG_ROWS):
        m, total, zsum = _chunked_reference(z, r)
        lse = m + float(np.log(total))
        ref["lse"].append(lse)
        ref["zsum"].append(zsum)
        ref["zlabel"].append(float(z[r, labels[r]]))
        p = np.exp(z[r, BIG_COLS].astype(np.float64) - lse)
        p[BIG_COLS.index(labels[r])] -= 1.0
        ref["grad"].append(p.tolist())
    t3 = time.monotonic()
    print(json.dumps({"out": out, "ref": ref, "extra": max(peak - base, 0), "outputs": outputs, "input": z.nbytes,
                      "rss_before": rss0, "build": t1 - t0, "call": t2 - t1, "reference": t3 - t2}))


def _chunked_reference(z: np.ndarray, row: int, chunk: int = 1 << 26) -> tuple[float, float, float]:
    """(max, sum of exp(z - max), sum of z) of one row, in float64, by chunks."""
    n = z.shape[1]
    m = max(float(z[row, s : s + chunk].max()) for s in range(0, n, chunk))
    total = 0.0
    zsum = 0.0
    for s in range(0, n, chunk):
        part = z[row, s : s + chunk].astype(np.float64)
        total += float(np.exp(part - m).sum())
        zsum += float(part.sum())
    return m, total, zsum


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# Memory beyond the input and the outputs a call may use: scratch of a block per thread, not
# of a row (these rows are 4.4 GB in float32).
BIG_SLACK = 1 << 30


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc (Linux)")
@pytest.mark.parametrize("kind", ["forward", "gradient", "dense", "many-rows"])
def test_more_than_2_31_elements(kind, capsys):
    """float16 logits of 2 x 1.1e9 (4.4 GB, 2.2e9 elements) with labels near the ends of the
    rows (flat index past 2^31 in the second): offsets must not wrap anywhere. Checked against
    float64 references by chunks: the sparse loss and logsumexp; the loss and gradient (the
    gradient read back past 2^31); the dense loss with zero-stride labels. And 2048 rows of
    1,048,583 (past 2^31 by rows, each row small): sparse loss and gradient, log_softmax, dense.
    Then the memory the calls needed beyond their input and outputs (at most 1 GiB)."""
    import json
    import resource
    import subprocess
    import sys

    need = 2 * BIG_ROWS * BIG_C * (1 if kind in ("forward", "dense") else 2) + (2 << 30)
    avail = _mem_available()
    if avail < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free memory; {avail / 2**30:.0f} GiB available")
    cap = int(avail * 0.85)

    def limit() -> None:  # in the child: allocations past `cap` fail there, not in the machine
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = f"import sys; sys.path.insert(0, {str(os.path.dirname(__file__))!r}); import test_resources as t; t._big_child({kind!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit, timeout=1800)
    assert proc.returncode == 0, (
        f"the {kind} case died (status {proc.returncode}) with its address space capped at "
        f"{cap / 2**30:.1f} GiB (input {BIG_ROWS * BIG_C * 2 / 2**30:.1f} GiB):\n{proc.stderr[-2000:]}"
    )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if kind == "many-rows":
        assert not res["bad"], res["bad"]
        extra = res["extra"] - res["outputs"]
        with capsys.disabled():
            print(f"\n  many rows ({MANY_ROWS} x {MANY_C:,} float16): losses {res['loss']} right; fastxent "
                  f"{res['call']:.1f} s; memory beyond input and largest output {extra / 2**30:.2f} GiB", end="")
        assert extra <= BIG_SLACK, f"values right, but the calls needed {extra / 2**30:.1f} GiB of scratch"
        return
    out, ref = res["out"], res["ref"]
    want_loss = [lse - zl for lse, zl in zip(ref["lse"], ref["zlabel"])]
    if "loss" in out:
        np.testing.assert_allclose(out["loss"], want_loss, rtol=1e-3)
    if "logsumexp" in out:
        np.testing.assert_allclose(out["logsumexp"], ref["lse"], rtol=1e-3)
    if "grad" in out:
        np.testing.assert_allclose(out["grad"], ref["grad"], rtol=1e-3, atol=6e-8)
    if "dense" in out:
        np.testing.assert_allclose(out["dense"], [lse - zs / BIG_C for lse, zs in zip(ref["lse"], ref["zsum"])], rtol=1e-3)
    extra = res["extra"] - res["outputs"]
    with capsys.disabled():
        print(f"\n  {kind}: {out} (reference loss {np.round(want_loss, 4).tolist()}, logsumexp "
              f"{np.round(ref['lse'], 4).tolist()}); build {res['build']:.0f} s, fastxent {res['call']:.1f} s, "
              f"reference {res['reference']:.0f} s; memory beyond input and outputs {extra / 2**30:.2f} GiB", end="")
    assert extra <= BIG_SLACK, (
        f"values right, but the call needed {extra / 2**30:.1f} GiB beyond its input "
        f"({res['input'] / 2**30:.1f} GiB) and outputs ({res['outputs'] / 2**30:.1f} GiB)"
    )
