"""Shared float64 references (independent NumPy code) and input-layout helpers.

The references never call fastxent. They follow the numerics decisions of design §1:
- log_softmax / softmax: a row containing NaN or +inf, or of all -inf, is NaN throughout;
- logsumexp: NaN if the row has a NaN, else +inf if it has a +inf, -inf if it is all -inf;
- losses: such rows give a NaN loss and a NaN gradient row (ignored sparse rows excepted: they
  give 0 and 0); a zero target on a -inf logit contributes 0, positive mass on one gives +inf;
- options as torch.nn.functional.cross_entropy: targets `t = w * ((1 - eps) * y + eps / C)`,
  sparse mean divides by the summed weights of the counted rows, dense mean by the row count;
- gradient = d sum(loss as returned) / d logits = sum(t) * softmax - t per row.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
HALF_DTYPES = [np.dtype(np.float16), BF16]
INT_DTYPES = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]
DENSE_LABEL_DTYPES = FLOAT_DTYPES

LAYOUT_NAMES = ["c", "fortran", "readonly", "negative", "strided", "mixed", "bigendian", "unaligned", "list"]


def dtype_id(dt: Any) -> str:
    """A readable test id for a dtype."""
    return np.dtype(dt).name


def compute_dtype(logits_dtype: Any) -> np.dtype:
    """The type fastxent computes in: float64 for float64 logits, float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(logits_dtype) == np.float64 else np.dtype(np.float32)


def as_compute(labels: Any, logits_dtype: Any) -> np.ndarray:
    """Dense labels as the core sees them (converted to the compute type), back in float64."""
    with np.errstate(over="ignore"):
        return np.asarray(labels).astype(compute_dtype(logits_dtype)).astype(np.float64)


def result_dtype(x: Any) -> np.dtype:
    """The dtype fastxent must return for logits `x`: that of np.asarray(x), native byte order."""
    return np.asarray(x).dtype.newbyteorder("=")


# --------------------------------------------------------------------------- references


def ref_stats(z: np.ndarray, axis: int):
    """Per-row (max, argmax-excluded mass `rest`, row mask of irregular rows), float64, with the
    class axis moved last. Irregular: a NaN or +inf in the row, or a row of all -inf."""
    z = np.moveaxis(np.asarray(z, dtype=np.float64), axis, -1)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(z, axis=-1, initial=-np.inf) if z.shape[-1] else np.full(z.shape[:-1], -np.inf)
        irregular = ~np.isfinite(m) | np.isnan(z).any(axis=-1)
        k = np.argmax(z, axis=-1) if z.shape[-1] else np.zeros(z.shape[:-1], int)
        safe_m = np.where(irregular, 0.0, m)
        e = np.exp(z - safe_m[..., None])
        if z.shape[-1]:
            np.put_along_axis(e, k[..., None], 0.0, axis=-1)
        rest = e.sum(axis=-1)
    return z, safe_m, k, rest, irregular


def ref_log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    zz, m, _, rest, irregular = ref_stats(z, axis)
    with np.errstate(invalid="ignore"):
        out = (zz - m[..., None]) - np.log1p(rest)[..., None]
    out[irregular] = np.nan
    return np.moveaxis(out, -1, axis)


def ref_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(ref_log_softmax(z, axis))


def ref_logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    zz, m, _, rest, irregular = ref_stats(z, axis)
    out = m + np.log1p(rest)
    with np.errstate(invalid="ignore"):
        raw = np.max(zz, axis=-1, initial=-np.inf) if zz.shape[-1] else np.full(zz.shape[:-1], -np.inf)
    out = np.where(irregular, raw, out)  # +inf with a +inf, -inf when all -inf
    out = np.where(np.isnan(zz).any(axis=-1), np.nan, out)
    return out


def _loss_and_grad(logp: np.ndarray, t: np.ndarray, irregular: np.ndarray):
    """Per-row loss -sum(t * logp) (a term with t == 0 counts 0) and gradient sum(t) p - t;
    rows with irregular logits give NaN throughout."""
    with np.errstate(invalid="ignore", over="ignore"):
        loss = -np.where(t != 0, t * logp, 0.0).sum(-1)
        grad = t.sum(-1, keepdims=True) * np.exp(logp) - t
    loss = np.where(irregular, np.nan, loss)
    grad = np.where(irregular[..., None], np.nan, grad)
    return loss, grad


