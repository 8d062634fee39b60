"""Property tests (hypothesis): any shape, axis, dtype, memory layout and option combination
gives the answer of an independent float64 NumPy reference, or raises ValueError, and raises
it exactly when the input is invalid. Never another exception type.

What is drawn:
* shapes of rank 0 to 4 with sizes 0 to 6 (so 0- and 1-sized axes are common), any axis in
  [-rank, rank), and now and then an axis out of range;
* logits float16, bfloat16, float32, float64 (and now and then a nested list), values of
  three scales, confident rows, ties, and NaN / +inf / -inf / 1e30 injected;
* layouts, for logits, labels, weights and output buffers alike: C order, Fortran order,
  negative strides, slices with a step, transposes, unaligned (np.frombuffer with an offset),
  byte-swapped, read-only, zero strides (np.broadcast_to), and two of them stacked;
* sparse labels of every integer dtype (ignore_index rows, and now and then an out-of-range
  label or a wrong shape); dense labels broadcasting against the logits (float16 to float64,
  and now and then an integer dtype, which is invalid);
* options: reduction, label_smoothing, weight (any float or integer dtype; now and then of
  the wrong shape, negative or not finite), ignore_index, dim, name, out, grad_out.

The reference is written here from the definitions (design.md §1), in float64, in the stable
form (log1p of the mass off the maximum), independent of the implementation and of conftest.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fastxent as fx

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
INTS = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]
LAYOUTS = ["c", "fortran", "negative", "sliced", "transposed", "unaligned", "byteswapped", "readonly", "zero-stride"]

# CI draws a fixed sample (a red CI must be a bug, not a draw); by hand, a new draw each run.
SETTINGS = settings(
    max_examples=int(os.environ.get("FASTXENT_PROPERTY_EXAMPLES", "200")),  # more by hand
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# Layouts: the same values (zero-stride aside) in another memory layout.


def relayout(a: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    a = np.asarray(a)
    if kind == "fortran" and a.ndim:
        return np.asfortranarray(a)
    if kind == "negative" and a.ndim:
        return np.flip(np.flip(a).copy())
    if kind == "sliced" and a.ndim:
        buf = np.zeros(tuple(2 * n + 1 for n in a.shape), a.dtype)
        view = buf[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "transposed" and a.ndim > 1:
        perm = rng.permutation(a.ndim)
        return np.transpose(np.ascontiguousarray(np.transpose(a, perm)), np.argsort(perm))
    if kind == "unaligned" and a.dtype.itemsize > 1:
        offset = int(rng.integers(1, a.dtype.itemsize))
        buf = bytearray(a.nbytes + offset)
        out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
        out[...] = a
        return out
    if kind == "byteswapped" and a.dtype.itemsize > 1 and a.dtype != BF16:
        return a.astype(a.dtype.newbyteorder("S"))
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if kind == "zero-stride" and a.ndim and a.shape[0] > 1:
        return np.broadcast_to(a[:1], a.shape)  # changes the values: references use the result
    return a


def draw_layout(draw, rng, a):
    a = relayout(a, draw(st.sampled_from(LAYOUTS)), rng)
    if draw(st.integers(0, 4)) == 0:  # two stacked
        a = relayout(a, draw(st.sampled_from(["negative", "sliced", "transposed", "fortran"])), rng)
    return a


# ---------------------------------------------------------------------------------------------
# The reference, from the definitions (class axis last, float64).


def ref_rows(z: np.ndarray):
    """(log_softmax, logsumexp, irregular, scale of logsumexp's terms) per row; irregular rows
    (NaN, +inf, all -inf) get NaN log_softmax; logsumexp is NaN / +inf / -inf for them."""
    c = z.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        has_nan = np.isnan(z).any(axis=-1)
        has_pinf = (z == np.inf).any(axis=-1)
        all_ninf = (z == -np.inf).all(axis=-1) if c else np.ones(z.shape[:-1], bool)
        irregular = has_nan | has_pinf | all_ninf
        zs = np.where(irregular[..., None], 0.0, z)
        m = zs.max(axis=-1, initial=-np.inf) if c else np.zeros(z.shape[:-1])
        m = np.where(irregular, 0.0, m)
        k = zs.argmax(axis=-1) if c else np.zeros(z.shape[:-1], int)
        e = np.exp(zs - m[..., None])
        if c:
            np.put_along_axis(e, k[..., None], 0.0, axis=-1)
        l1p = np.log1p(e.sum(axis=-1))
        logp = (zs - m[..., None]) - l1p[..., None]
        logp = np.where(irregular[..., None], np.nan, logp)
        lse = m + l1p
        lse_scale = np.abs(m) + l1p  # m + log1p(rest) cancels when m is near -log1p(rest)
        lse = np.where(all_ninf, -np.inf, lse)
        lse = np.where(has_pinf, np.inf, lse)
        lse = np.where(has_nan, np.nan, lse)
    return logp, lse, irregular, lse_scale


def ref_loss_grad(logp, irregular, t, counted, reduction, den):
    """Loss and gradient for targets t (class axis last); rows not `counted` give 0 and 0."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        loss = -np.where(t != 0, t * logp, 0.0).sum(axis=-1)
        loss = np.where(irregular, np.nan, loss)
        grad = t.sum(axis=-1, keepdims=True) * np.exp(logp) - t
        grad = np.where(irregular[..., None], np.nan, grad)
        scale = np.abs(t.sum(axis=-1, keepdims=True) * np.exp(logp)) + np.abs(t)
        loss = np.where(counted, loss, 0.0)
        grad = np.where(counted[..., None], grad, 0.0)
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            loss = loss.sum() / den
            grad = np.where(counted[..., None], grad / den, 0.0)  # ignored rows: 0 (as PyTorch)
            scale = scale / abs(den) if den else scale
    return loss, grad, scale


# ---------------------------------------------------------------------------------------------
# Comparison


def tolerance(dtype) -> float:
    return {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-10}[np.dtype(dtype).name]


def check(got, want, dtype, what, scale=None):
    """`got` has `dtype` and `want`'s shape, equal NaN / inf patterns (after rounding to
    `dtype`), and finite values within the dtype's tolerance (of |want| + scale)."""
    assert isinstance(got, np.ndarray), f"{what}: result of type {type(got).__name__}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    g = got.astype(np.float64)
    with np.errstate(over="ignore"):
        rounded = want.astype(dtype).astype(np.float64)  # what the dtype can hold
    assert np.array_equal(np.isnan(g), np.isnan(rounded)), f"{what}: NaN pattern {g} vs {want}"
    inf = np.isinf(rounded)
    assert np.array_equal(g[inf], rounded[inf]) and not np.isinf(g[~inf & ~np.isnan(g)]).any(), (
        f"{what}: inf pattern {g} vs {want}"
    )
    fin = np.isfinite(rounded)
    s = 0.0 if scale is None else np.broadcast_to(np.nan_to_num(scale), want.shape)[fin]
    tol = tolerance(dtype)
    tiny = 16 * float(ml_dtypes.finfo(dtype).smallest_subnormal)  # (few digits in subnormals)
    bad = np.abs(g[fin] - want[fin]) > tol * (np.abs(want[fin]) + s) + tiny
    assert not bad.any(), f"{what}: {g[fin][bad][:5]} vs {want[fin][bad][:5]} ({dtype})"


# ---------------------------------------------------------------------------------------------
# Drawing a problem. About a third of the examples carry one deliberate fault (`bad`), which
# must give a ValueError; the rest are valid (zero classes with a non-empty batch aside).

SPARSE_FAULTS = ["rank0", "axis", "reduction", "smoothing", "weight-shape", "weight-negative",
                 "weight-nonfinite", "label-range", "label-shape", "label-dtype"]
DENSE_FAULTS = ["rank0", "axis", "reduction", "smoothing", "weight-shape", "weight-negative",
                "weight-nonfinite", "label-shape", "label-dtype"]


def draw_fault(draw, faults):
    return draw(st.sampled_from(faults)) if draw(st.integers(0, 2)) == 0 else None


@st.composite
def logits_case(draw, rank0=False):
    rank = 0 if rank0 else draw(st.sampled_from([1, 2, 2, 3, 4]))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from(FLOATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = rng.normal(0, draw(st.sampled_from([0.01, 1.0, 30.0])), shape)
    kind = draw(st.integers(0, 5))
    if kind == 0 and z.ndim and z.size:  # a dominant entry in most rows of the last axis
        z = z + 60.0 * (rng.random(shape) < 1.0 / max(shape[-1], 1))
    elif kind == 1:  # integer-valued: ties
        z = np.round(z)
    if z.size and draw(st.integers(0, 2)) == 0:
        for _ in range(draw(st.integers(1, 3))):
            z.flat[rng.integers(0, z.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -np.inf, 1e30, -1e30]))
    with np.errstate(over="ignore"):
        z = z.astype(dtype)
    return z, rng


def draw_axis(draw, ndim, bad):
    if bad == "axis" or ndim == 0:
        return draw(st.sampled_from([ndim, -ndim - 1, 100, -100]))
    return draw(st.integers(-ndim, ndim - 1))


def expected_dtype(x) -> np.dtype:
    return np.asarray(x).dtype.newbyteorder("=") if np.asarray(x).dtype != BF16 else BF16


# ---------------------------------------------------------------------------------------------
# Row functions


@SETTINGS
@given(st.data())
def test_row_functions(data):
    draw = data.draw
    bad = draw_fault(draw, ["rank0", "axis"])
    z, rng = draw(logits_case(rank0=bad == "rank0"))
    axis = draw_axis(draw, z.ndim, bad)
    x = draw_layout(draw, rng, z)
    if draw(st.integers(0, 9)) == 0 and x.dtype == np.float64 and x.size:  # (a list loses empty axes)
        x = x.tolist()
    fn = draw(st.sampled_from([fx.log_softmax, fx.softmax, fx.logsumexp]))
    zv = np.asarray(x, np.float64)
    before = np.asarray(x).tobytes()
    # Zero classes: log_softmax / softmax of an empty row is empty; logsumexp of one is -inf.
    try:
        got = fn(x, axis=axis)
    except ValueError as e:
        assert bad, f"ValueError on a valid input: {e}"
        event("ValueError")
        return
    event("result")
    assert not bad, f"{fn.__name__} accepted axis={axis} for shape {zv.shape}"
    assert np.asarray(x).tobytes() == before, "the input was modified"
    zz = np.moveaxis(zv, axis, -1)
    logp, lse, _, lse_scale = ref_rows(zz)
    dtype = expected_dtype(x)
    if fn is fx.logsumexp:
        if zz.shape[-1] == 0:
            lse = np.full(zz.shape[:-1], -np.inf)
        check(got, lse, dtype, "logsumexp", lse_scale)
    elif fn is fx.log_softmax:
        check(got, np.moveaxis(logp, -1, axis), dtype, "log_softmax")
    else:
        with np.errstate(invalid="ignore"):
            check(got, np.moveaxis(np.exp(logp), -1, axis), dtype, "softmax")


# ---------------------------------------------------------------------------------------------
# Options shared by both losses


def draw_options(draw, rng, c, bad):
    options = {}
    if bad == "reduction":
        options["reduction"] = draw(st.sampled_from(["bogus", "MEAN", "", "avg"]))
    elif draw(st.booleans()):
        options["reduction"] = draw(st.sampled_from(["none", "sum", "mean"]))
    if bad == "smoothing":
        eps = draw(st.sampled_from([-0.1, 1.5, float("nan"), float("inf")]))
    else:
        eps = draw(st.sampled_from([None, None, 0.0, 0.1, 1.0, 0.37]))
    if eps is not None:
        options["label_smoothing"] = draw(st.sampled_from([float, np.float32, np.float64]))(eps)
    if bad and bad.startswith("weight") or draw(st.booleans()):
        w = rng.uniform(0, 2, c)
        if draw(st.booleans()):
            w = np.round(w * 3)  # integer-valued weights (zeros among them)
        if bad == "weight-shape":
            w = draw(st.sampled_from([rng.uniform(0, 2, c + 1), rng.uniform(0, 2, (1, c)), np.float64(1.0)]))
        elif bad == "weight-negative":
            w = np.append(w, -0.5)[1:] if c else w  # -0.5 as the last class's weight
        elif bad == "weight-nonfinite":
            w = np.append(w, draw(st.sampled_from([np.nan, np.inf])))[1:] if c else w
        kinds = [np.float64, np.float32, np.float16, BF16]
        wdtype = draw(st.sampled_from(kinds if bad in ("weight-negative", "weight-nonfinite") else kinds + [np.int64, np.uint8]))
        if np.dtype(wdtype).kind in "iu":
            w = np.round(w * 2)
        w = draw_layout(draw, rng, np.asarray(w).astype(wdtype))
        options["weight"] = w
    if draw(st.integers(0, 5)) == 0:
        options["name"] = draw(st.sampled_from(["loss", None]))
    return options


def fault_lost(bad, options, c) -> bool:
    """A drawn fault that the drawing could not express (no class to give a bad weight to, or
    a zero-stride layout that repeated a good value over the bad one)."""
    if bad in ("weight-negative", "weight-nonfinite"):
        w = np.asarray(options["weight"], np.float64)
        return not (np.any(w < 0) if bad == "weight-negative" else not np.all(np.isfinite(w)))
    return False


def weight_and_eps(options):
    w = options.get("weight")
    return (None if w is None else np.asarray(w).astype(np.float64)), float(options.get("label_smoothing", 0.0))


def out_buffer(draw, rng, shape, dtype, maybe):
    """An output buffer of the right shape and dtype in a random layout; `maybe` collects the
    layouts the call may refuse (read-only must be refused, byte-swapped and unaligned may)."""
    kind = draw(st.sampled_from(["c", "fortran", "negative", "sliced", "transposed", "unaligned", "byteswapped", "readonly"]))
    buf = relayout(np.full(shape, np.nan).astype(dtype), kind, rng)
    if not buf.flags.writeable:
        maybe.append("readonly")
    elif kind in ("unaligned", "byteswapped"):
        maybe.append(kind)
    return buf


def outcome(call, bad, maybe):
    """Call; return its result, or None after checking that a ValueError was due."""
    try:
        got = call()
    except ValueError as e:
        assert bad or maybe, f"ValueError on a valid input: {e}"
        event(f"ValueError ({bad or maybe[0]})")
        return None
    event("result")
    assert not bad, f"accepted an invalid input ({bad})"
    assert "readonly" not in maybe, "wrote into a read-only buffer"
    return got


# ---------------------------------------------------------------------------------------------
# Sparse


@SETTINGS
@given(st.data())
def test_sparse(data):
    draw = data.draw
    bad = draw_fault(draw, SPARSE_FAULTS)
    maybe: list[str] = []
    z, rng = draw(logits_case(rank0=bad == "rank0"))
    axis = draw_axis(draw, z.ndim, bad)
    ax = axis % z.ndim if z.ndim and -z.ndim <= axis < z.ndim else max(z.ndim - 1, 0)
    c = z.shape[ax] if z.ndim else 0
    batch = tuple(n for d, n in enumerate(z.shape) if d != ax)
    zero_classes = c == 0 and int(np.prod(batch)) > 0 and z.ndim > 0
    ldtype = draw(st.sampled_from(INTS))
    y = rng.integers(0, max(c, 1), batch)
    options = draw_options(draw, rng, c, bad)
    ignore = draw(st.sampled_from([None, None, -100, 0, 2, 2**40]))
    if ignore is not None:
        options["ignore_index"] = ignore if ignore == 2**40 else draw(st.sampled_from([int, np.int64, np.int32]))(ignore)
        if y.size and draw(st.booleans()) and (ignore >= 0 or ldtype.kind == "i") and ignore <= np.iinfo(ldtype).max:
            y.flat[rng.integers(0, y.size)] = ignore
    if bad == "label-range":
        if not y.size:
            bad = None  # no row to put it in
        else:
            choices = [v for v in (c, c + 1, -1, -100, 127, 2**40) if v != ignore and np.iinfo(ldtype).min <= v <= np.iinfo(ldtype).max]
            y.flat[rng.integers(0, y.size)] = draw(st.sampled_from(choices or [c]))
    y = y.astype(ldtype)
    if bad == "label-shape":
        y = draw(st.sampled_from([y[..., None], np.zeros(batch + (2,), ldtype), np.zeros((len(batch) and batch[0] + 1,), ldtype)]))
    elif bad == "label-dtype":
        y = y.astype(draw(st.sampled_from([np.float64, np.float32, np.bool_, np.complex64])))
    with_grad = draw(st.booleans())
    dtype = expected_dtype(z)
    reduction = options.get("reduction", "none")
    loss_shape = () if reduction in ("sum", "mean") else batch
    if draw(st.integers(0, 4)) == 0:
        options["out"] = out_buffer(draw, rng, loss_shape, dtype, maybe)
    if with_grad and draw(st.integers(0, 4)) == 0:
        options["grad_out"] = out_buffer(draw, rng, z.shape, dtype, maybe)
    zx, yx = draw_layout(draw, rng, z), draw_layout(draw, rng, y)
    if bad == "label-range":
        yi = np.asarray(yx).astype(np.float64)  # (uint64 labels past 2^63 stay out of range)
        if not (((yi < 0) | (yi >= c)) & (yi != (ignore if ignore is not None else -1.5))).any():
            bad = None  # overwritten by the ignore_index, or a zero-stride layout lost it
    if fault_lost(bad, options, c):
        bad = None
    if zero_classes and not bad:
        bad = "zero classes"
    if z.size and draw(st.integers(0, 9)) == 0 and dtype == np.float64:
        zx = zx.tolist()
    before = (np.asarray(zx).tobytes(), np.asarray(yx).tobytes())
    fn = fx.sparse_softmax_cross_entropy_with_logits_and_grad if with_grad else fx.sparse_softmax_cross_entropy_with_logits
    got = outcome(lambda: fn(labels=yx, logits=zx, axis=axis, **options), bad, maybe)
    if got is None:
        return
    assert (np.asarray(zx).tobytes(), np.asarray(yx).tobytes()) == before, "an input was modified"

    zv = np.moveaxis(np.asarray(zx, np.float64), ax, -1)
    yv = np.asarray(yx).astype(np.int64)
    w, eps = weight_and_eps(options)
    w = np.ones(c) if w is None else w
    logp, _, irregular, _ = ref_rows(zv)
    ignored = np.zeros(yv.shape, bool) if ignore is None else yv == ignore
    yy = np.where(ignored, 0, yv)
    onehot = np.zeros(yy.shape + (c,))
    np.put_along_axis(onehot, yy[..., None], 1.0, axis=-1)
    t = (1 - eps) * onehot * w[yy][..., None] + eps / max(c, 1) * w
    den = np.where(ignored, 0.0, w[yy]).sum()
    loss, grad, scale = ref_loss_grad(logp, irregular, t, ~ignored, reduction, den)
    loss_got, grad_got = got if with_grad else (got, None)
    if "out" in options:
        assert loss_got is options["out"], "out= was not returned"
    if reduction == "mean" and den == 0 and np.any(t):
        # Every counted row has weight 0 but smoothing spreads some: the mean divides a
        # non-zero sum by 0 (PyTorch: NaN; inf - inf in the gradient): only "not finite" is
        # defined.
        assert not np.isfinite(loss_got), f"mean over zero total weight gave {loss_got}"
        assert grad_got is None or grad_got.shape == z.shape and grad_got.dtype == dtype
        return
    check(loss_got, loss, dtype, "sparse loss")
    if with_grad:
        if "grad_out" in options:
            assert grad_got is options["grad_out"], "grad_out= was not returned"
        check(grad_got, np.moveaxis(grad, -1, ax), dtype, "sparse grad", np.moveaxis(scale, -1, ax))


# ---------------------------------------------------------------------------------------------
# Dense


@SETTINGS
@given(st.data())
def test_dense(data):
    draw = data.draw
    bad = draw_fault(draw, DENSE_FAULTS)
    maybe: list[str] = []
    z, rng = draw(logits_case(rank0=bad == "rank0"))
    axis = draw_axis(draw, z.ndim, bad)
    use_dim = draw(st.integers(0, 5)) == 0
    # Labels broadcast against the logits: some axes of size 1, maybe fewer or more axes.
    lshape = [n if draw(st.integers(0, 3)) else 1 for n in z.shape]
    if lshape and draw(st.integers(0, 3)) == 0:
        lshape = lshape[draw(st.integers(0, len(lshape))) :]
    elif draw(st.integers(0, 5)) == 0:
        lshape = [draw(st.integers(1, 3))] + lshape
    shape = np.broadcast_shapes(z.shape, tuple(lshape))
    if bad == "label-shape":
        clash = [d for d in range(1, len(lshape) + 1) if z.ndim >= d and z.shape[-d] != 1]
        if clash:
            d = draw(st.sampled_from(clash))
            lshape[-d] = z.shape[-d] + 2
        else:
            bad = None  # every axis of the logits broadcasts
    y = rng.random(tuple(lshape))
    if draw(st.booleans()) and y.size:  # one-hot-ish rows, and rows of zeros
        y = np.round(y * 0.6)
    y = y.astype(draw(st.sampled_from(FLOATS)))
    if bad == "label-dtype":
        y = (y * 3).astype(draw(st.sampled_from([np.int64, np.int8, np.uint16, np.bool_, np.complex128])))
    valid_axis = z.ndim and -z.ndim <= axis < z.ndim
    ax_out = axis % z.ndim + (len(shape) - z.ndim) if valid_axis else len(shape) - 1
    c = shape[ax_out] if shape else 0
    zero_classes = c == 0 and int(np.prod([n for d, n in enumerate(shape) if d != ax_out])) > 0 and z.ndim > 0
    options = draw_options(draw, rng, c, bad)
    # TF 1's dim: alone (the default axis gives way), or with an explicit axis naming the same
    # axis, possibly from the other end.
    axis_given = {"axis": axis}
    if use_dim:
        options["dim"] = axis
        same = [axis, axis - z.ndim if axis >= 0 else axis + z.ndim] if valid_axis else [axis]
        axis_given = draw(st.sampled_from([{}, *({"axis": a} for a in same)]))
    with_grad = draw(st.booleans())
    if with_grad and shape != z.shape:
        maybe.append("a gradient for logits that broadcast")  # refused, with a clear message
    fn = (
        fx.softmax_cross_entropy_with_logits_and_grad
        if with_grad
        else draw(st.sampled_from([fx.softmax_cross_entropy_with_logits, fx.softmax_cross_entropy_with_logits_v2]))
    )
    dtype = expected_dtype(z)
    reduction = options.get("reduction", "none")
    loss_shape = () if reduction in ("sum", "mean") else tuple(n for d, n in enumerate(shape) if d != ax_out)
    if draw(st.integers(0, 4)) == 0:
        options["out"] = out_buffer(draw, rng, loss_shape, dtype, maybe)
    if with_grad and draw(st.integers(0, 4)) == 0:
        options["grad_out"] = out_buffer(draw, rng, z.shape, dtype, maybe)
    zx, yx = draw_layout(draw, rng, z), draw_layout(draw, rng, y)
    if fault_lost(bad, options, c):
        bad = None
    if zero_classes and not bad:
        bad = "zero classes"
    before = (np.asarray(zx).tobytes(), np.asarray(yx).tobytes())
    got = outcome(lambda: fn(labels=yx, logits=zx, **axis_given, **options), bad, maybe)
    if got is None:
        return
    assert (np.asarray(zx).tobytes(), np.asarray(yx).tobytes()) == before, "an input was modified"

    zv = np.asarray(zx, np.float64)
    # Labels are read in the compute type: float64 with float64 logits, float32 otherwise.
    compute = np.float64 if dtype == np.float64 else np.float32
    yv = np.asarray(yx).astype(compute).astype(np.float64)
    zb = np.moveaxis(np.broadcast_to(zv, shape), ax_out, -1)
    yb = np.moveaxis(np.broadcast_to(yv, shape), ax_out, -1)
    w, eps = weight_and_eps(options)
    w = np.ones(c) if w is None else w
    logp, _, irregular, _ = ref_rows(zb)
    t = w * ((1 - eps) * yb + eps / max(c, 1))
    n_rows = int(np.prod(zb.shape[:-1]))
    loss, grad, scale = ref_loss_grad(logp, irregular, t, np.ones(zb.shape[:-1], bool), reduction, n_rows)
    loss_got, grad_got = got if with_grad else (got, None)
    if "out" in options:
        assert loss_got is options["out"], "out= was not returned"
    check(loss_got, loss, dtype, "dense loss")
    if with_grad:
        if "grad_out" in options:
            assert grad_got is options["grad_out"], "grad_out= was not returned"
        check(grad_got, np.moveaxis(grad, -1, ax_out), dtype, "dense grad", np.moveaxis(scale, -1, ax_out))
