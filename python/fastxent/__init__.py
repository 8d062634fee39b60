"""fastxent: fast, exact softmax cross-entropy for NumPy.

TensorFlow's ``softmax_cross_entropy_with_logits`` and
``sparse_softmax_cross_entropy_with_logits`` with TensorFlow's semantics, their fused
loss-and-gradient twins, and ``log_softmax``, ``softmax`` and ``logsumexp``; with the
``reduction``, ``label_smoothing``, ``weight`` and ``ignore_index`` options of
``torch.nn.functional.cross_entropy``. Every invalid input raises ``ValueError``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

import numpy as np

from . import _core
from ._core import get_num_threads, set_num_threads, simd_tier, simd_tiers

__all__ = [
    "softmax_cross_entropy_with_logits",
    "softmax_cross_entropy_with_logits_v2",
    "softmax_cross_entropy_with_logits_and_grad",
    "sparse_softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits_and_grad",
    "log_softmax",
    "softmax",
    "logsumexp",
    "simd_tier",
    "simd_tiers",
    "set_num_threads",
    "get_num_threads",
]
__version__: str = _core.__version__

_F = TypeVar("_F", bound=Callable[..., Any])


def _checked_call(positional: int) -> Callable[[_F], _F]:
    """Report every misuse of a call's signature as ValueError.

    Python would raise TypeError for a missing, unknown or extra argument. TensorFlow's losses
    take keyword arguments only (its ``_sentinel`` rule) and raise ValueError for a positional
    one: those get ``positional=0``; the row functions take their logits positionally.
    """

    def decorate(func: _F) -> _F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > positional:
                if positional == 0:
                    raise ValueError(
                        f"{func.__name__}() takes keyword arguments only "
                        f"(labels=..., logits=..., ...); got {len(args)} positional argument(s)"
                    )
                raise ValueError(
                    f"{func.__name__}() takes {positional} positional argument (the logits); "
                    f"got {len(args)}: pass the others by keyword"
                )
            try:
                return func(*args, **kwargs)
            except TypeError:
                # Binding is checked only on failure (it costs more than a small call): a
                # missing, unknown or repeated argument fails before the body runs.
                try:
                    signature.bind(*args, **kwargs)
                except TypeError as e:
                    raise ValueError(f"{func.__name__}(): {e}") from None
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


_keywords_only = _checked_call(0)


def _as_array(x: Any, name: str) -> np.ndarray:
    """`x` as an ndarray NumPy can hand to the core without guessing: numeric, native byte
    order, aligned. Arrays already like that pass through without a copy."""
    if x is None:
        raise ValueError(f"{name} is required: expected an array")
    if type(x) is np.ndarray:
        arr = x
    elif isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
        raise ValueError(f"{name} is a masked array with masked entries: expected plain values (use .filled())")
    else:
        # Subclasses (masked arrays without a mask, np.matrix, memmap) as plain ndarrays.
        try:
            if hasattr(x, "__dlpack__") and not (
                hasattr(x, "__array__") or hasattr(x, "__array_interface__")
            ):
                arr = np.from_dlpack(x)
            else:
                arr = np.asarray(x)
        except Exception as e:  # NumPy raises many types here; the user gets one.
            raise ValueError(
                f"{name} could not be converted to a numeric array ({type(e).__name__}: {e}); "
                "expected an array, a nested list of numbers, or an array-like object"
            ) from None
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name} of type {type(x).__name__} did not convert to an ndarray")
    if arr.dtype.hasobject or arr.dtype.kind in "OSUMm" or (
        arr.dtype.kind == "V" and arr.dtype.name != "bfloat16"
    ):
        raise ValueError(f"{name} has dtype {arr.dtype}: expected a numeric array")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    # NumPy calls an empty array aligned whatever its pointer; the core checks the pointer too.
    # (Only then read here: `ctypes.data` costs about a microsecond a call.)
    if not arr.flags.aligned or (arr.size == 0 and arr.ctypes.data % arr.dtype.alignment):
        arr = arr.copy()
    return arr


def _show(value: Any) -> str:
    """A short description of a user value (whose repr may be long, or may raise)."""
    try:
        text = repr(value)
    except Exception:  # a user object's __repr__ may fail: describe it by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else f"<{type(value).__name__}>"


def _integer(value: Any, name: str) -> int:
    # timedelta64 is an np.integer to NumPy, not a number to anyone else.
    if isinstance(value, (bool, np.bool_, np.timedelta64)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} = {_show(value)} is invalid: expected an integer")
    try:
        return int(value)
    except Exception as e:  # an int subclass with a broken __int__
        raise ValueError(f"{name} = {_show(value)} is invalid: int() of it raised {type(e).__name__}") from None


class _DefaultAxis(int):
    """The default ``axis``, -1, told apart from an explicit ``axis=-1``: an explicit axis
    that names another axis than TF 1's ``dim`` is an error, the default is not."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "-1"


