//! The element types the API accepts: logits and dense labels (`Element`) and sparse labels
//! (`Label`).

use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};

use crate::kernels::{Float, StoredKernels};

/// A logits (or dense-label) element type. Half types are computed in `f32`. Implemented for
/// `f16`, `bf16`, `f32` and `f64` only (sealed): the kernels read these as plain numbers.
pub trait Element: sealed::Number + Copy + Send + Sync + 'static {
    /// The type the math runs in.
    type Compute: Float;
    fn widen(self) -> Self::Compute;
    /// Rounds to nearest, ties to even.
    fn narrow(x: Self::Compute) -> Self;
    /// The slice itself when `Self` already is the compute type (no copy needed).
    fn as_compute(_s: &[Self]) -> Option<&[Self::Compute]> {
        None
    }
    /// The slice itself when `Self` already is the compute type (results written in place).
    fn as_compute_mut(_s: &mut [Self]) -> Option<&mut [Self::Compute]> {
        None
    }
    /// `src` widened into `dst` (of the same length).
    fn widen_into(src: &[Self], dst: &mut [Self::Compute]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = x.widen();
        }
    }
    /// `src` rounded into `dst` (of the same length).
    fn narrow_slice(src: &[Self::Compute], dst: &mut [Self]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = Self::narrow(x);
        }
    }
    /// Kernels over rows as stored, where the tier has them (half types): a row widened with
    /// its maximum in one pass, statistics of long rows taken from the stored elements as
    /// they load, and whole slices widened and rounded.
    fn stored_kernels() -> Option<&'static StoredKernels<Self, Self::Compute>> {
        None
    }
    /// `len` zeros, from zeroed memory where the allocator has it (fresh pages are not
    /// touched until written; a fill would fault in every page first).
    fn zeros(len: usize) -> Vec<Self>;
}

mod sealed {
    /// The floating-point types without padding or invalid bit patterns.
    pub trait Number {}
    impl Number for f32 {}
    impl Number for f64 {}
    impl Number for half::f16 {}
    impl Number for half::bf16 {}
}

macro_rules! native_element {
    ($t:ty) => {
        impl Element for $t {
            type Compute = $t;
            fn zeros(len: usize) -> Vec<$t> {
                vec![0.0; len]
            }
            #[inline]
            fn widen(self) -> $t {
                self
            }
            #[inline]
            fn narrow(x: $t) -> $t {
                x
            }
            fn as_compute(s: &[$t]) -> Option<&[$t]> {
                Some(s)
            }
            fn as_compute_mut(s: &mut [$t]) -> Option<&mut [$t]> {
                Some(s)
            }
        }
    };
}
native_element!(f32);
native_element!(f64);

macro_rules! half_element {
    ($t:ty, $stored:path, $widen_into:expr, $narrow_slice:expr) => {
        impl Element for $t {
            type Compute = f32;
            fn zeros(len: usize) -> Vec<$t> {
                // `vec![<$t>::ZERO; n]` would fill; zeroed u16s are allocated zeroed.
                vec![0u16; len].reinterpret_into()
            }
            #[inline]
            fn widen(self) -> f32 {
                self.to_f32()
            }
            #[inline]
            fn narrow(x: f32) -> $t {
                <$t>::from_f32(x)
            }
            fn stored_kernels() -> Option<&'static StoredKernels<$t, f32>> {
                $stored()
            }
            fn widen_into(src: &[$t], dst: &mut [f32]) {
                match $stored() {
                    Some(k) => (k.widen)(src, dst),
                    None => $widen_into(src, dst),
                }
            }
            fn narrow_slice(src: &[f32], dst: &mut [$t]) {
                match $stored() {
                    Some(k) => (k.narrow)(src, dst),
                    None => $narrow_slice(src, dst),
                }
            }
        }
    };
}
// Widened a block or a tile at a time: by the tier's kernels where it has them, else float16
// with F16C when the CPU has it, and bfloat16 (the top half of a float32) by bit operations
// that vectorise as written. Rounded by `half` (float16) and by `narrow_bf16`.
half_element!(
    f16,
    crate::dispatch::stored_f16,
    |src: &[f16], dst: &mut [f32]| crate::kernels::lanes::widen_f16(src.reinterpret_cast(), dst),
    |src: &[f32], dst: &mut [f16]| dst.convert_from_f32_slice(src)
);
half_element!(
    bf16,
    crate::dispatch::stored_bf16,
    |src: &[bf16], dst: &mut [f32]| {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    },
    narrow_bf16
);

/// f32 to bfloat16, rounded to nearest even (NaN stays NaN, quieted), as `bf16::from_f32`
/// but without its branches, so that the loop vectorises (`half` converts one at a time).
fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        let b = x.to_bits();
        let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
        let nan = (b >> 16) | 0x40;
        *d = bf16::from_bits(if x.is_nan() { nan } else { rounded } as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_bf16_rounds_as_half_does() {
        // Every 997th f32 bit pattern (all exponents, signs, NaNs and mantissa tails), and the
        // halfway cases around every bfloat16 of a few binades.
        let mut xs: Vec<f32> = (0..=u32::MAX).step_by(997).map(f32::from_bits).collect();
        xs.extend((0u32..1 << 20).map(|i| f32::from_bits(0x3f00_0000 + (i << 4) + 0x8000 - 8 + (i & 15))));
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1e-45]);
        let mut got = vec![bf16::ZERO; xs.len()];
        narrow_bf16(&xs, &mut got);
        for (&x, g) in xs.iter().zip(got) {
            let want = bf16::from_f32(x);
            assert!(g.to_bits() == want.to_bits() || (x.is_nan() && g.is_nan()), "{x:e}: {g} vs {want}");
        }
    }
}

/// A sparse-label element type: any primitive integer, signed or unsigned, 8 to 64 bits.
pub trait Label: Copy + Send + Sync + 'static {
    fn to_i128(self) -> i128;
    /// The value as `u64`, negative ones wrapped (sign-extended) past `i64::MAX`: below a
    /// class count exactly when it is a class index, by one comparison that vectorises.
    fn to_u64_wrapping(self) -> u64;
}

macro_rules! label {
    ($($t:ty),*) => {$(
        impl Label for $t {
            #[inline]
            fn to_i128(self) -> i128 {
                self as i128
            }
            #[inline]
            fn to_u64_wrapping(self) -> u64 {
                self as u64
            }
        }
    )*};
}
label!(i8, i16, i32, i64, u8, u16, u32, u64, isize, usize);
