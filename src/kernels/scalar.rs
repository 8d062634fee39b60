//! The portable tier, and the reference every SIMD tier is tested against.

use super::{Ahead, CompensatedSum, Float, RowKernels};
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

pub fn sum_exp<F: Float>(z: &[F], shift: F, skip: usize, ahead: Ahead) -> f64 {
    ahead.prefetch();
    sum_exp_into(z, shift, skip, None)
}

pub fn sum_exp_store<F: Float>(z: &[F], shift: F, skip: usize, out: &mut [F], ahead: Ahead) -> f64 {
    assert_eq!(z.len(), out.len(), "a term per element");
    ahead.prefetch();
    sum_exp_into(z, shift, skip, Some(out))
}

pub fn sum_exp_targets<F: Float>(
    z: &[F],
    shift: F,
    skip: usize,
    t: &[F],
    exps: Option<&mut [F]>,
    ahead: Ahead,
) -> (f64, (F, F)) {
    assert_eq!(z.len(), t.len(), "a target per element");
    let sum = match exps {
        Some(out) => sum_exp_store(z, shift, skip, out, ahead),
        None => sum_exp(z, shift, skip, ahead),
    };
    (sum, target_sums(t, z, shift))
}

/// `Σ_{j≠skip} exp(z_j - shift)`, each term (the skipped one too) also stored in `out` where
/// given.
fn sum_exp_into<F: Float>(z: &[F], shift: F, skip: usize, mut out: Option<&mut [F]>) -> f64 {
    // Eight compensated partial sums in f64: the portable tier has time to
    // spare, and a plain sum of L equal f64 terms is up to L/2 ulp off (rows whose other
    // classes are all equal). Each term carries the rounding error of `x - shift`, as in
    // `exp_scaled`: it is what keeps confident rows (every `d` far below 0) exact.
    let mut acc = [CompensatedSum::<f64>::default(); 8];
    let tail = z.len() / 8 * 8;
    // (The last `len % 8` elements first, into the first sums, then each run of eight into
    // the eight: the order the sums had when this loop went chunk by chunk.)
    for j in (tail..z.len()).chain(0..tail) {
        let (d, err) = two_diff(z[j], shift);
        let e = d.exp();
        let term = e + e * err;
        if let Some(out) = out.as_deref_mut() {
            out[j] = term;
        }
        if j != skip {
            acc[j % 8].add(term.to_f64()); // (`tail` is a multiple of 8)
        }
    }
    let v = acc.map(CompensatedSum::value);
    ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))
}

pub fn exp_scaled<F: Float>(z: &[F], shift: F, scale: F, out: &mut [F]) {
    let narrow = F::epsilon() > F::from_f64(f64::EPSILON);
    for (o, &x) in out.iter_mut().zip(z) {
        let (d, err) = two_diff(x, shift);
        // exp(d + err) = exp(d) (1 + err) to first order: recovers the rounding of `x - shift`,
        // which alone costs |d|/2 ulp (50 ulp at d = -100).
        let e = d.exp();
        *o = if narrow && scale > F::one() && e < F::min_positive_value() {
            // A subnormal exp kept few bits, which a scale above 1 would lift into the normal
            // range: in f64 instead, where it is normal (rounded once, at the end).
            let e = d.to_f64().exp();
            F::from_f64((e + e * err.to_f64()) * scale.to_f64())
        } else {
            (e + e * err) * scale
        };
    }
}

pub fn scale<F: Float>(x: &[F], scale: F, out: &mut [F]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = x * scale;
    }
}

/// Compensated sums in f64: a plain running sum of L equal terms, as smoothed one-hot labels
/// give, is up to L/2 ulp off (the SIMD tiers add theirs in short chains of trees).
pub fn target_sums<F: Float>(t: &[F], z: &[F], max: F) -> (F, F) {
    let (mut sum, mut gap) = (CompensatedSum::<f64>::default(), CompensatedSum::<f64>::default());
    for (&tj, &x) in t.iter().zip(z) {
        sum.add(tj.to_f64());
        if tj != F::zero() {
            gap.add((tj * (max - x)).to_f64());
        }
    }
    (F::from_f64(sum.value()), F::from_f64(gap.value()))
}

/// `log_softmax`: `x - max` exactly (its rounding error added back) less `l`, in f64, rounded
/// once to `F` (f32: within half an ulp and the rounding of the f64 sum; f64: two roundings).
pub fn log_softmax<F: Float>(z: &[F], max: F, l: f64, out: &mut [F]) {
    for (o, &x) in out.iter_mut().zip(z) {
        let (d, err) = two_diff(x, max);
        *o = F::from_f64((d.to_f64() - l) + err.to_f64());
    }
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
    sum_exp_store: sum_exp_store::<f32>,
    sum_exp_targets: sum_exp_targets::<f32>,
    exp_scaled: exp_scaled::<f32>,
    exp_scaled_stream: exp_scaled::<f32>,
    scale: scale::<f32>,
    scale_stream: scale::<f32>,
    target_sums: target_sums::<f32>,
    log_softmax: log_softmax::<f32>,
};

pub static F64: RowKernels<f64> = RowKernels {
    tier: Tier::Scalar,
    max_argmax: max_argmax::<f64>,
    sum_exp: sum_exp::<f64>,
    sum_exp_store: sum_exp_store::<f64>,
    sum_exp_targets: sum_exp_targets::<f64>,
    exp_scaled: exp_scaled::<f64>,
    exp_scaled_stream: exp_scaled::<f64>,
    scale: scale::<f64>,
    scale_stream: scale::<f64>,
    target_sums: target_sums::<f64>,
    log_softmax: log_softmax::<f64>,
};
