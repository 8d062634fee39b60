//! fastxent: softmax cross-entropy, log-softmax, softmax and logsumexp over n-d arrays, fast
//! and exact.
//!
//! Every function takes `ndarray` views of any strides, a class `axis` in `[-rank, rank)`, and
//! returns `Result<_, Error>`. Logits may be `f16`, `bf16`, `f32` or `f64`; half types are
//! computed in `f32`, and results have the logits' type. Work runs in parallel over rows on
//! rayon, with SIMD kernels chosen at run time ([`simd_tier`]).
//!
//! ```
//! use ndarray::array;
//! let logits = array![[2.0f32, 1.0, 0.1], [0.5, 2.5, 0.0]];
//! let labels = array![0i64, 1];
//! let loss = fastxent::sparse_softmax_cross_entropy(
//!     logits.view().into_dyn(), labels.view().into_dyn(), -1, &Default::default()).unwrap();
//! assert!((loss[[0]] - 0.41703).abs() < 1e-4);
//! ```

mod blocks;
pub mod dispatch;
mod element;
mod error;
pub mod kernels;
mod ops;
mod rows;
mod threads;

#[cfg(feature = "python")]
mod python;

pub use dispatch::Tier;
pub use element::{Element, Label};
pub use error::{Error, Result};
pub use ops::{
    class_axis, dense_loss_shape, log_softmax, logsumexp, softmax, softmax_cross_entropy,
    softmax_cross_entropy_grad_in_place, softmax_cross_entropy_into, softmax_cross_entropy_with_grad,
    sparse_loss_shape, sparse_softmax_cross_entropy, sparse_softmax_cross_entropy_grad_in_place,
    sparse_softmax_cross_entropy_into, sparse_softmax_cross_entropy_with_grad, Options, Reduction,
};
pub use threads::{num_threads, set_num_threads};

/// The SIMD tier the kernels use: the best the CPU has, capped by `FASTXENT_SIMD`.
pub fn simd_tier() -> Tier {
    dispatch::tier()
}

pub use half::{bf16, f16};