def ref_sparse(z, labels, axis=-1, reduction="none", label_smoothing=0.0, weight=None, ignore_index=None):
    """Loss and gradient (d sum(loss) / d z), float64, by torch.nn.functional.cross_entropy's
    definitions."""
    z = np.asarray(z, np.float64)
    logp = np.moveaxis(ref_log_softmax(z, axis), axis, -1)
    irregular = ref_stats(z, axis)[4]
    c = logp.shape[-1]
    y = np.asarray(labels).astype(np.int64)
    ignored = np.zeros(y.shape, bool) if ignore_index is None else (y == ignore_index)
    yy = np.where(ignored, 0, y)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    onehot = np.zeros(yy.shape + (c,))
    np.put_along_axis(onehot, yy[..., None], 1.0, axis=-1)
    t = (1 - label_smoothing) * onehot * w[yy][..., None] + label_smoothing / max(c, 1) * w
    t = np.where(ignored[..., None], 0.0, t)
    loss, grad = _loss_and_grad(logp, t, irregular)
    # Ignored rows: 0 loss and 0 gradient, whatever their logits.
    loss = np.where(ignored, 0.0, loss)
    grad = np.where(ignored[..., None], 0.0, grad)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        den = np.where(ignored, 0.0, w[yy]).sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            loss, grad = loss.sum() / den, np.where(ignored[..., None], 0.0, grad / den)
    return loss, np.moveaxis(grad, -1, axis)