_LAST_AXIS = _DefaultAxis(-1)


def _axis(axis: Any, dim: Any = None, rank: int = 0) -> int:
    explicit = axis is not _LAST_AXIS
    axis = _integer(axis, "axis")
    if dim is not None:
        dim = _integer(dim, "dim")
        if not -rank <= dim < rank:
            raise ValueError(
                f"dim {dim} is out of range for logits of rank {rank}: expected a dim in [{-rank}, {rank})"
            )
        if explicit and not (-rank <= axis < rank and axis % rank == dim % rank):
            raise ValueError(
                f"axis = {axis} and dim = {dim} name different axes of logits of rank {rank}: give one of them"
            )
        axis = dim
    return axis


def _weight(weight: Any) -> Any:
    if weight is None:
        return None
    w = _as_array(weight, "weight")
    if w.dtype.kind not in "fiu" and w.dtype.name != "bfloat16":
        raise ValueError(f"weight has dtype {w.dtype}: expected a floating dtype")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range weights are reported by the core
        return w.astype(np.float64, copy=False)


def _ignore_index(value: Any) -> Any:
    return None if value is None else _integer(value, "ignore_index")


def _same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
    )


def _outputs(options: dict[str, Any], logits: np.ndarray, inputs: list[Any]) -> tuple[Any, Any]:
    """`out` and `grad_out`, checked against the inputs they must not overlap. A `grad_out`
    laid over the logits exactly is passed as the logits array itself: an in-place gradient."""
    out, grad_out = options.get("out"), options.get("grad_out")
    if out is None and grad_out is None:
        return None, None
    for name, buf in (("out", out), ("grad_out", grad_out)):
        if buf is not None and not isinstance(buf, np.ndarray):
            raise ValueError(f"{name} must be a numpy.ndarray; got {type(buf).__name__}")
    if grad_out is not None and _same_layout(grad_out, logits):
        grad_out = logits
    checks = [("out", out, [logits, grad_out, *inputs]), ("grad_out", grad_out, inputs)]
    if grad_out is not logits:
        checks.append(("grad_out", grad_out, [logits]))
    for name, buf, others in checks:
        for other in others:
            if buf is not None and other is not None and np.may_share_memory(buf, other):
                raise ValueError(
                    f"{name} overlaps another argument: expected a separate buffer "
                    "(grad_out may be the logits array itself, for an in-place gradient)"
                )
    return out, grad_out


