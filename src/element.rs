//! The element types the API accepts: logits and dense labels (`Element`) and sparse labels
//! (`Label`).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::kernels::Float;

/// A logits (or dense-label) element type. Half types are computed in `f32`.
pub trait Element: Copy + Send + Sync + 'static {
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
    /// `src` widened into `dst` (replacing its contents).
    fn widen_slice(src: &[Self], dst: &mut Vec<Self::Compute>) {
        dst.clear();
        dst.extend(src.iter().map(|x| x.widen()));
    }
    /// `src` rounded into `dst` (of the same length).
    fn narrow_slice(src: &[Self::Compute], dst: &mut [Self]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = Self::narrow(x);
        }
    }
}

macro_rules! native_element {
    ($t:ty) => {
        impl Element for $t {
            type Compute = $t;
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
    ($t:ty, $widen_slice:expr) => {
        impl Element for $t {
            type Compute = f32;
            #[inline]
            fn widen(self) -> f32 {
                self.to_f32()
            }
            #[inline]
            fn narrow(x: f32) -> $t {
                <$t>::from_f32(x)
            }
            fn widen_slice(src: &[$t], dst: &mut Vec<f32>) {
                dst.resize(src.len(), 0.0);
                $widen_slice(src, &mut dst[..]);
            }
            fn narrow_slice(src: &[f32], dst: &mut [$t]) {
                dst.convert_from_f32_slice(src);
            }
        }
    };
}
// Whole rows at a time: float16 with F16C when the CPU has it; bfloat16 is the top half of a
// float32, a shift that vectorises as written here.
half_element!(f16, |src: &[f16], dst: &mut [f32]| crate::kernels::lanes::widen_f16(src.reinterpret_cast(), dst));
half_element!(bf16, |src: &[bf16], dst: &mut [f32]| {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
});

/// A sparse-label element type: any primitive integer, signed or unsigned, 8 to 64 bits.
pub trait Label: Copy + Send + Sync + 'static {
    fn to_i128(self) -> i128;
}

macro_rules! label {
    ($($t:ty),*) => {$(
        impl Label for $t {
            #[inline]
            fn to_i128(self) -> i128 {
                self as i128
            }
        }
    )*};
}
label!(i8, i16, i32, i64, u8, u16, u32, u64, isize, usize);