def ref_dense(z, labels, axis=-1, reduction="none", label_smoothing=0.0, weight=None):
    """Loss (broadcast shape without the class axis) and gradient (broadcast shape), float64.
    `axis` names an axis of the logits; labels of higher rank add leading batch axes."""
    z = np.asarray(z, np.float64)
    shape = np.broadcast_shapes(z.shape, np.shape(labels))
    ax = axis % z.ndim + (len(shape) - z.ndim)
    zb = np.broadcast_to(z, shape)
    logp = np.moveaxis(ref_log_softmax(zb, ax), ax, -1)
    irregular = ref_stats(zb, ax)[4]
    y = np.moveaxis(np.broadcast_to(np.asarray(labels, np.float64), shape), ax, -1)
    c = logp.shape[-1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    t = w * ((1 - label_smoothing) * y + label_smoothing / max(c, 1))
    loss, grad = _loss_and_grad(logp, t, irregular)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        n = loss.size
        with np.errstate(invalid="ignore", divide="ignore"):
            loss, grad = loss.sum() / n, grad / n
    return loss, np.moveaxis(grad, -1, ax)


# --------------------------------------------------------------------------- layouts


def layouts(a: np.ndarray) -> dict[str, Any]:
    """The same values in odd memory layouts (and as a nested list)."""
    a = np.asarray(a)
    out: dict[str, Any] = {
        "c": a,
        "fortran": np.asfortranarray(a),
        "readonly": a.copy(),
        "negative": np.flip(np.flip(a).copy()),
        "bigendian": a.astype(a.dtype.newbyteorder(">")) if a.dtype.kind in "fiu" and a.itemsize > 1 else a,
        "list": a.tolist(),
    }
    out["readonly"].flags.writeable = False
    if a.ndim:
        # every axis strided by 2: a view into a larger buffer
        big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
        big[(slice(None, None, 2),) * a.ndim] = a
        out["strided"] = big[(slice(None, None, 2),) * a.ndim]
        # negative stride on the first axis, step 3 on the last
        big = np.zeros(a.shape[:-1] + (3 * a.shape[-1],), a.dtype)
        big[..., ::3] = a[::-1]
        out["mixed"] = big[..., ::3][::-1]
        buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
        unaligned = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
        unaligned[...] = a
        out["unaligned"] = unaligned
    else:
        out["strided"] = out["mixed"] = out["unaligned"] = a
    for name, v in out.items():  # the helper itself must keep the values
        assert np.array_equal(np.asarray(v, a.dtype) if name == "list" else v, a, equal_nan=True), name
    return out


# --------------------------------------------------------------------------- comparisons


def _ulp_up(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Spacing of `dt` at |x| (the larger of the two neighbours' distances)."""
    ax = np.abs(x.astype(dt))
    return np.abs(np.nextafter(ax, np.array(np.inf, dt)).astype(np.float64) - ax.astype(np.float64))


def assert_close(got, want, dtype, what="", atol=0.0):
    """`got` has exactly `dtype`, and matches the float64 reference `want`: NaN where it is
    NaN, the same infinities, and finite values within
    - float64: rtol 1e-13; float32: rtol 2e-6; both plus `atol` (for values near 0 from
      cancellation) and a tiny floor for subnormals;
    - float16/bfloat16: 1 ulp of the half type from the reference rounded to it (+ `atol`).
    A true value beyond the dtype's range must come back as the matching infinity."""
    got = np.asarray(got)
    dt = np.dtype(dtype)
    assert got.dtype == dt, f"{what}: dtype {got.dtype}, expected {dt}"
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if dt != np.float64:
        with np.errstate(over="ignore"):
            overflow = np.isinf(want.astype(dt)) & np.isfinite(want)
        want = np.where(overflow, np.copysign(np.inf, want), want)
    g = got.astype(np.float64)
    bad_nan = np.isnan(g) != np.isnan(want)
    assert not bad_nan.any(), f"{what}: NaN pattern differs at {np.argwhere(bad_nan)[:5].tolist()}: got {g[bad_nan][:5]}, want {want[bad_nan][:5]}"
    ok = ~np.isnan(want)
    g, w = g[ok], want[ok]
    inf = np.isinf(w) | np.isinf(g)
    assert np.array_equal(g[inf], w[inf]), f"{what}: infinities differ: got {g[inf][:5]}, want {w[inf][:5]}"
    fin = ~inf
    g, w = g[fin], w[fin]
    if dt == np.float64:
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=max(atol, 1e-300), err_msg=what)
    elif dt == np.float32:
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=max(atol, 1e-37), err_msg=what)
    else:
        rounded = w.astype(dt).astype(np.float64)
        err = np.abs(g - rounded)
        limit = _ulp_up(w, dt) + atol
        worst = np.argmax(err - limit) if err.size else 0
        assert np.all(err <= limit), (
            f"{what}: beyond 1 ulp of {dt}: got {g[worst]!r}, reference {w[worst]!r} (rounded {rounded[worst]!r})"
        )


def grad_atol(t_scale: float, dtype: Any, factor: float = 8.0) -> float:
    """Absolute tolerance for gradient entries near 0 from `sum(t) * p - t` cancellation:
    a few units of the compute type's epsilon times the size of the terms."""
    return factor * float(np.finfo(compute_dtype(dtype)).eps) * float(t_scale)


def lsm_atol(z: Any, dtype: Any, factor: float = 4.0) -> float:
    """Absolute tolerance for log_softmax entries near 0: computed as `z - lse`, they carry an
    error of a few ulp of the logits' magnitude (cancellation), which a relative bound misses."""
    z = np.asarray(z).astype(np.float64)
    finite = np.where(np.isfinite(z), np.abs(z), 0.0)
    return factor * float(np.finfo(compute_dtype(dtype)).eps) * (1.0 + float(np.max(finite, initial=0.0)))


def dense_loss_atol(z: Any, labels: Any, axis: int, dtype: Any, factor: float = 8.0) -> float:
    """Absolute tolerance for a dense loss whose terms `-y_j log p_j` have mixed signs (negative
    labels): a few ulp of the largest term sum."""
    y = np.asarray(labels, np.float64)
    if not (y < 0).any():
        return 0.0
    z = np.asarray(z, np.float64)
    shape = np.broadcast_shapes(z.shape, y.shape)
    ax = axis % z.ndim + (len(shape) - z.ndim)
    logp = ref_log_softmax(np.broadcast_to(z, shape), ax)
    with np.errstate(invalid="ignore"):
        terms = np.where(np.broadcast_to(y, shape) != 0, np.abs(np.broadcast_to(y, shape) * logp), 0.0)
    size = np.nanmax(np.where(np.isfinite(terms), terms, 0.0).sum(axis=ax), initial=0.0)
    return factor * float(np.finfo(compute_dtype(dtype)).eps) * float(size)
