//! The aarch64 tier: NEON (4 f32 / 2 f64 lanes, part of every aarch64 CPU), `2^n` from
//! exponent bits as in the AVX2 tier, tails through a stack buffer. The kernels are the ones of
//! `super::simd`, instantiated over NEON vectors.
//! The tables are tested against the scalar tier (on x86 hosts under qemu:
//! `cargo test --target aarch64-unknown-linux-gnu`, see `scripts/test-aarch64.sh`).

use std::arch::aarch64::*;

use super::simd::{self, Plain, Vector};
use super::{Ahead, RowKernels};
use crate::dispatch::Tier;

/// One bit per lane, lane 0 lowest, from a lane mask of all ones / all zeros.
#[inline(always)]
unsafe fn bits_u32(m: uint32x4_t) -> u64 {
    const WEIGHTS: [u32; 4] = [1, 2, 4, 8];
    vaddvq_u32(vandq_u32(m, vld1q_u32(WEIGHTS.as_ptr()))) as u64
}

#[inline(always)]
unsafe fn bits_u64(m: uint64x2_t) -> u64 {
    const WEIGHTS: [u64; 2] = [1, 2];
    vaddvq_u64(vandq_u64(m, vld1q_u64(WEIGHTS.as_ptr())))
}

unsafe impl Vector for float32x4_t {
    type E = f32;
    const N: usize = 4;
    const CHEAP_FULL: bool = false;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        vdupq_n_f32(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> Self {
        let mut buf = [fill; 4];
        for (i, b) in buf.iter_mut().enumerate().take(n) {
            *b = *p.add(i);
        }
        vld1q_f32(buf.as_ptr())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        vst1q_f32(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: Self) {
        let mut buf = [0.0f32; 4];
        vst1q_f32(buf.as_mut_ptr(), v);
        for (i, &b) in buf.iter().enumerate().take(n) {
            *p.add(i) = b;
        }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        vsubq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
        vfmsq_f32(c, a, b)
    }
    // `fmax`/`fmin` return NaN where either operand is NaN; `fmaxnm` the number.
    #[inline(always)]
    unsafe fn max_nan(lo: Self, x: Self) -> Self {
        vmaxq_f32(lo, x)
    }
    #[inline(always)]
    unsafe fn min_nan(hi: Self, x: Self) -> Self {
        vminq_f32(hi, x)
    }
    #[inline(always)]
    unsafe fn max_num(x: Self, m: Self) -> Self {
        vmaxnmq_f32(x, m)
    }
    #[inline(always)]
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, t: Self) -> Self {
        let pow2 = |t: Self| vreinterpretq_f32_u32(vshlq_n_u32::<23>(vreinterpretq_u32_f32(t)));
        if FULL {
            // As the AVX2 tier: 2^n as 2^n1 · 2^n2, both normal; one rounding.
            let bias = vdupq_n_f32(<f32 as simd::ExpConsts>::MAGIC_BIAS);
            let t1 = vfmaq_f32(bias, n, vdupq_n_f32(0.5));
            let n2 = vsubq_f32(n, vsubq_f32(t1, bias));
            let t2 = vaddq_f32(n2, bias);
            vmulq_f32(vmulq_f32(p, pow2(t1)), pow2(t2))
        } else {
            vmulq_f32(vmulq_f32(p, pow2(t)), vdupq_n_f32(<f32 as simd::ExpConsts>::UNSCALE))
        }
    }
    #[inline(always)]
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self {
        let t = vfmaq_f32(e, e, err);
        vbslq_f32(vceqq_f32(t, t), t, e)
    }
    #[inline(always)]
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self {
        vbslq_f32(vceqq_f32(t, vdupq_n_f32(0.0)), acc, vfmaq_f32(acc, t, d))
    }
    #[inline(always)]
    unsafe fn unord_mask(a: Self, b: Self) -> u64 {
        bits_u32(vmvnq_u32(vandq_u32(vceqq_f32(a, a), vceqq_f32(b, b))))
    }
    #[inline(always)]
    unsafe fn eq_mask(a: Self, b: Self) -> u64 {
        bits_u32(vceqq_f32(a, b))
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        bits_u32(vcgtq_f32(a, b))
    }
    #[inline(always)]
    unsafe fn hmax(v: Self) -> f32 {
        vmaxvq_f32(v)
    }
    #[inline(always)]
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self {
        vbslq_f32(vceqq_f32(a, b), t, f)
    }
}

unsafe impl Vector for float64x2_t {
    type E = f64;
    const N: usize = 2;
    const CHEAP_FULL: bool = false;
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        vdupq_n_f64(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        vld1q_f64(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f64, n: usize, fill: f64) -> Self {
        let mut buf = [fill; 2];
        for (i, b) in buf.iter_mut().enumerate().take(n) {
            *b = *p.add(i);
        }
        vld1q_f64(buf.as_ptr())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self) {
        vst1q_f64(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f64, n: usize, v: Self) {
        let mut buf = [0.0f64; 2];
        vst1q_f64(buf.as_mut_ptr(), v);
        for (i, &b) in buf.iter().enumerate().take(n) {
            *p.add(i) = b;
        }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        vaddq_f64(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        vsubq_f64(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        vmulq_f64(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        vfmaq_f64(c, a, b)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
        vfmsq_f64(c, a, b)
    }
    #[inline(always)]
    unsafe fn max_nan(lo: Self, x: Self) -> Self {
        vmaxq_f64(lo, x)
    }
    #[inline(always)]
    unsafe fn min_nan(hi: Self, x: Self) -> Self {
        vminq_f64(hi, x)
    }
    #[inline(always)]
    unsafe fn max_num(x: Self, m: Self) -> Self {
        vmaxnmq_f64(x, m)
    }
    #[inline(always)]
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, t: Self) -> Self {
        let pow2 = |t: Self| vreinterpretq_f64_u64(vshlq_n_u64::<52>(vreinterpretq_u64_f64(t)));
        if FULL {
            let bias = vdupq_n_f64(<f64 as simd::ExpConsts>::MAGIC_BIAS);
            let t1 = vfmaq_f64(bias, n, vdupq_n_f64(0.5));
            let n2 = vsubq_f64(n, vsubq_f64(t1, bias));
            let t2 = vaddq_f64(n2, bias);
            vmulq_f64(vmulq_f64(p, pow2(t1)), pow2(t2))
        } else {
            vmulq_f64(vmulq_f64(p, pow2(t)), vdupq_n_f64(<f64 as simd::ExpConsts>::UNSCALE))
        }
    }
    #[inline(always)]
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self {
        let t = vfmaq_f64(e, e, err);
        vbslq_f64(vceqq_f64(t, t), t, e)
    }
    #[inline(always)]
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self {
        vbslq_f64(vceqq_f64(t, vdupq_n_f64(0.0)), acc, vfmaq_f64(acc, t, d))
    }
    #[inline(always)]
    unsafe fn unord_mask(a: Self, b: Self) -> u64 {
        let ordered = vandq_u64(vceqq_f64(a, a), vceqq_f64(b, b));
        bits_u64(veorq_u64(ordered, vdupq_n_u64(u64::MAX)))
    }
    #[inline(always)]
    unsafe fn eq_mask(a: Self, b: Self) -> u64 {
        bits_u64(vceqq_f64(a, b))
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        bits_u64(vcgtq_f64(a, b))
    }
    #[inline(always)]
    unsafe fn hmax(v: Self) -> f64 {
        vmaxvq_f64(v)
    }
    #[inline(always)]
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self {
        vbslq_f64(vceqq_f64(a, b), t, f)
    }
}

/// Narrow rows, sixteen at a time (see `super::lanes`), four per vector.
///
/// # Safety
/// `z` (and `targets`) hold `LANES` rows of `classes` (1 ..= `MAX_CLASSES`) elements; `exps`,
/// at least `classes` columns (NEON is part of every aarch64 CPU).
pub(super) unsafe fn tile_stats_neon(
    z: &[f32],
    classes: usize,
    out: &mut super::lanes::TileStats,
    exps: Option<&mut [super::lanes::Column]>,
    targets: Option<&[f32]>,
) {
    super::lanes::tile_stats_on::<float32x4_t, Plain, 4>(z, classes, out, exps, targets)
}

macro_rules! tier {
    ($table:ident, $module:ident, $vector:ty, $t:ty) => {
        /// The kernels over NEON vectors. Safety (every function): the CPU has NEON, which
        /// every aarch64 CPU has.
        pub(super) mod $module {
            use super::*;

            pub unsafe fn max_argmax(z: &[$t]) -> ($t, usize) {
                simd::max_argmax::<$vector, simd::Plain>(z)
            }
            pub unsafe fn sum_exp(z: &[$t], shift: $t, skip: usize, ahead: Ahead) -> f64 {
                simd::sum_exp::<$vector, simd::Plain>(z, shift, skip, ahead)
            }
            pub unsafe fn sum_exp_store(z: &[$t], shift: $t, skip: usize, out: &mut [$t], ahead: Ahead) -> f64 {
                simd::sum_exp_store::<$vector, Plain>(z, shift, skip, out, ahead)
            }
            pub unsafe fn sum_exp_targets(
                z: &[$t],
                shift: $t,
                skip: usize,
                t: &[$t],
                exps: Option<&mut [$t]>,
                ahead: Ahead,
            ) -> (f64, ($t, $t)) {
                simd::sum_exp_targets::<$vector>(z, shift, skip, t, exps, ahead)
            }
            pub unsafe fn exp_scaled(z: &[$t], shift: $t, scale: $t, out: &mut [$t]) {
                simd::exp_scaled::<$vector, Plain, Plain, false>(z, shift, scale, out)
            }
            pub unsafe fn scale(x: &[$t], scale: $t, out: &mut [$t]) {
                simd::scale::<$vector, Plain, false>(x, scale, out)
            }
            pub unsafe fn target_sums(t: &[$t], z: &[$t], max: $t) -> ($t, $t) {
                simd::target_sums::<$vector>(t, z, max)
            }
            pub unsafe fn log_softmax(z: &[$t], max: $t, l: f64, out: &mut [$t]) {
                simd::log_softmax::<$vector>(z, max, l, out)
            }
            #[cfg(test)]
            pub unsafe fn exp(x: &[$t], out: &mut [$t]) {
                simd::exp_slice::<$vector>(x, out)
            }
        }

        /// The row kernels of the NEON tier.
        pub static $table: RowKernels<$t> = RowKernels {
            tier: Tier::Neon,
            // SAFETY (all of them): NEON is part of the aarch64 baseline.
            max_argmax: |z| unsafe { $module::max_argmax(z) },
            sum_exp: |z, s, k, a| unsafe { $module::sum_exp(z, s, k, a) },
            sum_exp_store: |z, s, k, o, a| unsafe { $module::sum_exp_store(z, s, k, o, a) },
            sum_exp_targets: |z, s, k, t, e, a| unsafe { $module::sum_exp_targets(z, s, k, t, e, a) },
            exp_scaled: |z, s, c, o| unsafe { $module::exp_scaled(z, s, c, o) },
            exp_scaled_stream: |z, s, c, o| unsafe { $module::exp_scaled(z, s, c, o) },
            scale: |x, c, o| unsafe { $module::scale(x, c, o) },
            scale_stream: |x, c, o| unsafe { $module::scale(x, c, o) },
            target_sums: |t, z, m| unsafe { $module::target_sums(t, z, m) },
            log_softmax: |z, m, l, o| unsafe { $module::log_softmax(z, m, l, o) },
        };
    };
}

tier!(NEON_F32, neon_f32, float32x4_t, f32);
tier!(NEON_F64, neon_f64, float64x2_t, f64);

/// The tiers the tests in `super::simd` run.
#[cfg(test)]
pub(super) fn test_tiers_f32() -> Vec<simd::tests::TestTier<f32>> {
    vec![simd::tests::TestTier { name: "neon", k: &NEON_F32, exp: neon_f32::exp, lanes: 4 }]
}

#[cfg(test)]
pub(super) fn test_tiers_f64() -> Vec<simd::tests::TestTier<f64>> {
    vec![simd::tests::TestTier { name: "neon", k: &NEON_F64, exp: neon_f64::exp, lanes: 2 }]
}
