# The compiled core. Call it through the functions of `fastxent`, which convert array-likes
# and apply the keyword rules; these take ndarrays only.
from typing import Any

import numpy as np

__all__ = [
    "sparse",
    "dense",
    "log_softmax",
    "softmax",
    "logsumexp",
    "simd_tier",
    "simd_tiers",
    "set_num_threads",
    "get_num_threads",
    "__version__",
]
__version__: str

def sparse(
    logits: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    axis: int,
    reduction: str,
    label_smoothing: float,
    weight: np.ndarray[Any, Any] | None,
    ignore_index: int | None,
    with_grad: bool,
    out: np.ndarray[Any, Any] | None,
    grad_out: np.ndarray[Any, Any] | None,
) -> Any: ...
def dense(
    logits: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    axis: int,
    reduction: str,
    label_smoothing: float,
    weight: np.ndarray[Any, Any] | None,
    with_grad: bool,
    out: np.ndarray[Any, Any] | None,
    grad_out: np.ndarray[Any, Any] | None,
) -> Any: ...
def log_softmax(logits: np.ndarray[Any, Any], axis: int) -> np.ndarray[Any, Any]: ...
def softmax(logits: np.ndarray[Any, Any], axis: int) -> np.ndarray[Any, Any]: ...
def logsumexp(logits: np.ndarray[Any, Any], axis: int) -> np.ndarray[Any, Any]: ...
def simd_tier() -> str: ...
def simd_tiers() -> list[str]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
