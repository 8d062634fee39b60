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
    // Eight partial sums in f64: the portable tier has time to spare, and f32 rows get a sum
    // as good as the SIMD tiers' 64 lanes. Each term carries the rounding error of
    // `x - shift`, as in `exp_scaled`: it is what keeps confident rows (every `d` far below
    // 0) exact.
    let mut acc = [0.0f64; 8];
    let term = |x: F| {
        let (d, err) = two_diff(x, shift);
        let e = d.exp();
        (e + e * err).to_f64()
    };
    let chunks = z.chunks_exact(8);
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += term(x);
    }
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += term(x);
        }
    }
    F::from_f64(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])))
}

pub fn exp_scaled<F: Float>(z: &[F], shift: F, scale: F, out: &mut [F]) {
    for (o, &x) in out.iter_mut().zip(z) {
        let (d, err) = two_diff(x, shift);
        // exp(d + err) = exp(d) (1 + err) to first order: recovers the rounding of `x - shift`,
        // which alone costs |d|/2 ulp (50 ulp at d = -100).
        let e = d.exp();
        *o = (e + e * err) * scale;
    }
}

pub fn target_sums<F: Float>(t: &[F], z: &[F], max: F) -> (F, F) {
    let mut acc = [(F::zero(), F::zero()); 8];
    for (i, (&tj, &x)) in t.iter().zip(z).enumerate() {
        let a = &mut acc[i % 8];
        a.0 = a.0 + tj;
        a.1 = a.1 + if tj != F::zero() { tj * (max - x) } else { F::zero() };
    }
    acc.iter().fold((F::zero(), F::zero()), |s, a| (s.0 + a.0, s.1 + a.1))
}

/// `a - b` and its exact rounding error (Knuth's branch-free TwoSum). Where an operand is
/// not finite the error is NaN; it is replaced by 0, and `a - b` itself carries the NaN or inf.
#[inline]
pub fn two_diff<F: Float>(a: F, b: F) -> (F, F) {
    let d = a - b;
    let b_virtual = d - a;
    let a_virtual = d - b_virtual;
    let err = (a - a_virtual) - (b + b_virtual);
    (d, if err.is_finite() { err } else { F::zero() })
}

pub static F32: RowKernels<f32> = RowKernels {
    tier: Tier::Scalar,
    max_argmax: max_argmax::<f32>,
    sum_exp: sum_exp::<f32>,
    exp_scaled: exp_scaled::<f32>,
    target_sums: target_sums::<f32>,
};

pub static F64: RowKernels<f64> = RowKernels {
    tier: Tier::Scalar,
    max_argmax: max_argmax::<f64>,
    sum_exp: sum_exp::<f64>,
    exp_scaled: exp_scaled::<f64>,
    target_sums: target_sums::<f64>,
};