def _dense_labels(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Dense labels in a dtype the core reads with these logits: float64 with float64 logits,
    any of float16/bfloat16/float32 otherwise (converted once when not)."""
    if y.dtype.kind not in "f" and y.dtype.name != "bfloat16":
        return y  # the core names the bad dtype
    wide = z.dtype == np.float64
    if (y.dtype == np.float64) != wide:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return y.astype(np.float64 if wide else np.float32)
    return y


def _dense(labels: Any, logits: Any, axis: Any, dim: Any, options: dict[str, Any], grad: bool) -> Any:
    z, w = _as_array(logits, "logits"), _weight(options["weight"])
    y = _dense_labels(_as_array(labels, "labels"), z)
    out, grad_out = _outputs(options, z, [y, w])
    result = _core.dense(
        z, y, _axis(axis, dim, z.ndim), options["reduction"], options["label_smoothing"], w, grad, out, grad_out
    )
    return _callers_grad_out(result, options, grad)


def _sparse(labels: Any, logits: Any, axis: Any, options: dict[str, Any], grad: bool) -> Any:
    z, y, w = _as_array(logits, "logits"), _as_array(labels, "labels"), _weight(options["weight"])
    out, grad_out = _outputs(options, z, [y, w])
    result = _core.sparse(
        z,
        y,
        _axis(axis),
        options["reduction"],
        options["label_smoothing"],
        w,
        _ignore_index(options["ignore_index"]),
        grad,
        out,
        grad_out,
    )
    return _callers_grad_out(result, options, grad)


def _callers_grad_out(result: Any, options: dict[str, Any], grad: bool) -> Any:
    """`(loss, grad)` with the caller's own `grad_out` object (the core may have written
    through another array over the same memory: the logits, for an in-place gradient)."""
    if grad and options.get("grad_out") is not None:
        return result[0], options["grad_out"]
    return result


@_keywords_only
def softmax_cross_entropy_with_logits(
    *,
    labels: Any,
    logits: Any,
    axis: int = _LAST_AXIS,
    dim: int | None = None,
    name: str | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    weight: Any = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax cross-entropy between ``logits`` and dense ``labels`` along ``axis``.

    TensorFlow's ``tf.nn.softmax_cross_entropy_with_logits``: ``labels`` (class
    probabilities, any floating dtype) broadcast against ``logits``; the loss has the broadcast
    shape without the class axis and the logits' dtype. ``dim`` is TF 1's alias of ``axis``
    (an explicit ``axis`` naming another axis is an error); ``name`` is ignored. A zero label
    on a ``-inf`` logit contributes 0 (TF gives NaN); a row with NaN or +inf, or of all
    ``-inf``, gives NaN. The default ``axis`` is -1.

    Options (defaults give TensorFlow's result), as in ``torch.nn.functional.cross_entropy``:
    ``reduction`` ("none", "sum", "mean": the mean divides by the number of rows),
    ``label_smoothing`` ε (targets become ``(1 - ε) y + ε / C``), ``weight`` (per-class, shape
    ``(C,)``). Sums are accumulated in float64.

    The gradient with respect to the labels is ``-log_softmax(logits)`` (TF's v2 rule).

    Accuracy: with one-hot labels, within 2 ulp of the exact loss for float32 and float64
    (tested on saturated, offset, wide and steep rows, where ``lse - z`` cancels for every
    other library); with soft labels (a dot product of C terms) within 4 ulp. Half types are
    the float32 result rounded once.

    ``out``: an ndarray of the loss's shape and the logits' dtype to write the loss into (it
    is returned).
    """
    return _dense(labels, logits, axis, dim, locals(), False)


