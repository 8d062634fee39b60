//! Row kernels over contiguous slices of the compute type (`f32` or `f64`).
//!
//! Each SIMD tier provides the same primitives ([`RowKernels`]); the row math in `crate::rows` is written
//! once on top of them. Every tier has the scalar tier as its reference twin.

pub mod lanes;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use crate::dispatch::Tier;

/// The primitives every tier implements. Contracts (all tiers):
/// - `max_argmax(z)`: `(max, index of its first occurrence)`, or `(NaN, _)` if any element is
///   NaN. `z` is never empty.
/// - `sum_exp(z, shift)`: `Σ exp(z_j - shift)`, with `exp(-inf) = 0`, in f64 (not rounded to
///   `F`: the callers add partial sums, and `log1p` of the total keeps its extra bits).
///   `sum_exp_store(z, shift, out)`: the same sum, bit for bit, also storing each term in `out`
///   (`out.len() == z.len()`).
/// - `exp_scaled(z, shift, scale, out)`: `out_j = exp(z_j - shift) * scale`; `out.len() == z.len()`.
///   `exp_scaled_stream`: the same bits, stored past the caches where the tier can.
/// - `scale(x, c, out)`: `out_j = x_j * c` (`out.len() == x.len()`); `scale_stream` as above.
/// - `target_sums(t, z, max)`: `(Σ t_j, Σ_{t_j≠0} t_j (max - z_j))`, the two sums of a dense
///   target row (a zero target on a -inf logit counts 0); `t.len() == z.len()`.
///
/// `sum_exp`, `sum_exp_store` and `exp_scaled` are only called on rows without NaN, with a
/// finite `shift` not below any `z_j` (the row's maximum). `exp_scaled` with a scale above 1
/// keeps its bound where the exps alone would be subnormal (the row math relies on it: see
/// `rows::reusable`).
pub struct RowKernels<F> {
    pub tier: Tier,
    pub max_argmax: fn(&[F]) -> (F, usize),
    pub sum_exp: fn(&[F], F) -> f64,
    pub sum_exp_store: fn(&[F], F, &mut [F]) -> f64,
    pub exp_scaled: fn(&[F], F, F, &mut [F]),
    /// `exp_scaled` with its stores past the caches (where the tier can): for outputs far
    /// larger than the caches, written once and not read back soon.
    pub exp_scaled_stream: fn(&[F], F, F, &mut [F]),
    pub scale: fn(&[F], F, &mut [F]),
    pub scale_stream: fn(&[F], F, &mut [F]),
    pub target_sums: TargetSums<F>,
}

/// Kernels over rows stored as `S` (a half type) with compute type `F`: the `max_argmax`,
/// `sum_exp`, `sum_exp_store` and `exp_scaled` of [`RowKernels`], reading the stored elements
/// and widening them as they load (and `exp_scaled` rounding its results as it stores them:
/// the bits of widening, `RowKernels::exp_scaled` and `narrow`, in one pass);
/// `exp_scaled_narrow`, the same from a row already widened; `widen(src, dst)` for the passes
/// that want the compute type, and `narrow(src, dst)` (rounded to nearest even) for the
/// outputs (the same lengths).
/// Tiers without them use portable code.
pub struct StoredKernels<S, F> {
    pub max_argmax: fn(&[S]) -> (F, usize),
    pub sum_exp: fn(&[S], F) -> f64,
    pub sum_exp_store: fn(&[S], F, &mut [F]) -> f64,
    pub exp_scaled: fn(&[S], F, F, &mut [S]),
    pub exp_scaled_narrow: fn(&[F], F, F, &mut [S]),
    pub widen: fn(&[S], &mut [F]),
    pub narrow: fn(&[F], &mut [S]),
}

/// The signature of [`RowKernels::target_sums`].
pub type TargetSums<F> = fn(&[F], &[F], F) -> (F, F);

/// Neumaier's compensated sum: the error stays at a few ulp whatever the number of terms.
#[derive(Clone, Copy, Default)]
pub struct CompensatedSum<F> {
    sum: F,
    carry: F,
}

impl<F: Float> CompensatedSum<F> {
    #[inline]
    pub fn add(&mut self, x: F) {
        let t = self.sum + x;
        self.carry = self.carry + if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
        self.sum = t;
    }

    #[inline]
    pub fn value(self) -> F {
        // An infinite term makes the carry NaN; the sum alone is then the answer.
        if self.sum.is_finite() {
            self.sum + self.carry
        } else {
            self.sum
        }
    }
}

/// The compute types: `f32` (for f16, bf16 and f32 data) and `f64`.
pub trait Float:
    num_traits::Float + num_traits::FloatConst + Default + Send + Sync + std::fmt::Debug + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The kernel table of the tier in use (chosen once per call by the caller).
    fn kernels() -> &'static RowKernels<Self>;
    /// Whether [`lanes`] handles rows of this type and width, sixteen at a time.
    fn tiles(_classes: usize) -> bool {
        false
    }
    /// The statistics of `lanes::LANES` rows stored one after another in `z` (only called
    /// when `tiles(classes)`); with `exps` (of `z`'s length), also `exp(z_j - max)` of each
    /// element of the rows with a finite maximum.
    fn tile_stats(_z: &[Self], _classes: usize, _out: &mut [crate::rows::RowStats<Self>], _exps: Option<&mut [Self]>) {
        unreachable!("no tiled path for this type")
    }
}

impl Float for f32 {
    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn kernels() -> &'static RowKernels<f32> {
        crate::dispatch::kernels_f32()
    }
    fn tiles(classes: usize) -> bool {
        (1..=lanes::MAX_CLASSES).contains(&classes)
    }
    fn tile_stats(z: &[f32], classes: usize, out: &mut [crate::rows::RowStats<f32>], exps: Option<&mut [f32]>) {
        let mut t = lanes::TileStats::default();
        match exps {
            None => lanes::tile_stats(z, classes, &mut t, None),
            Some(exps) => {
                let mut columns = [[0.0f32; lanes::LANES]; lanes::MAX_CLASSES];
                lanes::tile_stats(z, classes, &mut t, Some(&mut columns));
                for (r, row) in exps.chunks_exact_mut(classes).enumerate() {
                    for (j, e) in row.iter_mut().enumerate() {
                        *e = columns[j][r];
                    }
                }
            }
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = crate::rows::RowStats {
                max: t.max[i],
                argmax: t.argmax[i] as usize,
                rest: t.rest[i],
                log_rest: t.log_rest[i],
            };
        }
    }
}

impl Float for f64 {
    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    fn kernels() -> &'static RowKernels<f64> {
        crate::dispatch::kernels_f64()
    }
}
