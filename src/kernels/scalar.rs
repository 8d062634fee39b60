//! The portable tier, and the reference every SIMD tier is tested against.

use super::{Float, RowKernels};
use crate::dispatch::Tier;

pub fn max_argmax<F: Float>(z: &[F]) -> (F, usize) {
    let mut best = (F::neg_infinity(), 0);
    for (j, &x) in z.iter().enumerate() {
        if x.is_nan() {
            return (x, j);
        }
        if x > best.0 {
            best = (x, j);
        }
    }
    best
}

pub fn sum_exp<F: Float>(z: &[F], shift: F) -> F {
    z.iter().fold(F::zero(), |acc, &x| acc + (x - shift).exp())
}

pub fn exp_scaled<F: Float>(z: &[F], shift: F, scale: F, out: &mut [F]) {
    for (o, &x) in out.iter_mut().zip(z) {
        *o = (x - shift).exp() * scale;
    }
}

pub static F32: RowKernels<f32> = RowKernels {
    tier: Tier::Scalar,
    max_argmax: max_argmax::<f32>,
    sum_exp: sum_exp::<f32>,
    exp_scaled: exp_scaled::<f32>,
};

pub static F64: RowKernels<f64> = RowKernels {
    tier: Tier::Scalar,
    max_argmax: max_argmax::<f64>,
    sum_exp: sum_exp::<f64>,
    exp_scaled: exp_scaled::<f64>,
};