@_keywords_only
def softmax_cross_entropy_with_logits_v2(
    *,
    labels: Any,
    logits: Any,
    axis: int = _LAST_AXIS,
    dim: int | None = None,
    name: str | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    weight: Any = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Same as :func:`softmax_cross_entropy_with_logits` (TensorFlow 2's name)."""
    return _dense(labels, logits, axis, dim, locals(), False)


@_keywords_only
def softmax_cross_entropy_with_logits_and_grad(
    *,
    labels: Any,
    logits: Any,
    axis: int = _LAST_AXIS,
    dim: int | None = None,
    name: str | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    weight: Any = None,
    out: np.ndarray | None = None,
    grad_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`softmax_cross_entropy_with_logits` and its gradient, in one pass per row.

    Returns ``(loss, grad)``: ``grad = d sum(loss) / d logits`` for the loss as returned (after
    weights, smoothing and reduction), with the logits' shape and dtype. Per row it is
    ``sum(t) * softmax(logits) - t`` with ``t`` the (weighted, smoothed) targets: the true
    derivative, equal to TF's ``softmax - labels`` when the labels are distributions. The
    gradient with respect to the labels is ``-log_softmax(logits)``. Gradients are within
    4 ulp of exact with one-hot labels, 6 ulp with soft labels (float32 and float64; relative
    to the larger of ``sum(t) * softmax`` and ``t``).

    ``out`` / ``grad_out``: ndarrays to write the loss / gradient into (returned). ``grad_out``
    may be the logits array itself: the gradient then replaces the logits, halving the memory.
    """
    return _dense(labels, logits, axis, dim, locals(), True)  # type: ignore[no-any-return]


@_keywords_only
def sparse_softmax_cross_entropy_with_logits(
    *,
    labels: Any,
    logits: Any,
    axis: int = -1,
    name: str | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    weight: Any = None,
    ignore_index: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax cross-entropy of ``logits`` against integer class ``labels`` along ``axis``.

    TensorFlow's ``tf.nn.sparse_softmax_cross_entropy_with_logits``: ``labels`` (any integer
    dtype) have the logits' shape without the class axis; so does the loss, in the logits'
    dtype. Any axis works (``axis=1`` is PyTorch's ``[N, C, H, W]`` layout). A label outside
    ``[0, C)`` is a ValueError naming its position.

    Options (defaults give TensorFlow's result), as in ``torch.nn.functional.cross_entropy``:
    ``reduction`` ("none", "sum", "mean": the mean divides by the summed weights of the
    counted rows), ``label_smoothing``, ``weight`` (per-class, shape ``(C,)``), and
    ``ignore_index`` (rows with that label give 0 loss and are not counted; with "mean" and
    every row ignored the result is NaN, as in PyTorch). ``out``: an ndarray to write the
    loss into (returned).

    Accuracy: within 2 ulp of the exact loss for float32 and float64, confident rows included
    (the loss is ``(max - z[label]) + log1p(mass off the maximum)``, which does not cancel);
    half types are the float32 result rounded once.
    """
    return _sparse(labels, logits, axis, locals(), False)


@_keywords_only
def sparse_softmax_cross_entropy_with_logits_and_grad(
    *,
    labels: Any,
    logits: Any,
    axis: int = -1,
    name: str | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    weight: Any = None,
    ignore_index: int | None = None,
    out: np.ndarray | None = None,
    grad_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sparse_softmax_cross_entropy_with_logits` and its gradient, in one pass per row.

    Returns ``(loss, grad)``: ``grad = d sum(loss) / d logits`` for the loss as returned, per
    row ``softmax - onehot(label)`` scaled by the weights, smoothing and reduction; 0 on
    ignored rows. The label's entry is computed as minus the mass of the other classes, so it
    stays exact for confident rows: gradients are within 4 ulp (float32 and float64). ``out`` / ``grad_out`` as in
    :func:`softmax_cross_entropy_with_logits_and_grad` (``grad_out=logits`` works in place).
    """
    return _sparse(labels, logits, axis, locals(), True)  # type: ignore[no-any-return]


@_checked_call(1)
def log_softmax(logits: Any, *, axis: int = -1) -> np.ndarray:
    """``logits - logsumexp(logits)`` along ``axis``, in the logits' dtype. Rows with NaN or
    +inf, and rows of all ``-inf``, give NaN."""
    return _core.log_softmax(_as_array(logits, "logits"), _axis(axis))


@_checked_call(1)
def softmax(logits: Any, *, axis: int = -1) -> np.ndarray:
    """``exp(logits - logsumexp(logits))`` along ``axis``, in the logits' dtype. Rows with NaN
    or +inf, and rows of all ``-inf``, give NaN."""
    return _core.softmax(_as_array(logits, "logits"), _axis(axis))


@_checked_call(1)
def logsumexp(logits: Any, *, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(logits)))`` along ``axis``, computed without overflow; the logits' shape
    without ``axis``. A row of ``-inf`` gives ``-inf``, a row with ``+inf`` gives ``+inf``, a
    row with NaN gives NaN."""
    return _core.logsumexp(_as_array(logits, "logits"), _axis(axis))
