"""Accuracy, measured in ulp, on the input families where softmax cross-entropy is hardest.

Every result is compared with a careful reference computed from the exact input values:

* float32 (and the half types) against float64 in the stable form: ``k = argmax``,
  ``rest = sum_{j != k} exp(z_j - m)``, ``loss = (m - z_y) + log1p(rest)``, ``p_j = e_j / (1 +
  rest)``, the label's gradient ``-(mass of the other classes)``; no step of it cancels.
* float64 against mpmath at 40 digits (kept as a double-double, so the error is measured
  to far below an ulp).

"ulp" is ``|got - exact| / ulp(exact rounded to the result dtype)``, the ulp being the
spacing of the dtype at that magnitude (the subnormal spacing below the smallest normal, so a
result that underflows is measured in absolute terms there). Bounds: loss and ``logsumexp``
2 ulp, ``log_softmax`` 2 ulp, gradient and ``softmax`` 4 ulp (float32 and float64); the sum
and mean of the loss 2 ulp (float32), 4 ulp (float64: a sum of values each within 2 ulp);
half types within 1 ulp of the exact value, and bit-equal to the float32 result rounded once.
Where the exact value is a sum of two terms of opposite signs that no method avoids rounding
first (the dense gradient ``sum(y) p_j - y_j`` with soft labels; ``logsumexp = m +
log1p(rest)`` when ``m`` is near ``-log1p(rest)``), the ulp is that of the larger term.

Families: saturated rows (the label or another class leads by 5 to 100; wide rows, narrow
rows, and rows whose other classes are all equal, so that their mass is a sum of equal
terms), a large common offset (+-1e4 + noise), flat and wide rows (up to 262,144 classes, and
exactly flat ones), steep rows of 2 to 7 classes, ordinary rows (1000 classes, 10 classes,
and every width from 1 to 67 for the SIMD tails). Rows are many enough that the narrow-row
(tiled) and split-row paths are taken as well as the plain one. Sparse labels, one-hot dense
labels (held to the same bounds) and soft dense labels (their own tests), the row functions,
and the sum / mean reductions.

The module prints a table of the worst ulp per family, function and dtype (visible without
``-s``). Run it under each SIMD tier with ``FASTXENT_SIMD=scalar|avx2``.

Results are also bit-identical whatever the number of threads (1, 2, 16).
"""

from __future__ import annotations

import collections
import fractions
import functools

import ml_dtypes
import mpmath
import numpy as np
import pytest

import fastxent as fx

LOSS_ULP = 2.0  # loss, logsumexp, log_softmax; float32 sum / mean
GRAD_ULP = 4.0  # gradient, softmax
HALF_ULP = 1.0  # float16 / bfloat16, any function
# float64 sum / mean: of float64 losses each within 2 ulp, i.e. a relative error up to 2^-51,
# which is up to 4 ulp of a sum whose significand is near 1 (float32 sums are of float32 losses
# in float64, rounded once: they keep the loss bound).
REDUCTION_ULP_F64 = 4.0

BF16 = np.dtype(ml_dtypes.bfloat16)
HALF_DTYPES = [np.dtype(np.float16), BF16]


# ---------------------------------------------------------------------------------------------
# Input families. Each is a list of blocks (logits as float64 values, integer labels); the
# values are rounded to the dtype under test before anything is computed from them.


def _saturated(rng, n, c, lead_label: bool | None):
    z = rng.normal(0, 1, (n, c))
    y = rng.integers(0, c, n)
    lead = rng.permutation(np.linspace(5, 100, n))
    if lead_label is None:  # half the rows each way
        who = np.where(np.arange(n) % 2 == 0, y, (y + 1 + rng.integers(0, c - 1, n)) % c)
    elif lead_label:
        who = y
    else:
        who = (y + 1 + rng.integers(0, c - 1, n)) % c
    z[np.arange(n), who] += lead
    return z, y


