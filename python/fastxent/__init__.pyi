from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ._core import get_num_threads as get_num_threads
from ._core import set_num_threads as set_num_threads
from ._core import simd_tier as simd_tier
from ._core import simd_tiers as simd_tiers

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
__version__: str

_Reduction = Literal["none", "sum", "mean"]

def softmax_cross_entropy_with_logits(
    *,
    labels: ArrayLike,
    logits: ArrayLike,
    axis: int = ...,  # -1; at run time an int equal to -1, told apart from an explicit -1
    dim: int | None = None,
    name: str | None = None,
    reduction: _Reduction = "none",
    label_smoothing: float = 0.0,
    weight: ArrayLike | None = None,
    out: np.ndarray[Any, Any] | None = None,
) -> np.ndarray[Any, Any]: ...
def softmax_cross_entropy_with_logits_v2(
    *,
    labels: ArrayLike,
    logits: ArrayLike,
    axis: int = ...,  # -1; at run time an int equal to -1, told apart from an explicit -1
    dim: int | None = None,
    name: str | None = None,
    reduction: _Reduction = "none",
    label_smoothing: float = 0.0,
    weight: ArrayLike | None = None,
    out: np.ndarray[Any, Any] | None = None,
) -> np.ndarray[Any, Any]: ...
def softmax_cross_entropy_with_logits_and_grad(
    *,
    labels: ArrayLike,
    logits: ArrayLike,
    axis: int = ...,  # -1; at run time an int equal to -1, told apart from an explicit -1
    dim: int | None = None,
    name: str | None = None,
    reduction: _Reduction = "none",
    label_smoothing: float = 0.0,
    weight: ArrayLike | None = None,
    out: np.ndarray[Any, Any] | None = None,
    grad_out: np.ndarray[Any, Any] | None = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]: ...
def sparse_softmax_cross_entropy_with_logits(
    *,
    labels: ArrayLike,
    logits: ArrayLike,
    axis: int = -1,
    name: str | None = None,
    reduction: _Reduction = "none",
    label_smoothing: float = 0.0,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    out: np.ndarray[Any, Any] | None = None,
) -> np.ndarray[Any, Any]: ...
def sparse_softmax_cross_entropy_with_logits_and_grad(
    *,
    labels: ArrayLike,
    logits: ArrayLike,
    axis: int = -1,
    name: str | None = None,
    reduction: _Reduction = "none",
    label_smoothing: float = 0.0,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    out: np.ndarray[Any, Any] | None = None,
    grad_out: np.ndarray[Any, Any] | None = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]: ...
def log_softmax(logits: ArrayLike, *, axis: int = -1) -> np.ndarray[Any, Any]: ...
def softmax(logits: ArrayLike, *, axis: int = -1) -> np.ndarray[Any, Any]: ...
def logsumexp(logits: ArrayLike, *, axis: int = -1) -> np.ndarray[Any, Any]: ...
