"""Shared float64 references (independent NumPy code) and input-layout helpers."""

from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT_DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)]
INT_DTYPES = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]


def ref_stats(z: np.ndarray, axis: int):
    """Per-row (max, argmax-excluded mass `rest`, row mask of irregular rows), float64, with the
    class axis moved last."""
    z = np.moveaxis(np.asarray(z, dtype=np.float64), axis, -1)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(z, axis=-1, initial=-np.inf) if z.shape[-1] else np.full(z.shape[:-1], -np.inf)
        irregular = ~np.isfinite(m) | np.isnan(z).any(axis=-1)
        k = np.argmax(z, axis=-1) if z.shape[-1] else np.zeros(z.shape[:-1], int)
        safe_m = np.where(irregular, 0.0, m)
        e = np.exp(z - safe_m[..., None])
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
    out = np.where(irregular, raw, out)
    out = np.where(np.isnan(zz).any(axis=-1), np.nan, out)
    return out


def ref_sparse(z, labels, axis=-1, reduction="none", label_smoothing=0.0, weight=None, ignore_index=None):
    """Loss and gradient (d sum(loss) / d z), float64, by torch.nn.functional.cross_entropy's
    definitions."""
    logp = np.moveaxis(ref_log_softmax(z, axis), axis, -1)
    c = logp.shape[-1]
    y = np.asarray(labels).astype(np.int64)
    ignored = np.zeros(y.shape, bool) if ignore_index is None else (y == ignore_index)
    yy = np.where(ignored, 0, y)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    onehot = np.zeros(yy.shape + (c,))
    np.put_along_axis(onehot, yy[..., None], 1.0, axis=-1)
    t = (1 - label_smoothing) * onehot * w[yy][..., None] + label_smoothing / max(c, 1) * w
    t = np.where(ignored[..., None], 0.0, t)
    with np.errstate(invalid="ignore"):
        loss = -np.where(t != 0, t * logp, 0.0).sum(-1)
        p = np.exp(logp)
        grad = t.sum(-1, keepdims=True) * p - t
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
    z = np.asarray(z, np.float64)
    shape = np.broadcast_shapes(z.shape, np.shape(labels))
    ax = axis % z.ndim + (len(shape) - z.ndim)
    zb = np.broadcast_to(z, shape)
    logp = np.moveaxis(ref_log_softmax(zb, ax), ax, -1)
    y = np.moveaxis(np.broadcast_to(np.asarray(labels, np.float64), shape), ax, -1)
    c = logp.shape[-1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    t = w * ((1 - label_smoothing) * y + label_smoothing / max(c, 1))
    with np.errstate(invalid="ignore"):
        loss = -np.where(t != 0, t * logp, 0.0).sum(-1)
        grad = t.sum(-1, keepdims=True) * np.exp(logp) - t
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        n = loss.size
        with np.errstate(invalid="ignore", divide="ignore"):
            loss, grad = loss.sum() / n, grad / n
    return loss, np.moveaxis(grad, -1, ax)


def layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in odd memory layouts."""
    out = {
        "c": a,
        "fortran": np.asfortranarray(a),
        "readonly": a.copy(),
        "negative": np.flip(np.flip(a).copy()),
        "strided": np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a,
        "bigendian": a.astype(a.dtype.newbyteorder(">")) if a.dtype.kind in "fiu" else a,
    }
    out["readonly"].flags.writeable = False
    if a.ndim:
        buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
        unaligned = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
        unaligned[...] = a
        out["unaligned"] = unaligned
    return out


def assert_close(got, want, dtype, what=""):
    """float64 reference rounded to the result dtype: halves within 1 ulp of it, float32
    within a few ulp, float64 to 1e-12 relative."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    want = np.asarray(want, np.float64)
    if np.dtype(dtype) != np.float64:
        with np.errstate(over="ignore"):
            # A true value beyond the dtype's range rounds to inf: that is the right answer.
            overflow = np.isinf(want.astype(dtype)) & np.isfinite(want)
        want = np.where(overflow, np.copysign(np.inf, want), want)
    g = got.astype(np.float64)
    assert np.array_equal(np.isnan(g), np.isnan(want)), f"{what}: NaN pattern differs"
    ok = ~np.isnan(want)
    g, w = g[ok], want[ok]
    assert np.array_equal(np.isinf(g), np.isinf(w)) and np.all(g[np.isinf(w)] == w[np.isinf(w)]), what
    fin = np.isfinite(w)
    g, w = g[fin], w[fin]
    dt = np.dtype(dtype)
    if dt == np.float64:
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-300, err_msg=what)
    elif dt == np.float32:
        np.testing.assert_allclose(g, w, rtol=3e-6, atol=1e-37, err_msg=what)
    else:
        rounded = w.astype(dt).astype(np.float64)
        spacing = np.abs(np.nextafter(w.astype(dt), np.array(np.inf, dt)).astype(np.float64) - rounded)
        assert np.all(np.abs(g - rounded) <= spacing + 1e-300), f"{what}: beyond 1 ulp of {dt}"