def family_blocks(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    if name == "saturated-label":
        return [_saturated(rng, 192, 50, True), _saturated(rng, 64, 3000, True)]
    if name == "saturated-other":
        return [_saturated(rng, 192, 50, False), _saturated(rng, 64, 3000, False)]
    if name == "saturated-narrow":  # many rows of few classes: the tiled narrow-row path
        return [_saturated(rng, 4096, 10, None), _saturated(rng, 1000, 3, None)]
    if name == "saturated-uniform":
        # The label leads every other class by the same 5..100 (steps of 0.5): rest =
        # (C - 1) e^-lead, a sum of equal terms, down to the range where it is summed again in
        # float64 and the float32 loss is subnormal.
        leads = np.arange(5, 100.25, 0.5)
        blocks = []
        for c in (10, 64, 1000):
            z = np.zeros((len(leads), c))
            y = rng.integers(0, c, len(leads))
            z[np.arange(len(leads)), y] = leads
            blocks.append((z, y))
        return blocks
    if name == "offset":
        # +-1e4 + noise: m - z must be exact, and nothing may be computed as lse - z.
        sign = np.where(rng.random((64, 1)) < 0.5, 1.0, -1.0)
        wide = sign * 1e4 + rng.normal(0, 3, (64, 300))
        sign = np.where(rng.random((2048, 1)) < 0.5, 1.0, -1.0)
        narrow = sign * 1e4 + rng.normal(0, 3, (2048, 10))
        return [(wide, rng.integers(0, 300, 64)), (narrow, rng.integers(0, 10, 2048))]
    if name == "flat-wide":
        return [
            (rng.normal(0, 0.01, (2, 262144)), rng.integers(0, 262144, 2)),
            (np.full((1, 262144), 3.25), np.array([7])),  # exactly flat: p = 2^-18, loss = log C
            (rng.normal(0, 0.01, (16, 16387)), rng.integers(0, 16387, 16)),  # past a block of 16384
        ]
    if name == "steep-few":
        return [(rng.normal(0, 30, (512, c)), rng.integers(0, c, 512)) for c in (2, 3, 4, 7)]
    if name == "ordinary":
        blocks = [
            (rng.normal(0, 2, (128, 1000)), rng.integers(0, 1000, 128)),
            (rng.normal(0, 2, (10000, 10)), rng.integers(0, 10, 10000)),
        ]
        blocks += [(rng.normal(0, 2, (33, c)), rng.integers(0, c, 33)) for c in range(1, 68)]
        return blocks
    raise AssertionError(name)


FAMILIES = [
    "saturated-label",
    "saturated-other",
    "saturated-narrow",
    "saturated-uniform",
    "offset",
    "flat-wide",
    "steep-few",
    "ordinary",
]


def soft_labels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Label distributions (Dirichlet(0.5) rows), some rows one-hot-ish, some summing to 1.3."""
    y = rng.dirichlet(np.full(shape[-1], 0.5), shape[0])
    y[::5] *= 1.3
    return y


# ---------------------------------------------------------------------------------------------
# ulp measurement


def ulp_of(x: np.ndarray, dtype) -> np.ndarray:
    """The spacing of `dtype` at |x| (x rounded to `dtype` first), as float64; the subnormal
    spacing for |x| below the smallest normal (and for 0)."""
    fi = ml_dtypes.finfo(dtype)
    with np.errstate(over="ignore"):
        r = np.abs(np.asarray(x, np.float64).astype(dtype).astype(np.float64))
    _, e = np.frexp(r)  # r = f 2^e, f in [0.5, 1)
    exponent = np.maximum(e - 1, fi.minexp)
    return np.ldexp(1.0, exponent - fi.nmant)


def ulp_error(got, hi, lo=0.0, *, dtype, scale=None) -> float:
    """Worst |got - (hi + lo)| in ulp of the dtype at the exact value (or at `scale`, the
    larger term of a difference, when given)."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    g = got.astype(np.float64)
    hi = np.asarray(hi, np.float64)
    assert np.all(np.isfinite(g)), "non-finite result on finite inputs"
    err = np.abs((g - hi) - lo)
    mag = np.abs(hi) if scale is None else np.maximum(np.abs(hi), np.abs(scale))
    return float(np.max(err / ulp_of(mag, dtype), initial=0.0))


# ---------------------------------------------------------------------------------------------
# References


def ref_f64(z: np.ndarray, y: np.ndarray, soft: np.ndarray) -> dict[str, np.ndarray]:
    """Stable-form reference in float64 from exactly representable inputs, rows (N, C)."""
    n, c = z.shape
    rows = np.arange(n)
    k = z.argmax(axis=1)
    m = z[rows, k]
    d = z - m[:, None]  # exact: float32 inputs of these magnitudes differ exactly in float64
    e = np.exp(d)
    e_off = e.copy()
    e_off[rows, k] = 0.0
    rest = e_off.sum(axis=1)
    l1p = np.log1p(rest)
    den = 1.0 + rest
    p = e / den[:, None]
    # Mass of the classes other than the label, without cancellation: 1 + (rest without the
    # label's term) when the label is not the maximum, rest otherwise.
    others = np.where(y == k, rest, 1.0 + (rest - e_off[rows, y])) / den
    grad = p.copy()
    grad[rows, y] = -others
    s = soft.sum(axis=1)
    return {
        "sparse-loss": (m - z[rows, y]) + l1p,
        "sparse-grad": grad,
        "dense-loss": (soft * -d).sum(axis=1) + s * l1p,
        "dense-grad": s[:, None] * p - soft,
        # The dense gradient with soft labels is a difference of two terms: measured in ulp of
        # the larger one. logsumexp is m + log1p(rest): in ulp of the larger of |m| and
        # log1p(rest) (it cancels when the maximum is near -log1p(rest)).
        "dense-grad-scale": np.maximum(np.abs(s[:, None] * p), np.abs(soft)),
        "logsumexp": m + l1p,
        "logsumexp-scale": np.maximum(np.abs(m), l1p),
        "log_softmax": d - l1p[:, None],
        "softmax": p,
    }


ROW_KEYS = ("sparse-loss", "dense-loss", "logsumexp", "logsumexp-scale")


def ref_mp(z: np.ndarray, y: np.ndarray, soft: np.ndarray, cols: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same quantities with mpmath at 40 digits, in the same stable form (40 digits do
    not hold 1 + 1e-44), as double-doubles (hi, lo); per-class ones at columns `cols`."""
    mpmath.mp.dps = 40
    n = len(z)
    hi = {key: np.zeros(n if key in ROW_KEYS else (n, len(cols))) for key in
          ("sparse-loss", "sparse-grad", "dense-loss", "dense-grad", "dense-grad-scale", "logsumexp",
           "logsumexp-scale", "log_softmax", "softmax")}
    lo = {key: np.zeros_like(v) for key, v in hi.items()}

    def put(key, idx, value):
        h = float(value)
        hi[key][idx] = h
        lo[key][idx] = float(value - h)

    for r in range(n):
        row = [mpmath.mpf(float(v)) for v in z[r]]
        k = int(np.argmax(z[r]))
        m = row[k]
        e = [mpmath.exp(v - m) for v in row]
        rest = mpmath.fsum(e[:k] + e[k + 1 :])
        l1p = mpmath.log1p(rest)
        den = 1 + rest
        label = int(y[r])
        t = [mpmath.mpf(float(v)) for v in soft[r]]
        s = mpmath.fsum(t)
        put("sparse-loss", r, (m - row[label]) + l1p)
        put("dense-loss", r, mpmath.fsum(tj * (m - v) for tj, v in zip(t, row)) + s * l1p)
        put("logsumexp", r, m + l1p)
        hi["logsumexp-scale"][r] = max(abs(float(m)), float(l1p))
        others = rest if label == k else 1 + (rest - e[label])
        for i, j in enumerate(cols):
            p = e[j] / den
            put("sparse-grad", (r, i), -others / den if j == label else p)
            put("dense-grad", (r, i), s * p - t[j])
            hi["dense-grad-scale"][r, i] = max(abs(float(s * p)), abs(float(t[j])))
            put("log_softmax", (r, i), (row[j] - m) - l1p)
            put("softmax", (r, i), p)
    return {key: (hi[key], lo[key]) for key in hi}


# ---------------------------------------------------------------------------------------------
# What fastxent returns, for every function, on one block


def compute(z: np.ndarray, y: np.ndarray, soft: np.ndarray) -> dict[str, np.ndarray]:
    onehot = np.zeros(z.shape, soft.dtype)
    onehot[np.arange(len(y)), y] = 1
    sl, sg = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=y, logits=z)
    ol, og = fx.softmax_cross_entropy_with_logits_and_grad(labels=onehot, logits=z)
    dl, dg = fx.softmax_cross_entropy_with_logits_and_grad(labels=soft, logits=z)
    # The forward-only functions are the same computation, to the bit.
    assert fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z).tobytes() == sl.tobytes()
    assert fx.softmax_cross_entropy_with_logits(labels=soft, logits=z).tobytes() == dl.tobytes()
    assert fx.softmax_cross_entropy_with_logits_v2(labels=onehot, logits=z).tobytes() == ol.tobytes()
    out = {
        "sparse-loss": sl,
        "sparse-grad": sg,
        "onehot-loss": ol,
        "onehot-grad": og,
        "dense-loss": dl,
        "dense-grad": dg,
        "logsumexp": fx.logsumexp(z),
        "log_softmax": fx.log_softmax(z),
        "softmax": fx.softmax(z),
    }
    for reduction in ("sum", "mean"):
        out[reduction] = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, reduction=reduction)
    return out


# (measured key, reference key, scale key or None, bound for float32/float64)
CHECKS = [
    ("sparse-loss", "sparse-loss", None, LOSS_ULP),
    ("sparse-grad", "sparse-grad", None, GRAD_ULP),
    ("onehot-loss", "sparse-loss", None, LOSS_ULP),
    ("onehot-grad", "sparse-grad", None, GRAD_ULP),
    ("logsumexp", "logsumexp", "logsumexp-scale", LOSS_ULP),
    ("log_softmax", "log_softmax", None, LOSS_ULP),
    ("softmax", "softmax", None, GRAD_ULP),
]
# Dense labels that are distributions rather than one-hot (checked in their own tests).
# Soft dense labels: the loss is a dot product of C targets with C log-probabilities, each
# term rounded (float32: up to 2.8 ulp measured), and the gradient `sum(t) p - t` one more
# rounding than the one-hot one (up to 5.1 ulp measured).
SOFT_LOSS_ULP = 4.0
SOFT_GRAD_ULP = 6.0
SOFT_CHECKS = [
    ("dense-loss", "dense-loss", None, SOFT_LOSS_ULP),
    ("dense-grad", "dense-grad", "dense-grad-scale", SOFT_GRAD_ULP),
]
REDUCTIONS = ("sum", "mean")  # of the sparse loss, accumulated in float64: loss bound

# family -> dtype -> check -> worst ulp (printed at the end of the module)
MEASURED: dict[str, dict[str, dict[str, float]]] = collections.defaultdict(lambda: collections.defaultdict(dict))


@pytest.fixture(scope="module", autouse=True)
def report_table(request):
    yield
    if not MEASURED:
        return
    keys = [c[0] for c in CHECKS] + list(REDUCTIONS) + [c[0] for c in SOFT_CHECKS]
    lines = [f"\nworst ulp per family, SIMD tier {fx.simd_tier()} (bounds: loss, logsumexp, log_softmax "
             f"{LOSS_ULP:g}; gradient, softmax {GRAD_ULP:g}; sum, mean {LOSS_ULP:g} (float64: "
             f"{REDUCTION_ULP_F64:g}); half types {HALF_ULP:g})"]
    lines.append(f"{'family':18s} {'dtype':8s} " + " ".join(f"{k:>11s}" for k in keys))
    for fam in FAMILIES:
        for dt in ("float32", "float64", "float16", "bfloat16"):
            got = MEASURED.get(fam, {}).get(dt)
            if got:
                cells = [f"{got[k]:11.2f}" if k in got else f"{'-':>11s}" for k in keys]
                lines.append(f"{fam:18s} {dt:8s} " + " ".join(cells))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\n".join(lines))


def _check_all(fam, dtype, checks, blocks, with_reductions) -> list[str]:
    """Measure every check over the blocks; record the worst ulp; return the violations."""
    failures = []
    for got, want, c, rows, cols in blocks:
        for key, ref_key, scale_key, bound in checks:
            hi, lo = want[ref_key]
            scale = None if scale_key is None else want[scale_key][0]
            g = got[key][rows] if got[key].ndim == 1 else got[key][np.ix_(rows, cols)]
            u = ulp_error(g, hi, lo, dtype=dtype, scale=scale)
            cell = MEASURED[fam][np.dtype(dtype).name]
            cell[key] = max(cell.get(key, 0.0), u)
            bound = HALF_ULP if np.dtype(dtype) in HALF_DTYPES else bound
            if u > bound:
                failures.append(f"{key} C={c}: {u:.2f} ulp > {bound:g}")
        if with_reductions:
            # The sum / mean of the loss over `rows` (every row for float32).
            hi, lo = want["sparse-loss"]
            exact = mpmath.fsum(mpmath.mpf(float(a)) + mpmath.mpf(float(b)) for a, b in zip(hi, np.broadcast_to(lo, hi.shape)))
            for reduction in REDUCTIONS:
                x = exact / len(rows) if reduction == "mean" else exact
                u = ulp_error(got[reduction], float(x), float(x - float(x)), dtype=dtype)
                cell = MEASURED[fam][np.dtype(dtype).name]
                cell[reduction] = max(cell.get(reduction, 0.0), u)
                bound = REDUCTION_ULP_F64 if np.dtype(dtype) == np.float64 else LOSS_ULP
                if u > bound:
                    failures.append(f"reduction={reduction} C={c}: {u:.2f} ulp > {bound:g}")
    return failures


def _pairs(want: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, float]]:
    return {k: (v, 0.0) for k, v in want.items()}


@functools.lru_cache(maxsize=None)
def _float32_blocks(fam: str, dtype_name: str):
    """(results, reference, C, rows, cols) per block of the family, for float32 or a half
    type (whose reference is taken from the half-precision values)."""
    dtype = np.dtype(dtype_name)
    seed = FAMILIES.index(fam) + (0 if dtype == np.float32 else 200 + 10 * HALF_DTYPES.index(dtype))
    rng = np.random.default_rng(seed)
    blocks = []
    for z, y in family_blocks(fam, rng):
        z = z.astype(dtype)
        soft = soft_labels(rng, z.shape).astype(dtype)
        got = compute(z, y, soft)
        if dtype != np.float32:  # the half result is the float32 one rounded once
            wide = compute(z.astype(np.float32), y, soft.astype(np.float32))
            with np.errstate(over="ignore"):  # a float16 sum may overflow: inf both ways
                got["wide"] = {k: v.astype(dtype) for k, v in wide.items()}
        want = ref_f64(z.astype(np.float64), y, soft.astype(np.float64))
        blocks.append((got, _pairs(want), z.shape[1], np.arange(len(z)), np.arange(z.shape[1])))
    return blocks


# Row and class budgets for mpmath (the float64 reference costs ~5 us per exp).
F64_ROWS = 12
F64_COLS = 64


@functools.lru_cache(maxsize=None)
def _float64_blocks(fam: str):
    rng = np.random.default_rng(100 + FAMILIES.index(fam))
    blocks = []
    raw = family_blocks(fam, rng)
    if fam == "ordinary":  # the width sweep: every seventh width
        raw = raw[:2] + raw[2::7]
    elif fam == "flat-wide":  # mpmath takes ~2 s per 65,536 classes: one row of that many
        raw[0] = (raw[0][0][:, :65536], raw[0][1] % 65536)
        raw[1] = (raw[1][0][:, :65536], raw[1][1])
    for z, y in raw:
        n, c = z.shape
        soft = soft_labels(rng, z.shape)
        got = compute(z, y, soft)  # the whole block (so the narrow and split paths run) ...
        # ... checked on a sample of its rows and columns (always the label and the maximum).
        budget = n if fam == "saturated-uniform" else F64_ROWS if c <= 5000 else 1
        rows = np.unique(np.concatenate([[0, n - 1], rng.choice(n, min(n, budget), replace=False)]))
        cols = np.arange(c)
        if c > F64_COLS:
            cols = np.unique(np.concatenate([rng.choice(c, F64_COLS, replace=False), y[rows], z[rows].argmax(axis=1)]))
        want = ref_mp(z[rows], y[rows], soft[rows], cols)
        for reduction in REDUCTIONS:  # reductions over the sampled rows
            got[reduction] = fx.sparse_softmax_cross_entropy_with_logits(labels=y[rows], logits=z[rows], reduction=reduction)
        blocks.append((got, want, c, rows, cols))
    return blocks


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("fam", FAMILIES)
def test_float32(fam):
    """Sparse and one-hot dense loss and gradient, logsumexp, log_softmax, softmax, and the
    sum / mean reductions: within 2 ulp (loss-like) and 4 ulp (gradient-like)."""
    failures = _check_all(fam, np.float32, CHECKS, _float32_blocks(fam, "float32"), True)
    assert not failures, failures


@pytest.mark.parametrize("fam", FAMILIES)
def test_float32_soft_labels(fam):
    """Dense labels that are distributions: loss within 4 ulp, gradient within 6 ulp (of
    the larger of `sum(y) p_j` and `y_j`)."""
    failures = _check_all(fam, np.float32, SOFT_CHECKS, _float32_blocks(fam, "float32"), False)
    assert not failures, failures


@pytest.mark.parametrize("fam", FAMILIES)
def test_float64(fam):
    failures = _check_all(fam, np.float64, CHECKS, _float64_blocks(fam), True)
    assert not failures, failures


@pytest.mark.parametrize("fam", FAMILIES)
def test_float64_soft_labels(fam):
    failures = _check_all(fam, np.float64, SOFT_CHECKS, _float64_blocks(fam), False)
    assert not failures, failures


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("fam", FAMILIES)
def test_half_types(fam, dtype):
    """float16 / bfloat16: within 1 ulp of the exact value of the half-precision inputs, and
    bit-equal to the float32 result on the widened inputs rounded once."""
    blocks = _float32_blocks(fam, dtype.name)
    failures = _check_all(fam, dtype, CHECKS + SOFT_CHECKS, blocks, False)
    for got, _, c, _, _ in blocks:
        for key, rounded in got["wide"].items():
            if rounded.tobytes() != got[key].tobytes():
                bad = int(np.sum(rounded.view(np.uint16) != got[key].view(np.uint16)))
                failures.append(f"{key} C={c}: {bad} of {rounded.size} differ from the float32 result rounded once")
    assert not failures, failures


# ---------------------------------------------------------------------------------------------
# The textbook case every peer gets wrong, stated exactly.


def test_confident_row_exact():
    z = np.array([[40.0, 0.0, 0.5, -1.0]], np.float32)
    loss, grad = fx.sparse_softmax_cross_entropy_with_logits_and_grad(labels=np.array([0]), logits=z)
    mpmath.mp.dps = 40
    rest = mpmath.exp(-40) + mpmath.exp(-39.5) + mpmath.exp(-41)
    exact = mpmath.log1p(rest)
    assert loss[0] != 0.0
    assert ulp_error(loss, float(exact), dtype=np.float32) <= 1.0
    assert ulp_error(grad[:, 0], float(-rest / (1 + rest)), dtype=np.float32) <= 2.0


# ---------------------------------------------------------------------------------------------
# Bit-identical whatever the thread count.


def _every_result(z: np.ndarray, axis: int) -> list[bytes]:
    c = z.shape[axis]
    rng = np.random.default_rng(7)
    batch = tuple(n for d, n in enumerate(z.shape) if d != axis % z.ndim)
    y = rng.integers(0, c, batch)
    soft = np.moveaxis(soft_labels(rng, (int(np.prod(batch)), c)).reshape(batch + (c,)), -1, axis)
    soft = soft.astype(np.float64 if z.dtype == np.float64 else np.float32)
    w = rng.uniform(0.5, 2.0, c)
    out = []

    def add(r):
        for part in r if isinstance(r, tuple) else (r,):
            out.append(np.ascontiguousarray(part).tobytes())

    add(fx.logsumexp(z, axis=axis))
    add(fx.log_softmax(z, axis=axis))
    add(fx.softmax(z, axis=axis))
    for reduction in ("none", "sum", "mean"):
        for opts in ({}, {"label_smoothing": 0.1, "weight": w}):
            add(fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, axis=axis, reduction=reduction, **opts))
            add(fx.sparse_softmax_cross_entropy_with_logits_and_grad(
                labels=y, logits=z, axis=axis, reduction=reduction, ignore_index=3, **opts))
            add(fx.softmax_cross_entropy_with_logits(labels=soft, logits=z, axis=axis, reduction=reduction, **opts))
            add(fx.softmax_cross_entropy_with_logits_v2(labels=soft, logits=z, axis=axis, reduction=reduction, **opts))
            add(fx.softmax_cross_entropy_with_logits_and_grad(
                labels=soft, logits=z, axis=axis, reduction=reduction, **opts))
    return out


THREAD_CASES = [
    ((8, 262144), -1, np.float32),  # few huge rows: split across threads
    ((8, 262144), -1, np.float64),
    ((1, 1_000_003), -1, np.float32),  # one odd-sized row
    ((100000, 10), -1, np.float32),  # many narrow rows: the tiled path, reductions over many rows
    ((100000, 10), -1, np.float64),
    ((262144, 8), 0, np.float32),  # class axis 0: strided rows
    ((3, 100003), -1, np.float16),
    ((4, 65537), -1, BF16),
]


@pytest.mark.parametrize("shape,axis,dtype", THREAD_CASES, ids=lambda v: str(v))
def test_bit_identical_across_thread_counts(shape, axis, dtype):
    rng = np.random.default_rng(11)
    z = rng.normal(0, 3, shape).astype(dtype)
    try:
        results = {}
        for n in (1, 2, 16):
            fx.set_num_threads(n)
            assert fx.get_num_threads() == n
            results[n] = _every_result(z, axis)
    finally:
        fx.set_num_threads(0)
    for n in (2, 16):
        diff = [i for i, (a, b) in enumerate(zip(results[1], results[n])) if a != b]
        assert not diff, f"results {diff} differ between 1 and {n} threads"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("rows, classes", [(16, 1024), (4, 10000)])
def test_smoothed_sparse_loss_where_the_gap_dominates(dtype, rows, classes):
    # With the label at the maximum and half of the classes masked to -1e4, the loss is
    # almost all label smoothing's gap `Σ_j (max - z_j)`: summed without compensation (a
    # kernel's plain lanes, for a while) it lost up to 12 ulp (float32) and 14 (float64), and
    # 4.4 ulp (float64, AVX2) in chains of 16 trees (a try at groups of 512 elements).
    # Against mpmath at 40 digits, with the compute type's own ε terms.
    rng = np.random.default_rng(8)
    z = rng.normal(0, 1, (rows, classes)).astype(dtype)
    z[:, ::2] = -1e4
    y = z.argmax(1)
    loss = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, label_smoothing=0.1)
    eps = dtype(0.1)
    keep, uniform = mpmath.mpf(float(dtype(1) - eps)), mpmath.mpf(float(eps / dtype(classes)))
    with mpmath.workdps(40):
        for r in range(len(z)):
            zr = [mpmath.mpf(float(x)) for x in z[r]]
            m = max(zr)
            lse = m + mpmath.log(mpmath.fsum(mpmath.exp(x - m) for x in zr))
            want = keep * (lse - zr[y[r]]) + uniform * mpmath.fsum(lse - x for x in zr)
            err = abs(mpmath.mpf(float(loss[r])) - want) / float(np.spacing(dtype(float(want))))
            assert err <= 4, f"row {r}: {loss[r]!r} against {mpmath.nstr(want, 20)}: {float(err):.2f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("classes", [200, 1024, 3000, 10000])
@pytest.mark.parametrize("masked", [False, True], ids=["normal", "half-masked"])
def test_smoothed_one_hot_dense_loss(dtype, classes, masked):
    # Dense one-hot labels with label smoothing: all but one target equal, the worst case for
    # a plain running sum of the targets' terms (the kernel's two chains of vectors lost up
    # to 31 ulp with half the logits masked to -1e4, and 22 ulp of float64 losses without).
    # Against mpmath at 40 digits, with the targets as the compute type rounds them.
    rng = np.random.default_rng(classes)
    z = rng.normal(0, 1, (4, classes)).astype(dtype)
    if masked:
        z[:, ::2] = -1e4
    y = np.eye(classes, dtype=dtype)[z.argmax(1)]
    loss = fx.softmax_cross_entropy_with_logits(labels=y, logits=z, label_smoothing=0.1)
    eps = dtype(0.1)
    t = (dtype(1) - eps) * y + eps / dtype(classes)
    with mpmath.workdps(40):
        for r in range(len(z)):
            zr = [mpmath.mpf(float(x)) for x in z[r]]
            m = max(zr)
            lse = m + mpmath.log(mpmath.fsum(mpmath.exp(x - m) for x in zr))
            want = mpmath.fsum(mpmath.mpf(float(tj)) * (lse - x) for tj, x in zip(t[r], zr))
            err = abs(mpmath.mpf(float(loss[r])) - want) / float(np.spacing(dtype(float(want))))
            assert err <= 4, f"row {r}: {loss[r]!r} against {mpmath.nstr(want, 20)}: {float(err):.2f} ulp"


def test_weighted_mean_divides_by_the_exact_weight_sum():
    # `reduction="mean"` with class weights divides by the sum of the counted rows' weights:
    # summed with compensation, the float64 mean is within an ulp of the exact quotient of
    # the per-row losses' sum by it (a plain sum of 1000 weights was 52 ulp off).
    rng = np.random.default_rng(5)
    z = rng.normal(0, 3, (1000, 2))
    y = rng.integers(0, 2, 1000)
    w = np.array([0.0, rng.uniform(0.5, 2)])
    per_row = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, weight=w)
    mean = fx.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z, weight=w, reduction="mean")
    exact = sum(fractions.Fraction(float(x)) for x in per_row) / sum(fractions.Fraction(float(w[k])) for k in y)
    assert abs(fractions.Fraction(float(mean)) - exact) <= fractions.Fraction(np.spacing(float(exact)))
