//! Every tier this CPU has against the scalar tier and against `std`'s `exp`.

use crate::kernels::scalar;

#[cfg(target_arch = "x86_64")]
use crate::kernels::lanes::{TileStats, TileStatsFn, LANES, MAX_CLASSES};
#[cfg(target_arch = "x86_64")]
use crate::kernels::StoredKernels;
use crate::kernels::{Ahead, RowKernels, NO_SKIP};

pub(crate) type ExpFn<F> = unsafe fn(&[F], &mut [F]);

/// A tier under test: its name, row kernels, vector `exp` (over a slice) and lanes.
#[derive(Clone, Copy)]
pub(crate) struct TestTier<F: 'static> {
    pub name: &'static str,
    pub k: &'static RowKernels<F>,
    pub exp: ExpFn<F>,
    pub lanes: usize,
}

/// The f32 tiers this CPU runs.
fn tiers_f32() -> Vec<TestTier<f32>> {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::x86::test_tiers_f32();
    #[cfg(target_arch = "aarch64")]
    return crate::kernels::neon::test_tiers_f32();
}

fn tiers_f64() -> Vec<TestTier<f64>> {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::x86::test_tiers_f64();
    #[cfg(target_arch = "aarch64")]
    return crate::kernels::neon::test_tiers_f64();
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Distance in ulps (NaN equals NaN; 0 and -0 are 0 apart).
fn ulps32(a: f32, b: f32) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() { 0 } else { u64::MAX };
    }
    let key = |x: f32| {
        let b = x.to_bits() as i32 as i64;
        if b < 0 {
            i32::MIN as i64 - b
        } else {
            b
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

fn ulps64(a: f64, b: f64) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() { 0 } else { u64::MAX };
    }
    let key = |x: f64| {
        let b = x.to_bits() as i64 as i128;
        if b < 0 {
            i64::MIN as i128 - b
        } else {
            b
        }
    };
    (key(a) - key(b)).unsigned_abs() as u64
}

/// The error of `got` in ulps of the f32 nearest to `want` (subnormal ulps below 2^-126).
fn ulp_error32(got: f32, want: f64) -> f64 {
    if got.is_nan() || want.is_nan() {
        return if got.is_nan() && want.is_nan() { 0.0 } else { f64::INFINITY };
    }
    if got as f64 == want {
        return 0.0;
    }
    let w = (want as f32).abs();
    let exponent = if w == 0.0 { -126 } else { (((w.to_bits() >> 23) & 0xff) as i32 - 127).max(-126) };
    if exponent > 127 {
        return if got.is_infinite() { 0.0 } else { f64::INFINITY };
    }
    (got as f64 - want).abs() / 2f64.powi(exponent - 23)
}

/// Rows of many kinds and lengths, with NaN, ±inf and repeated maxima mixed in.
fn rows(seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng(seed);
    let mut out = vec![];
    let lengths: Vec<usize> = (0..100).chain([111, 127, 128, 129, 1000, 1024, 4099, 32768 + 5]).collect();
    for &n in &lengths {
        for kind in 0..8 {
            let mut z: Vec<f64> = (0..n)
                .map(|_| match kind {
                    0 => rng.range(-10.0, 10.0),
                    1 => rng.range(-200.0, 50.0),
                    // Far from 0: `x - max` rounds, and the kernels must fold the error back.
                    2 => 1000.0 + rng.range(-30.0, 30.0),
                    3 => -1.0e4 + rng.range(-100.0, 100.0),
                    4 => (if rng.unit() < 0.5 { -1.0 } else { 1.0 }) * rng.range(-20.0, 20.0).exp2(),
                    // Few values: the maximum repeats.
                    5 => rng.range(0.0, 3.0).floor(),
                    6 => rng.range(-1.0, 1.0),
                    _ => rng.range(-1.0e30, 1.0e30),
                })
                .collect();
            if n > 0 {
                match kind {
                    // -inf (masked logits) here and there.
                    1 | 6 => (0..1 + n / 8).for_each(|_| z[rng.below(n)] = f64::NEG_INFINITY),
                    // A NaN in the first, last or a random place.
                    3 => z[[0, n - 1, rng.below(n)][rng.below(3)]] = f64::NAN,
                    7 if n % 3 == 0 => z[rng.below(n)] = f64::INFINITY,
                    _ => {}
                }
            }
            out.push(z);
        }
        if n > 0 {
            out.push(vec![f64::NEG_INFINITY; n]);
            let mut z = vec![f64::NEG_INFINITY; n];
            z[n - 1] = -3.0;
            out.push(z);
            let mut z = vec![f64::NAN; n];
            z[0] = 1.0;
            out.push(z);
        }
    }
    out
}

/// Relative error bound of a sum of `n` terms (each within 2 ulp) in `4 * lanes` partial sums.
fn sum_tolerance(n: usize, lanes: usize, eps: f64) -> f64 {
    (2.0 + n.div_ceil(4 * lanes) as f64 + 8.0) * eps
}

#[test]
fn f32_row_kernels_match_the_scalar_tier() {
    let s = &scalar::F32;
    for TestTier { name, k, lanes, .. } in tiers_f32() {
        for row in rows(1) {
            let z: Vec<f32> = row.iter().map(|&x| x as f32).collect();
            let n = z.len();
            let what = || format!("{} n={n} z[..4]={:?}", name, &z[..n.min(4)]);
            if n == 0 {
                assert_eq!((k.sum_exp)(&z, 0.0, NO_SKIP, Ahead::NONE), 0.0);
                (k.exp_scaled)(&z, 0.0, 1.0, &mut []);
                assert_eq!((k.target_sums)(&z, &z, 0.0), (0.0, 0.0));
                continue;
            }
            let (m, j) = (k.max_argmax)(&z);
            let (ms, js) = (s.max_argmax)(&z);
            assert_eq!((m.to_bits(), j), (ms.to_bits(), js), "max_argmax {}", what());
            if !m.is_finite() {
                continue; // NaN, +inf or all -inf: the kernels below are not called.
            }
            // Every term, and all but one: the maximum's (its rest can be far below 1, and must
            // keep its bits), the first, the last, one in the middle. (Subnormal terms are
            // within their own ulp, not relatively: `RowStats::refined` sums such rows again.)
            for skip in [NO_SKIP, j, 0, n - 1, n / 2] {
                let terms = z.iter().enumerate().filter(|&(i, _)| i != skip);
                let want: f64 = terms.map(|(_, &x)| (x as f64 - m as f64).exp()).sum();
                let got = (k.sum_exp)(&z, m, skip, Ahead::NONE);
                let tol =
                    sum_tolerance(n, lanes, f32::EPSILON as f64 / 2.0) * want + n as f64 * f32::from_bits(1) as f64;
                assert!((got - want).abs() <= tol, "sum_exp {got} vs {want} (skip {skip}): {}", what());
            }
            for scale in [1.0f32, 0.37, 3.0e-5] {
                let mut out = vec![f32::NAN; n];
                let mut out_s = vec![f32::NAN; n];
                (k.exp_scaled)(&z, m, scale, &mut out);
                (s.exp_scaled)(&z, m, scale, &mut out_s);
                for i in 0..n {
                    let want = ((z[i] as f64 - m as f64).exp() * scale as f64) as f32;
                    assert!(ulps32(out[i], want) <= 2, "exp_scaled[{i}] {} vs {want}: {}", out[i], what());
                    assert!(ulps32(out[i], out_s[i]) <= 2, "exp_scaled[{i}] {} vs scalar {}", out[i], out_s[i]);
                }
            }
            let mut rng = Rng(n as u64 + 7);
            let t: Vec<f32> = z
                .iter()
                .map(|&x| if x == f32::NEG_INFINITY || rng.unit() < 0.3 { 0.0 } else { rng.range(-0.5, 1.0) as f32 })
                .collect();
            let (ts, gap) = (k.target_sums)(&t, &z, m);
            let want_ts: f64 = t.iter().map(|&x| x as f64).sum();
            let abs_ts: f64 = t.iter().map(|&x| x.abs() as f64).sum();
            let terms = t.iter().zip(&z).filter(|(&t, _)| t != 0.0).map(|(&t, &x)| t as f64 * (m as f64 - x as f64));
            let (want_gap, abs_gap) = terms.fold((0.0, 0.0), |(a, b), g| (a + g, b + g.abs()));
            let tol = 4.0 * sum_tolerance(n, lanes, f32::EPSILON as f64);
            assert!((ts as f64 - want_ts).abs() <= tol * abs_ts, "target sum {ts} vs {want_ts}: {}", what());
            assert!((gap as f64 - want_gap).abs() <= tol * abs_gap, "gap {gap} vs {want_gap}: {}", what());
        }
    }
}

/// `log_softmax` within half an ulp and a hair of `(z_j - max) - l` (in f64: exact but for a
/// rounding at 2^-53), f32, every tier and the scalar one, over the rows above the kernel is
/// called on (no NaN, no +inf) and a row whose differences overflow (-inf), for `l` from 0
/// to 50 and subnormal; the f64 tiers within an ulp of the scalar tier (which rounds twice).
#[test]
fn log_softmax_within_half_an_ulp() {
    let ls = [0.0, 1e-40, 1e-9, 0.3, 1.0, 7.5, 50.0];
    let mut f32_rows: Vec<Vec<f32>> = rows(3).iter().map(|r| r.iter().map(|&x| x as f32).collect()).collect();
    f32_rows.push(vec![f32::MAX, -f32::MAX, f32::NEG_INFINITY, 0.0, -1.0e38]);
    let tiers = tiers_f32().into_iter().map(|t| (t.name, t.k)).chain([("scalar", &scalar::F32)]);
    for (name, k) in tiers {
        for z in &f32_rows {
            let Some(m) = z.iter().copied().reduce(f32::max).filter(|m| m.is_finite()) else { continue };
            if z.iter().any(|x| x.is_nan()) {
                continue;
            }
            for l in ls {
                let mut out = vec![f32::NAN; z.len()];
                (k.log_softmax)(z, m, l, &mut out);
                for (i, (&x, &o)) in z.iter().zip(&out).enumerate() {
                    let want = (x as f64 - m as f64) - l;
                    let err = ulp_error32(o, want);
                    assert!(
                        err <= 0.5 + 1e-5,
                        "{name} log_softmax[{i}] of {x} (max {m}, l {l}): {o} vs {want}, {err} ulp"
                    );
                }
            }
        }
    }
    let s = &scalar::F64;
    for TestTier { name, k, .. } in tiers_f64() {
        for z in rows(4) {
            let Some(m) = z.iter().copied().reduce(f64::max).filter(|m| m.is_finite()) else { continue };
            if z.iter().any(|x| x.is_nan()) {
                continue;
            }
            for l in ls {
                let (mut out, mut want) = (vec![f64::NAN; z.len()], vec![f64::NAN; z.len()]);
                (k.log_softmax)(&z, m, l, &mut out);
                (s.log_softmax)(&z, m, l, &mut want);
                for i in 0..z.len() {
                    assert!(ulps64(out[i], want[i]) <= 1, "{name} log_softmax[{i}] {} vs {}", out[i], want[i]);
                }
            }
        }
    }
}

#[test]
fn f64_row_kernels_match_the_scalar_tier() {
    let s = &scalar::F64;
    for TestTier { name, k, lanes, .. } in tiers_f64() {
        for z in rows(2) {
            let n = z.len();
            let what = || format!("{} n={n} z[..4]={:?}", name, &z[..n.min(4)]);
            if n == 0 {
                assert_eq!((k.sum_exp)(&z, 0.0, NO_SKIP, Ahead::NONE), 0.0);
                assert_eq!((k.target_sums)(&z, &z, 0.0), (0.0, 0.0));
                continue;
            }
            let (m, j) = (k.max_argmax)(&z);
            let (ms, js) = (s.max_argmax)(&z);
            assert_eq!((m.to_bits(), j), (ms.to_bits(), js), "max_argmax {}", what());
            if !m.is_finite() {
                continue;
            }
            for skip in [NO_SKIP, j, 0, n - 1, n / 2] {
                let want = (s.sum_exp)(&z, m, skip, Ahead::NONE);
                let got = (k.sum_exp)(&z, m, skip, Ahead::NONE);
                let tol = sum_tolerance(n, lanes, f64::EPSILON / 2.0) * want + n as f64 * f64::from_bits(1);
                assert!((got - want).abs() <= tol, "sum_exp {got} vs {want} (skip {skip}): {}", what());
            }
            for scale in [1.0, 0.37, 3.0e-5] {
                let mut out = vec![f64::NAN; n];
                let mut want = vec![f64::NAN; n];
                (k.exp_scaled)(&z, m, scale, &mut out);
                (s.exp_scaled)(&z, m, scale, &mut want);
                for i in 0..n {
                    assert!(ulps64(out[i], want[i]) <= 2, "exp_scaled[{i}] {} vs {}: {}", out[i], want[i], what());
                }
            }
            let t: Vec<f64> = z
                .iter()
                .enumerate()
                .map(|(i, &x)| if x == f64::NEG_INFINITY || i % 3 == 0 { 0.0 } else { 0.25 })
                .collect();
            let (ts, gap) = (k.target_sums)(&t, &z, m);
            let (want_ts, want_gap) = (s.target_sums)(&t, &z, m);
            let tol = 4.0 * sum_tolerance(n, lanes, f64::EPSILON);
            assert!((ts - want_ts).abs() <= tol * want_ts.abs().max(1e-300), "target sum: {}", what());
            assert!((gap - want_gap).abs() <= tol * want_gap.abs().max(1e-300), "gap {gap} vs {want_gap}: {}", what());
        }
    }
}

#[test]
fn max_argmax_special_rows() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let cases: Vec<(Vec<f32>, (f32, usize))> = vec![
        (vec![1.0], (1.0, 0)),
        (vec![f32::NEG_INFINITY; 37], (f32::NEG_INFINITY, 0)),
        (vec![3.0, 5.0, 5.0, 1.0], (5.0, 1)),
        (vec![-0.0, 0.0], (-0.0, 0)),
        (vec![0.0, -0.0], (0.0, 0)),
        ((0..100).map(|i| (i % 7) as f32).collect(), (6.0, 6)),
        ((0..100).map(|i| if i == 99 { 2.0 } else { 1.0 }).collect(), (2.0, 99)),
        ((0..100).map(|i| if i == 70 { inf } else { 1.0 }).collect(), (inf, 70)),
        ((0..65).map(|i| if i == 64 { nan } else { 1.0 }).collect(), (nan, 64)),
        ((0..65).map(|i| if i == 3 { nan } else { 1.0 }).collect(), (nan, 3)),
        (
            (0..65)
                .map(|i| {
                    if i == 40 {
                        nan
                    } else if i == 41 {
                        inf
                    } else {
                        1.0
                    }
                })
                .collect(),
            (nan, 40),
        ),
    ];
    for TestTier { name, k, .. } in tiers_f32() {
        for (z, (m, j)) in &cases {
            let got = (k.max_argmax)(z);
            assert!(got.0.to_bits() == m.to_bits() || (got.0.is_nan() && m.is_nan()), "{} {z:?}: {got:?}", name);
            assert_eq!(got.1, *j, "{} {z:?}", name);
            let z64: Vec<f64> = z.iter().map(|&x| x as f64).collect();
            for TestTier { k: k64, .. } in tiers_f64().into_iter().filter(|t| t.name == name) {
                let got = (k64.max_argmax)(&z64);
                assert!(got.0.to_bits() == (*m as f64).to_bits() || (got.0.is_nan() && m.is_nan()));
                assert_eq!(got.1, *j, "{} {z:?}", name);
            }
        }
        // Every position of a single NaN, and of a single maximum, for every length up to 70.
        for n in 1..70 {
            for p in 0..n {
                let mut z = vec![0.5f32; n];
                z[p] = 2.0;
                assert_eq!((k.max_argmax)(&z), (2.0, p));
                z[p] = nan;
                let got = (k.max_argmax)(&z);
                assert!(got.0.is_nan() && got.1 == p, "{} n={n} p={p}", name);
            }
        }
    }
}

/// Rows longer than a block of the first pass (2048 elements): the maximum's first occurrence
/// when an equal or larger one, or a zero of the other sign, or a NaN, lies in a later block.
#[test]
fn max_argmax_across_blocks() {
    let cases: [(usize, usize, f32, f32); 9] = [
        // (first position, second position, value there, value at the second)
        (5, 2051, 2.0, 2.0),
        (2047, 2048, 2.0, 2.0),
        (2048, 4100, 2.0, 2.0),
        (100, 6199, 2.0, 2.0),
        (7, 4096, 2.0, 3.0),
        (4095, 4096, 3.0, 2.0),
        (30, 5000, -0.0, 0.0),
        (2100, 2200, 0.0, -0.0),
        (3, 4099, 2.0, f32::NAN),
    ];
    for TestTier { name, k, .. } in tiers_f32() {
        for n in [2049, 4097, 6200] {
            for &(p1, p2, v1, v2) in cases.iter().filter(|c| c.1 < n) {
                let mut z = vec![if v1 == 0.0 { -1.0f32 } else { 0.5 }; n];
                (z[p1], z[p2]) = (v1, v2);
                let (m, j) = (k.max_argmax)(&z);
                let (want_m, want_j) = if v2.is_nan() || v2 > v1 { (v2, p2) } else { (v1, p1) };
                assert!(m.to_bits() == want_m.to_bits() || (m.is_nan() && want_m.is_nan()), "{name} n={n}: {m}");
                assert_eq!(j, want_j, "{name} n={n} {p1} {p2}");
                let z64: Vec<f64> = z.iter().map(|&x| x as f64).collect();
                for TestTier { k: k64, .. } in tiers_f64().into_iter().filter(|t| t.name == name) {
                    let (m, j) = (k64.max_argmax)(&z64);
                    assert!(m.to_bits() == (want_m as f64).to_bits() || (m.is_nan() && want_m.is_nan()));
                    assert_eq!(j, want_j, "{name} f64 n={n} {p1} {p2}");
                }
            }
        }
    }
}

/// Per f32 tier, over `xs`: the worst ulp distance to `f64::exp` rounded to f32, the input
/// where it occurs, and the worst error in ulps against `f64::exp` itself.
fn worst_exp_f32(xs: &[f32]) -> Vec<(&'static str, u64, f32, f64)> {
    let want: Vec<f64> = xs.iter().map(|&x| (x as f64).exp()).collect();
    let mut got = vec![0.0f32; xs.len()];
    tiers_f32()
        .into_iter()
        .map(|TestTier { name, exp, .. }| {
            // SAFETY: `tiers_f32` lists only tiers whose features the CPU has.
            unsafe { exp(xs, &mut got) };
            let (mut worst, mut at, mut err) = (0, 0.0, 0.0f64);
            for ((&g, &w), &x) in got.iter().zip(&want).zip(xs) {
                let d = ulps32(g, w as f32);
                if d > worst {
                    (worst, at) = (d, x);
                }
                err = err.max(ulp_error32(g, w));
            }
            (name, worst, at, err)
        })
        .collect()
}

/// f32 bit patterns from `a` to `b` (same sign), every `step`th.
fn f32_range(a: f32, b: f32, step: usize) -> Vec<f32> {
    let (lo, hi) = (a.to_bits().min(b.to_bits()), a.to_bits().max(b.to_bits()));
    (lo..=hi).step_by(step).map(f32::from_bits).collect()
}

#[test]
fn f32_exp_within_one_ulp() {
    let mut xs = f32_range(-0.0, -104.0, 97);
    xs.extend(f32_range(0.0, 89.0, 97));
    // Around the thresholds: 0, |r| = ln2/2, the subnormal boundary, underflow to 0, overflow.
    for t in [0.0f32, 0.346_573_6, -0.346_573_6, -87.336_55, -103.972_08, 88.722_84, 1e-7, -1e-7] {
        let b = t.abs().to_bits();
        for d in 0..4000u32 {
            let x = f32::from_bits(b.saturating_sub(2000) + d);
            xs.push(x.copysign(t));
            xs.push(-x.copysign(t));
        }
    }
    for (tier, worst, at, err) in worst_exp_f32(&xs) {
        println!("{tier:?}: f32 exp within {worst} ulp of the rounded reference (at {at:e}), error {err:.3} ulp");
        assert!(worst <= 1 && err < 1.0, "{tier:?}: {worst} ulp at {at:e}, error {err} ulp");
    }
    let special = [
        (f32::NEG_INFINITY, 0.0),
        (f32::MIN, 0.0),
        (-104.0, 0.0),
        (-103.98, 0.0),
        (-0.0, 1.0),
        (0.0, 1.0),
        (88.8, f32::INFINITY),
        (89.0, f32::INFINITY),
        (1e30, f32::INFINITY),
        (f32::MAX, f32::INFINITY),
        (f32::INFINITY, f32::INFINITY),
        (-100.0, (-100.0f64).exp() as f32), // subnormal
    ];
    for TestTier { exp, .. } in tiers_f32() {
        let xs: Vec<f32> = special.iter().map(|s| s.0).chain([f32::NAN]).collect();
        let mut out = vec![0.0; xs.len()];
        // SAFETY: `tiers_f32` lists only tiers whose features the CPU has.
        unsafe { exp(&xs, &mut out) };
        for (&(x, want), &got) in special.iter().zip(&out) {
            assert_eq!(got.to_bits(), want.to_bits(), "exp({x}) = {got}, want {want}");
        }
        assert!(out[xs.len() - 1].is_nan());
    }
}

#[test]
fn f64_exp_within_one_ulp_of_std() {
    let mut rng = Rng(3);
    let mut xs: Vec<f64> = (0..400_000).map(|_| rng.range(-746.0, 710.0)).collect();
    xs.extend((0..100_000).map(|_| rng.range(-1.0, 1.0)));
    xs.extend((0..50_000).map(|_| -rng.range(-60.0, 3.0).exp()));
    for t in [0.346_573_590_279_972_65f64, -708.396_418_532_264_1, -745.133_219_101_941_1, 709.782_712_893_384] {
        let b = t.abs().to_bits();
        xs.extend((0..4000u64).map(|d| f64::from_bits(b - 2000 + d).copysign(t)));
    }
    for TestTier { name, exp, .. } in tiers_f64() {
        let mut got = vec![0.0; xs.len()];
        // SAFETY: `tiers_f64` lists only tiers whose features the CPU has.
        unsafe { exp(&xs, &mut got) };
        let (worst, at) =
            xs.iter().zip(&got).map(|(&x, &g)| (ulps64(g, x.exp()), x)).fold(
                (0, 0.0),
                |a, b| {
                    if b.0 > a.0 {
                        b
                    } else {
                        a
                    }
                },
            );
        println!("{}: f64 exp within {worst} ulp of std (worst at {at:e})", name);
        assert!(worst <= 1, "{}: {worst} ulp at {at:e}", name);
        let special = [
            (f64::NEG_INFINITY, 0.0),
            (f64::MIN, 0.0),
            (-746.0, 0.0),
            (-745.2, 0.0),
            (0.0, 1.0),
            (-0.0, 1.0),
            (709.8, f64::INFINITY),
            (710.0, f64::INFINITY),
            (f64::INFINITY, f64::INFINITY),
            (-740.0, (-740.0f64).exp()),
        ];
        let xs: Vec<f64> = special.iter().map(|s| s.0).chain([f64::NAN]).collect();
        let mut out = vec![0.0; xs.len()];
        // SAFETY: as above.
        unsafe { exp(&xs, &mut out) };
        for (&(x, want), &got) in special.iter().zip(&out) {
            assert_eq!(got.to_bits(), want.to_bits(), "exp({x}) = {got}, want {want}");
        }
        assert!(out[xs.len() - 1].is_nan());
    }
}

/// Every f32 in [-104, 89] against `f64::exp` rounded, on every tier:
/// `cargo test --release --lib -- --ignored exhaustive`.
#[test]
#[ignore = "exhaustive: seconds in release mode, long in debug"]
fn exhaustive_f32_simd_exp() {
    use rayon::prelude::*;
    let ranges = [((-0.0f32).to_bits(), (-104.0f32).to_bits()), (0.0f32.to_bits(), 89.0f32.to_bits())];
    let tiers = tiers_f32();
    let chunks: Vec<(u32, u32)> = ranges
        .iter()
        .flat_map(|&(a, b)| (a..=b).step_by(1 << 16).map(move |lo| (lo, lo.saturating_add((1 << 16) - 1).min(b))))
        .collect();
    let worst = chunks
        .into_par_iter()
        .map(|(lo, hi)| {
            let xs: Vec<f32> = (lo..=hi).map(f32::from_bits).collect();
            let want: Vec<f64> = xs.iter().map(|&x| (x as f64).exp()).collect();
            let mut got = vec![0.0f32; xs.len()];
            let worst = |got: &[f32]| {
                got.iter()
                    .zip(&want)
                    .fold((0, 0.0f64), |(d, e), (&g, &w)| (d.max(ulps32(g, w as f32)), e.max(ulp_error32(g, w))))
            };
            tiers
                .iter()
                .flat_map(|&TestTier { k, exp, .. }| {
                    // SAFETY: `tiers_f32` lists only tiers whose features the CPU has.
                    unsafe { exp(&xs, &mut got) };
                    let standalone = worst(&got);
                    // The row kernels' form: exp(x - 0) by the split reduction.
                    (k.exp_scaled)(&xs, 0.0, 1.0, &mut got);
                    [standalone, worst(&got)]
                })
                .collect::<Vec<_>>()
        })
        .reduce(
            || vec![(0, 0.0); 2 * tiers.len()],
            |a, b| a.iter().zip(&b).map(|(x, y)| (x.0.max(y.0), x.1.max(y.1))).collect(),
        );
    for (t, w) in tiers.iter().zip(worst.chunks(2)) {
        for (form, (d, e)) in ["exp", "exp_scaled(x, 0, 1)"].iter().zip(w) {
            println!(
                "exhaustive: {} f32 {form} over [-104, 89]: within {d} ulp of the rounded reference, error {e:.4} ulp",
                t.name
            );
        }
    }
    assert!(worst.iter().all(|&(d, e)| d <= 1 && e < 1.1), "{worst:?}");
}

/// `exp(x - shift)` as the row kernels compute it (scale 1), over `x = shift + d` for `d`
/// every 97th f32 in [-104, 0] and shifts of every size: the worst ulp distance to the f64
/// reference (`x - shift` is exact in f64 here) rounded to f32, per tier.
#[test]
fn f32_shifted_exp_within_one_ulp() {
    let mut rng = Rng(5);
    let mut shifts = vec![0.0f32, -0.0, 0.3, -0.7, 1.0, 5.5, -17.25, 100.1, 1000.37, -9999.9, 65535.0, 65536.0, 3.0e7];
    shifts.extend((0..6).map(|_| rng.range(-3.0, 3.0).exp2() as f32));
    shifts.extend((0..6).map(|_| -rng.range(-10.0, 16.0).exp2() as f32));
    for TestTier { name, k, .. } in tiers_f32() {
        let (mut hist, mut worst) = ([0u64; 4], 0.0f64);
        for &s in &shifts {
            let step = if s.abs() < 2.0 { 97 * 17 } else { 9973 };
            let mut z: Vec<f32> = f32_range(-0.0, -110.0, step).into_iter().map(|d| s + d).collect();
            // Small |x| with the shift anywhere: where `x - N LN2_HI` may round.
            z.extend((0..2000).map(|_| rng.range(-1.0, 1.0) as f32).filter(|&x| x <= s));
            z.push(s);
            let mut out = vec![0.0f32; z.len()];
            (k.exp_scaled)(&z, s, 1.0, &mut out);
            for (&x, &got) in z.iter().zip(&out) {
                let want = (x as f64 - s as f64).exp();
                let d = ulps32(got, want as f32);
                hist[(d as usize).min(3)] += 1;
                worst = worst.max(ulp_error32(got, want));
                assert!(d <= 1, "{}: exp({x} - {s}) = {got}, want {want}", name);
            }
        }
        println!("{}: shifted f32 exp: ulps to the rounded reference {hist:?}, error {worst:.3} ulp", name);
        assert!(worst < 1.5, "{}: {worst} ulp", name);
    }
}

/// `f32_shifted_exp_within_one_ulp` on 400 random shifts (both signs, magnitudes 2^-3 to
/// 2^16) and about 57 million points, the figure the module docs give:
/// `cargo test --release --lib -- --ignored exhaustive`.
#[test]
#[ignore = "exhaustive: seconds in release mode, long in debug"]
fn exhaustive_f32_shifted_exp_over_400_shifts() {
    use rayon::prelude::*;
    let shifts: Vec<f32> = {
        let mut rng = Rng(9);
        (0..400).map(|i| (rng.range(-3.0, 16.0).exp2() * if i % 2 == 0 { 1.0 } else { -1.0 }) as f32).collect()
    };
    for TestTier { name, k, .. } in tiers_f32() {
        let (points, ulp1, worst) = shifts
            .par_iter()
            .map(|&s| {
                let mut rng = Rng(s.to_bits() as u64 | 1);
                let mut z: Vec<f32> = f32_range(-0.0, -110.0, 8009).into_iter().map(|d| s + d).collect();
                z.extend((0..4000).map(|_| rng.range(-1.0, 1.0) as f32).filter(|&x| x <= s));
                let mut out = vec![0.0f32; z.len()];
                (k.exp_scaled)(&z, s, 1.0, &mut out);
                z.iter().zip(&out).fold((z.len(), 0usize, 0.0f64), |(n, u, w), (&x, &got)| {
                    let want = (x as f64 - s as f64).exp();
                    let d = ulps32(got, want as f32);
                    assert!(d <= 1, "{name}: exp({x} - {s}) = {got}, want {want}");
                    (n, u + (d == 1) as usize, w.max(ulp_error32(got, want)))
                })
            })
            .reduce(|| (0, 0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2.max(b.2)));
        println!("exhaustive: {name}: shifted f32 exp over 400 shifts, {points} points: {ulp1} one ulp from the rounded reference, error {worst:.3} ulp");
        assert!(worst < 1.5, "{name}: {worst} ulp");
    }
}

/// The f64 twin of `f32_shifted_exp_within_one_ulp`, on a random sample, against `std`'s
/// `exp(d) (1 + err)` (`d + err = x - shift` exactly, by TwoSum).
#[test]
fn f64_shifted_exp_within_one_ulp_of_std() {
    let mut rng = Rng(6);
    let mut shifts = vec![0.0f64, 0.3, -0.7, 1.0, 5.5, -17.25, 100.1, 1000.37, -9999.9, 524_287.0, 524_288.0, 3.0e12];
    shifts.extend((0..6).map(|_| rng.range(-3.0, 3.0).exp2()));
    shifts.extend((0..6).map(|_| -rng.range(-10.0, 19.0).exp2()));
    for TestTier { name, k, .. } in tiers_f64() {
        let mut hist = [0u64; 4];
        for &s in &shifts {
            let mut z: Vec<f64> = (0..40_000).map(|_| s + rng.range(-750.0, 0.0)).collect();
            z.extend((0..20_000).map(|_| s - rng.range(-40.0, 3.0).exp2()));
            z.extend((0..5_000).map(|_| rng.range(-1.0, 1.0)).filter(|&x| x <= s));
            z.push(s);
            let mut out = vec![0.0; z.len()];
            (k.exp_scaled)(&z, s, 1.0, &mut out);
            for (&x, &got) in z.iter().zip(&out) {
                let (d, err) = scalar::two_diff(x, s);
                let want = d.exp() + d.exp() * err;
                let u = ulps64(got, want);
                hist[(u as usize).min(3)] += 1;
                assert!(u <= 1, "{}: exp({x} - {s}) = {got}, want {want}", name);
            }
        }
        println!("{}: shifted f64 exp ulp histogram (vs std) {hist:?}", name);
    }
}

/// `exp_scaled` outside its contract (`z_j > shift`), up to overflow: the same bounds, +inf
/// where `exp(z_j - shift)` itself overflows (it is scaled after).
#[test]
fn exp_scaled_takes_positive_arguments() {
    let mut rng = Rng(8);
    for shift in [0.0f64, -50.0, 3.25, -1000.0, 1.0e6] {
        let mut z: Vec<f64> = (0..3000).map(|_| shift + rng.range(-120.0, 100.0)).collect();
        z.extend([
            shift + 88.7,
            shift + 88.8,
            shift + 709.7,
            shift + 709.8,
            f64::INFINITY,
            f64::NAN,
            f64::NEG_INFINITY,
        ]);
        let z32: Vec<f32> = z.iter().map(|&x| x as f32).collect();
        let s32 = shift as f32;
        for TestTier { name, k, .. } in tiers_f32() {
            let mut out = vec![0.0f32; z32.len()];
            (k.exp_scaled)(&z32, s32, 0.5, &mut out);
            for (&x, &got) in z32.iter().zip(&out) {
                let e = (x as f64 - s32 as f64).exp();
                let want = if e as f32 == f32::INFINITY { e } else { e * 0.5 };
                assert!(ulps32(got, want as f32) <= 2, "{}: exp({x} - {s32}) / 2 = {got}, want {want}", name);
            }
        }
        for TestTier { name, k, .. } in tiers_f64() {
            let mut out = vec![0.0f64; z.len()];
            (k.exp_scaled)(&z, shift, 0.5, &mut out);
            for (&x, &got) in z.iter().zip(&out) {
                let (d, err) = scalar::two_diff(x, shift);
                let e = if d.exp().is_finite() { d.exp() + d.exp() * err } else { d.exp() };
                let want = if e.is_infinite() { e } else { e * 0.5 };
                assert!(ulps64(got, want) <= 2, "{}: exp({x} - {shift}) / 2 = {got}, want {want}", name);
            }
        }
    }
}

/// Masked logits (-inf) and logits far below the shift contribute exactly 0 to `sum_exp` and
/// give exactly 0 from `exp_scaled`, whatever the scale: a kernel that scales its exps up on
/// the way (AVX2) must not turn their underflow into tiny non-zero values.
#[test]
fn masked_and_far_logits_give_exact_zeros() {
    fn check<F: super::ExpConsts>(k: &RowKernels<F>, name: &str, scales: &[f64]) {
        // (A shift of 1e6 takes the compensated reduction, beyond SPLIT_LIMIT.)
        for shift in [0.0, 1.0e6] {
            let mut z = vec![F::from_f64(shift)];
            let far = |i: usize| F::from_f64(shift - 3000.0 - i as f64);
            z.extend((0..3000).map(|i| if i % 3 == 0 { far(i) } else { F::neg_infinity() }));
            let what = format!("{name}, shift {shift}");
            assert_eq!((k.sum_exp)(&z[1..], z[0], NO_SKIP, Ahead::NONE), 0.0, "{what}: sum_exp");
            assert_eq!((k.sum_exp)(&z, z[0], NO_SKIP, Ahead::NONE), 1.0, "{what}: sum_exp");
            assert_eq!((k.sum_exp)(&z, z[0], 0, Ahead::NONE), 0.0, "{what}: sum_exp skipping the maximum");
            for &scale in scales {
                let mut out = vec![F::nan(); z.len()];
                (k.exp_scaled)(&z, z[0], F::from_f64(scale), &mut out);
                assert_eq!(crate::kernels::Float::to_f64(out[0]), F::from_f64(scale).to_f64(), "{what}: scale {scale}");
                assert!(out[1..].iter().all(|&o| o == F::zero()), "{what}: scale {scale}: {:?}", &out[1..9]);
            }
        }
    }
    for t in tiers_f32() {
        check(t.k, t.name, &[1.0, 1.0e3, 1.0e20, 3.0e38]);
    }
    for t in tiers_f64() {
        check(t.k, t.name, &[1.0, 1.0e3, 1.0e100, 1.0e300]);
    }
}

/// The streamed `exp_scaled` writes the same bits as the plain one, whatever the output's
/// alignment and length (its head and tail go through the plain stores), also where some
/// arguments are above the shift (outside the contract) and results are subnormal: each
/// element's bits depend on its own argument only.
#[test]
fn exp_scaled_stream_matches_exp_scaled() {
    fn check<F: super::ExpConsts>(k: &RowKernels<F>, name: &str) {
        // Exps down into the subnormals (and below), scaled up.
        let wide = if F::epsilon() > F::from_f64(1e-10) { 1.1 } else { 7.4 };
        for (above, spread, scale) in [(0.0, 0.21, 0.75), (12.0, 0.21, 0.75), (12.0, wide, 1000.0)] {
            let scale = F::from_f64(scale);
            // (Every 97th element `above` higher: the shift's side differs within vectors.)
            let x = |i: usize| if i % 97 == 3 { above } else { 0.0 } - ((i * 37 % 101) as f64) * spread;
            let z: Vec<F> = (0..300).map(|i| F::from_f64(x(i))).collect();
            let shift = F::from_f64(0.5);
            for len in [0, 1, 7, 15, 16, 17, 31, 33, 64, 100, 255, 256, 280] {
                for offset in 0..16 {
                    let mut plain = [F::zero(); 300];
                    let mut streamed = [F::zero(); 300];
                    (k.exp_scaled)(&z[..len], shift, scale, &mut plain[offset..offset + len]);
                    (k.exp_scaled_stream)(&z[..len], shift, scale, &mut streamed[offset..offset + len]);
                    let same = plain.iter().zip(&streamed).all(|(a, b)| {
                        crate::kernels::Float::to_f64(*a).to_bits() == crate::kernels::Float::to_f64(*b).to_bits()
                    });
                    assert!(same, "{name}: length {len}, offset {offset}, above {above}");
                }
            }
        }
    }
    for t in tiers_f32() {
        check(t.k, t.name);
    }
    for t in tiers_f64() {
        check(t.k, t.name);
    }
}

/// `exp_scaled` with a scale above 1 on exps below the normal range (class weights lift tiny
/// probabilities back into it): within 2.5 ulp of float64, not the few bits of an exp rounded
/// to a subnormal first (hundreds of ulp); every f32 tier, both reductions (shifts below and
/// above `SPLIT_LIMIT`).
#[test]
fn exp_scaled_lifts_subnormal_exps_accurately() {
    let mut tiers = vec![("scalar", &scalar::F32)];
    tiers.extend(tiers_f32().into_iter().map(|t| (t.name, t.k)));
    for (name, k) in tiers {
        for shift in [0.0f32, 70_000.0] {
            let z: Vec<f32> = (0..1000).map(|i| shift - 86.0 - 18.0 * (i as f32) / 1000.0).collect();
            for scale in [1.0e3f32, 3.7e5, 1.5e17] {
                let mut out = vec![f32::NAN; z.len()];
                (k.exp_scaled)(&z, shift, scale, &mut out);
                for (&x, &got) in z.iter().zip(&out) {
                    let want = (x as f64 - shift as f64).exp() * scale as f64;
                    let err = ulp_error32(got, want);
                    assert!(err <= 2.5, "{name}: exp({x} - {shift}) * {scale} = {got:e}, want {want:e} ({err} ulp)");
                }
            }
        }
    }
}

/// Runs the checks on every tier this CPU has, the scalar one included.
fn on_every_tier(check32: fn(&RowKernels<f32>, &str), check64: fn(&RowKernels<f64>, &str)) {
    check32(&scalar::F32, "scalar");
    check64(&scalar::F64, "scalar");
    for t in tiers_f32() {
        check32(t.k, t.name);
    }
    for t in tiers_f64() {
        check64(t.k, t.name);
    }
}

/// `sum_exp_store` returns `sum_exp`'s sum, bit for bit, and stores the terms it summed: the
/// exps of `exp_scaled` with a scale of 1, bit for bit (every tier, the scalar one included).
/// Memory asked for on the way (longer and shorter than the row) changes nothing.
#[test]
fn sum_exp_store_stores_the_terms_it_sums() {
    fn check<F: super::ExpConsts>(k: &RowKernels<F>, name: &str) {
        let bits = |x: F| crate::kernels::Float::to_f64(x).to_bits();
        for z in rows(9) {
            let z: Vec<F> = z.iter().map(|&x| F::from_f64(x)).collect();
            let Some(max) = z.iter().copied().reduce(F::max).filter(|m| m.is_finite()) else { continue };
            if z.iter().any(|x| x.is_nan()) {
                continue;
            }
            for (shift, skip) in [(max, NO_SKIP), (max, z.len() / 3), (max + F::from_f64(0.5), z.len() - 1)] {
                let mut terms = vec![F::nan(); z.len()];
                let sum = (k.sum_exp_store)(&z, shift, skip, &mut terms, Ahead::NONE);
                assert_eq!(
                    sum.to_bits(),
                    (k.sum_exp)(&z, shift, skip, Ahead::NONE).to_bits(),
                    "{name}: sum of {} terms, skipping {skip}",
                    z.len()
                );
                let (long, short) = (vec![0f64; z.len() + 100], [0f32; 3]);
                let ahead = Ahead::NONE.and(&long).and(&short).along(z.len() + 7).part(3..z.len() + 3);
                assert_eq!(sum.to_bits(), (k.sum_exp)(&z, shift, skip, ahead).to_bits(), "{name}: sum asking ahead");
                let mut again = vec![F::nan(); z.len()];
                let with_ahead = (k.sum_exp_store)(&z, shift, skip, &mut again, ahead);
                assert_eq!(sum.to_bits(), with_ahead.to_bits(), "{name}: stored sum asking ahead");
                let mut want = vec![F::nan(); z.len()];
                (k.exp_scaled)(&z, shift, F::one(), &mut want);
                for (j, (&t, &w)) in terms.iter().zip(&want).enumerate() {
                    assert_eq!(bits(t), bits(w), "{name}: term {j} of {}", z.len());
                }
            }
        }
    }
    on_every_tier(check::<f32>, check::<f64>);
}

/// `sum_exp_targets` returns `sum_exp`'s sum (`sum_exp_store`'s, with its terms, where it
/// stores them) and `target_sums`'s sums, each bit for bit (every tier, the scalar one
/// included): the one pass changes no result of the two.
#[test]
fn sum_exp_targets_is_sum_exp_and_target_sums() {
    fn check<F: super::ExpConsts>(k: &RowKernels<F>, name: &str) {
        let bits = |x: F| crate::kernels::Float::to_f64(x).to_bits();
        let mut rng = Rng(11);
        for z in rows(10) {
            let z: Vec<F> = z.iter().map(|&x| F::from_f64(x)).collect();
            let Some(max) = z.iter().copied().reduce(F::max).filter(|m| m.is_finite()) else { continue };
            if z.iter().any(|x| x.is_nan()) {
                continue;
            }
            // Zeros (also on -inf logits), negative and infinite targets among the others.
            let t: Vec<F> = (0..z.len())
                .map(|_| match rng.below(8) {
                    0 | 1 => F::zero(),
                    2 => F::from_f64(-0.25),
                    3 if z.len().is_multiple_of(5) => F::infinity(),
                    _ => F::from_f64(rng.unit()),
                })
                .collect();
            let (long, short) = (vec![0f64; z.len() + 100], [0f32; 3]);
            let ahead = Ahead::NONE.and(&long).and(&short).along(z.len() + 7);
            let (want_sums, want_gap) = (k.target_sums)(&t, &z, max);
            for skip in [NO_SKIP, z.len() / 3, z.len() - 1] {
                let what = || format!("{name}: {} elements, skipping {skip}", z.len());
                let want = (k.sum_exp)(&z, max, skip, Ahead::NONE);
                let (sum, (sums, gap)) = (k.sum_exp_targets)(&z, max, skip, &t, None, ahead);
                assert_eq!(sum.to_bits(), want.to_bits(), "sum {}", what());
                assert_eq!((bits(sums), bits(gap)), (bits(want_sums), bits(want_gap)), "target sums {}", what());
                let (mut terms, mut want_terms) = (vec![F::nan(); z.len()], vec![F::nan(); z.len()]);
                (k.sum_exp_store)(&z, max, skip, &mut want_terms, Ahead::NONE);
                let (sum, (sums, gap)) = (k.sum_exp_targets)(&z, max, skip, &t, Some(&mut terms), Ahead::NONE);
                assert_eq!(sum.to_bits(), want.to_bits(), "stored sum {}", what());
                assert_eq!((bits(sums), bits(gap)), (bits(want_sums), bits(want_gap)), "stored target sums {}", what());
                for (j, (&e, &w)) in terms.iter().zip(&want_terms).enumerate() {
                    assert_eq!(bits(e), bits(w), "term {j} {}", what());
                }
            }
        }
    }
    on_every_tier(check::<f32>, check::<f64>);
}

/// `target_sums` of rows whose targets are all equal (smoothed one-hot labels, the label's
/// own left out), half of their logits masked to -1e4: the worst case of a plain running
/// sum. Both sums within `2ε` (two ulp at most) of the sums of the kernel's own terms, `t`
/// and `t (max - z)` rounded as the kernel rounds them, added up exactly (every tier, the
/// scalar one included), in rows up to two blocks of the rows' sums long (32768).
#[test]
fn target_sums_of_equal_terms_within_two_ulp() {
    fn check<F: super::ExpConsts>(k: &RowKernels<F>, name: &str) {
        let mut rng = Rng(5);
        for n in [1, 5, 127, 128, 129, 500, 1000, 1024, 4095, 4096, 8192, 16383, 16384, 32768] {
            let z: Vec<F> = (0..n).map(|j| F::from_f64(if j % 2 == 0 { -1e4 } else { rng.range(-2.0, 2.0) })).collect();
            let max = z.iter().copied().fold(F::neg_infinity(), F::max);
            let t = vec![F::from_f64(0.1) / F::from_f64(1024.0); n];
            let exact = |terms: &mut dyn Iterator<Item = F>| {
                let mut sum = crate::kernels::CompensatedSum::<f64>::default();
                terms.for_each(|x| sum.add(x.to_f64()));
                sum.value()
            };
            let want_sum = exact(&mut t.iter().copied());
            let want_gap = exact(&mut t.iter().zip(&z).map(|(&t, &x)| t * (max - x)));
            let (sum, gap) = (k.target_sums)(&t, &z, max);
            for (got, want, what) in [(sum, want_sum, "sum"), (gap, want_gap, "gap")] {
                let error = (got.to_f64() - want).abs();
                let ulps = error / (F::epsilon().to_f64() * want.abs());
                assert!(
                    error <= 2.0 * F::epsilon().to_f64() * want.abs(),
                    "{name}: {what} of {n}: {got:?} against {want}, {ulps:.2} ε"
                );
            }
        }
    }
    on_every_tier(check::<f32>, check::<f64>);
}

/// A tier's kernels over half-type rows as stored, with its f32 kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) struct StoredTier {
    pub name: &'static str,
    pub k: &'static RowKernels<f32>,
    /// The tier's f32 tile statistics (see `crate::kernels::lanes::tile_stats`).
    pub tile_stats: TileStatsFn,
    pub f16: Option<&'static StoredKernels<half::f16, f32>>,
    pub bf16: &'static StoredKernels<half::bf16, f32>,
}

/// Reading half types as stored gives the bits of the f32 kernels on the widened rows: the
/// maximum, its index (also as `widen_max_argmax` widens), the sums, the widened values
/// themselves, the scaled exps (rounded to the half type as stored), from the stored row and
/// from the widened one, and the scaled kept exps rounded.
#[cfg(target_arch = "x86_64")]
#[test]
fn stored_half_kernels_match_the_f32_kernels_on_widened_rows() {
    fn check<S: Copy + std::fmt::Debug>(
        name: &str,
        k: &RowKernels<f32>,
        s: &StoredKernels<S, f32>,
        from: impl Fn(f64) -> S,
        round: impl Fn(f32) -> S,
        to: impl Fn(S) -> f32,
    ) {
        for z in rows(5) {
            let stored: Vec<S> = z.iter().map(|&x| from(x)).collect();
            let wide: Vec<f32> = stored.iter().map(|&x| to(x)).collect();
            let mut widened = vec![f32::NAN; wide.len()];
            (s.widen)(&stored, &mut widened);
            assert!(widened.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} widen {stored:?}");
            if z.is_empty() {
                continue;
            }
            let (m, j) = (s.max_argmax)(&stored);
            let (want_m, want_j) = (k.max_argmax)(&wide);
            assert!(m.to_bits() == want_m.to_bits() || (m.is_nan() && want_m.is_nan()), "{name} max {stored:?}");
            assert_eq!(j, want_j, "{name} argmax {stored:?}");
            let mut widened = vec![f32::NAN; wide.len()];
            let (m, j) = (s.widen_max_argmax)(&stored, &mut widened);
            assert!(widened.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} widen_max {stored:?}");
            assert!(m.to_bits() == want_m.to_bits() || (m.is_nan() && want_m.is_nan()), "{name} widen_max {stored:?}");
            assert_eq!(j, want_j, "{name} widen_max argmax {stored:?}");
            if m.is_finite() {
                for (shift, skip) in [(m, j), (m + 1.5, NO_SKIP), (0.0f32.max(m), wide.len() - 1)] {
                    let (got, want) =
                        ((s.sum_exp)(&stored, shift, skip, Ahead::NONE), (k.sum_exp)(&wide, shift, skip, Ahead::NONE));
                    assert_eq!(got.to_bits(), want.to_bits(), "{name} sum_exp (shift {shift}) {stored:?}");
                    // (Kept exps, as the widened rows keep them, for `scale_narrow`.)
                    let mut wide_terms = vec![f32::NAN; wide.len()];
                    (k.sum_exp_store)(&wide, shift, skip, &mut wide_terms, Ahead::NONE);
                    for scale in [1.0, 0.37, 1e3, 3e-30] {
                        let mut wide_out = vec![f32::NAN; wide.len()];
                        (k.scale)(&wide_terms, scale, &mut wide_out);
                        let mut got = vec![from(f64::NAN); wide.len()];
                        (s.scale_narrow)(&wide_terms, scale, &mut got);
                        for (j, (&g, &w)) in got.iter().zip(&wide_out).enumerate() {
                            assert_eq!(to(g).to_bits(), to(round(w)).to_bits(), "{name} scale_narrow {scale} at {j}");
                        }
                        let mut wide_out = vec![f32::NAN; wide.len()];
                        (k.exp_scaled)(&wide, shift, scale, &mut wide_out);
                        let mut got = vec![from(f64::NAN); wide.len()];
                        (s.exp_scaled)(&stored, shift, scale, &mut got);
                        let mut got_narrowed = vec![from(f64::NAN); wide.len()];
                        (s.exp_scaled_narrow)(&wide, shift, scale, &mut got_narrowed);
                        for (j, ((&g, &gn), &w)) in got.iter().zip(&got_narrowed).zip(&wide_out).enumerate() {
                            let want = to(round(w));
                            assert_eq!(to(g).to_bits(), want.to_bits(), "{name} exp_scaled {shift} {scale} at {j}");
                            assert_eq!(
                                to(gn).to_bits(),
                                want.to_bits(),
                                "{name} exp_scaled_narrow {shift} {scale} at {j}"
                            );
                        }
                    }
                }
            }
        }
    }
    for t in crate::kernels::x86::test_stored_tiers() {
        check(t.name, t.k, t.bf16, half::bf16::from_f64, half::bf16::from_f32, half::bf16::to_f32);
        if let Some(f16) = t.f16 {
            check(t.name, t.k, f16, half::f16::from_f64, half::f16::from_f32, half::f16::to_f32);
        }
    }
}

/// The stored half kernels' maximum, taken on the bits, is the f32 kernel's on the widened
/// rows: every one-element row; rows of every length up to 140 and across blocks, of random
/// bits without NaNs, and of random bits and special values (NaNs, infinities, zeros and the
/// smallest subnormals, of either sign) mixed in at several rates; the same with the
/// negative values only; rows of -inf; rows of zeros of either sign; and a larger value, a
/// tie, a zero of the other sign or a NaN in a later block.
#[cfg(target_arch = "x86_64")]
#[test]
fn stored_half_max_argmax_on_any_bits() {
    fn check<S: Copy + std::fmt::Debug>(
        name: &str,
        k: &RowKernels<f32>,
        s: &StoredKernels<S, f32>,
        of_bits: impl Fn(u16) -> S,
        to: impl Fn(S) -> f32,
        bits_of: impl Fn(f32) -> u16,
    ) {
        let inf = bits_of(f32::INFINITY);
        let special = [inf | 1, inf | 0x8001, inf | 0x7f, 0xffff, inf, inf | 0x8000, 0, 0x8000, 1, 0x8001];
        let mut rng = Rng(17);
        let mut rows: Vec<Vec<u16>> = (0..=u16::MAX).map(|b| vec![b]).collect();
        for n in (1..140).chain([1000, 2047, 2049, 4097]) {
            // Random bits but NaNs, or with probability `rate` a special value.
            let mut draw = |rate: f64| loop {
                if rng.unit() < rate {
                    break special[rng.below(special.len())];
                }
                let b = rng.next() as u16;
                if !to(of_bits(b)).is_nan() {
                    break b;
                }
            };
            for rate in [0.0, 1.0 / n as f64, 0.3, 1.0] {
                let row: Vec<u16> = (0..n).map(|_| draw(rate)).collect();
                rows.push(row.iter().map(|b| b | 0x8000).collect());
                rows.push(row);
            }
            rows.push(vec![inf | 0x8000; n]);
            rows.push((0..n).map(|_| rng.next() as u16 & 0x8000).collect());
        }
        let [two, three, zero, neg_zero, half, minus_one] = [2.0, 3.0, 0.0, -0.0, 0.5, -1.0].map(&bits_of);
        let (nan, neg_nan) = (inf | 1, 0xffff);
        assert!(special[..4].iter().all(|&b| to(of_bits(b)).is_nan()) && to(of_bits(1)) > 0.0);
        for n in [2049, 4097, 6200] {
            for (p1, p2, v1, v2) in [
                (5, 2051, two, two),
                (2047, 2048, two, two),
                (7, 4096, two, three),
                (4095, 4096, three, two),
                (30, 5000, neg_zero, zero),
                (2100, 2200, zero, neg_zero),
                (3, 4099, two, neg_nan),
                (3, 2050, neg_zero, nan),
            ] {
                if p2 < n {
                    let fill = if v1 & 0x7fff == 0 { minus_one } else { half };
                    let mut z = vec![fill; n];
                    (z[p1], z[p2]) = (v1, v2);
                    rows.push(z);
                }
            }
        }
        for bits in rows {
            let stored: Vec<S> = bits.iter().map(|&b| of_bits(b)).collect();
            let wide: Vec<f32> = stored.iter().map(|&x| to(x)).collect();
            let (m, j) = (s.max_argmax)(&stored);
            let (want_m, want_j) = (k.max_argmax)(&wide);
            let same = m.to_bits() == want_m.to_bits() || (m.is_nan() && want_m.is_nan());
            assert!(same && j == want_j, "{name}: ({m}, {j}) against ({want_m}, {want_j}) on {bits:x?}");
        }
    }
    for t in crate::kernels::x86::test_stored_tiers() {
        let bf16_bits = |x| half::bf16::from_f32(x).to_bits();
        check(t.name, t.k, t.bf16, half::bf16::from_bits, half::bf16::to_f32, bf16_bits);
        if let Some(f16) = t.f16 {
            check(t.name, t.k, f16, half::f16::from_bits, half::f16::to_f32, |x| half::f16::from_f32(x).to_bits());
        }
    }
}

/// A tile of half-type rows read as stored gives the sparse losses of the tier's f32 tile on the
/// widened rows, bit for bit, and the same verdict on whether they are plain: for every width
/// the tiles take, with NaN, +inf, rows of -inf, confident rows and ignored labels.
#[cfg(target_arch = "x86_64")]
#[test]
fn stored_half_tiles_match_the_f32_tiles_on_widened_rows() {
    fn check<S: Copy + std::fmt::Debug>(
        t: &StoredTier,
        s: &StoredKernels<S, f32>,
        from: impl Fn(f32) -> S,
        to: impl Fn(S) -> f32,
    ) {
        for classes in 1..=MAX_CLASSES {
            for seed in 0..3 {
                let mut z: Vec<f32> =
                    (0..LANES * classes).map(|i| ((i * 37 + seed * 11) % 101) as f32 * 0.37 - 20.0).collect();
                let row = |r: usize| r * classes..(r + 1) * classes;
                if seed == 1 {
                    z[row(2)].fill(f32::NEG_INFINITY);
                    z[row(5).start] = 100.0; // (A confident row, not plain: its rest is ~e^-83.)
                    z[row(9).end - 1] = f32::INFINITY;
                    z[row(15).end - 1] = f32::NAN;
                }
                if seed == 2 {
                    z[row(4).start] = f32::NAN;
                }
                let stored: Vec<S> = z.iter().map(|&x| from(x)).collect();
                let wide: Vec<f32> = stored.iter().map(|&x| to(x)).collect();
                let labels: [usize; LANES] = std::array::from_fn(|r| (r * 7 + seed) % (classes + 1));
                let mut tile = TileStats::default();
                // SAFETY: the tier runs on this CPU (`test_stored_tiers`); a tile of rows.
                unsafe { (t.tile_stats)(&wide, classes, &mut tile, None, None) };
                let mut want = [f32::NAN; LANES];
                let want_plain = tile.sparse_losses(classes, &labels, |r, j| wide[r * classes + j], &mut want);
                let mut got = [f32::NAN; LANES];
                let got_plain = (s.tile_sparse_losses)(&stored, classes, &labels, &mut got);
                let name = format!("{} {classes} classes, seed {seed}", t.name);
                assert_eq!(got_plain, want_plain, "{name}: plain");
                for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                    let counted = labels[r] < classes && tile.row(r).is_plain();
                    assert!(!counted || g.to_bits() == w.to_bits(), "{name}, row {r}: {g} against {w}");
                }
            }
        }
    }
    for t in crate::kernels::x86::test_stored_tiers() {
        check(&t, t.bf16, half::bf16::from_f32, half::bf16::to_f32);
        if let Some(f16) = t.f16 {
            check(&t, f16, half::f16::from_f32, half::f16::to_f32);
        }
    }
}

/// The half-type kernels that stream their stores write the bits of the plain ones, whatever
/// the output's alignment (to 64 bytes: 32 half-type elements) and length, and nothing outside
/// the output; `exp_scaled` also with a shift beyond `SPLIT_LIMIT` (bfloat16 only: float16
/// cannot hold one).
#[cfg(target_arch = "x86_64")]
#[test]
fn stored_half_streams_match_plain_stores() {
    fn check<S: Copy + PartialEq + std::fmt::Debug>(
        name: &str,
        s: &StoredKernels<S, f32>,
        from: impl Fn(f64) -> S,
        to: impl Fn(S) -> f32,
    ) {
        let sentinel = from(-1.0); // (No result is negative.)
        let wide: Vec<f32> =
            (0..300).map(|i| -((i * 37 % 101) as f32) * 0.21 + if i % 97 == 3 { 2.0 } else { 0.0 }).collect();
        for len in [0, 1, 7, 15, 16, 17, 31, 33, 64, 100, 129, 255, 256, 268] {
            for offset in 0..32 {
                let outputs = |f: &dyn Fn(&mut [S])| {
                    let mut out = [sentinel; 300];
                    f(&mut out[offset..offset + len]);
                    let outside = out[..offset].iter().chain(&out[offset + len..]);
                    assert!(outside.into_iter().all(|&x| x == sentinel), "{name}: a store outside the output");
                    out
                };
                // (Far from 0, the stored logits are coarse: their exps are 0, 0.75 or inf.)
                for (shift, spread) in [(0.5f32, 1.0f32), (70_144.0, 300.0)] {
                    if !to(from(shift as f64)).is_finite() {
                        continue;
                    }
                    let stored: Vec<S> = wide.iter().map(|&x| from((shift + x * spread) as f64)).collect();
                    let plain = outputs(&|o| (s.exp_scaled)(&stored[..len], shift, 0.75, o));
                    let streamed = outputs(&|o| (s.exp_scaled_stream)(&stored[..len], shift, 0.75, o));
                    assert_eq!(plain, streamed, "{name} exp_scaled (shift {shift}): length {len}, offset {offset}");
                }
                let plain = outputs(&|o| (s.exp_scaled_narrow)(&wide[..len], 0.5, 0.75, o));
                let streamed = outputs(&|o| (s.exp_scaled_narrow_stream)(&wide[..len], 0.5, 0.75, o));
                assert_eq!(plain, streamed, "{name} exp_scaled_narrow: length {len}, offset {offset}");
                let plain = outputs(&|o| (s.scale_narrow)(&wide[..len], 0.75, o));
                let streamed = outputs(&|o| (s.scale_narrow_stream)(&wide[..len], 0.75, o));
                assert_eq!(plain, streamed, "{name} scale_narrow: length {len}, offset {offset}");
            }
        }
    }
    for t in crate::kernels::x86::test_stored_tiers() {
        check(t.name, t.bf16, half::bf16::from_f64, half::bf16::to_f32);
        if let Some(f16) = t.f16 {
            check(t.name, f16, half::f16::from_f64, half::f16::to_f32);
        }
    }
}

/// Rounding to half types as stored gives `half`'s correctly rounded values: every 997th f32
/// bit pattern (all exponents, signs, NaNs, subnormals and overflows), at every offset into
/// the vectors and the tails.
#[cfg(target_arch = "x86_64")]
#[test]
fn stored_half_kernels_round_as_half_does() {
    fn check<S: Copy + std::fmt::Debug>(
        name: &str,
        s: &StoredKernels<S, f32>,
        want: impl Fn(f32) -> S,
        bits: impl Fn(S) -> u16,
        is_nan: impl Fn(S) -> bool,
    ) {
        let mut xs: Vec<f32> = (0..=u32::MAX).step_by(997).map(f32::from_bits).collect();
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            65520.0,
            65519.99,
            5.9604645e-8,
            2.9802322e-8,
        ]);
        for offset in [0, 1, 7, 15] {
            let src = &xs[offset..];
            let mut got = vec![want(1.0); src.len()];
            (s.narrow)(src, &mut got);
            for (&x, &g) in src.iter().zip(&got) {
                let w = want(x);
                let same = bits(g) == bits(w) || (x.is_nan() && is_nan(g));
                assert!(same, "{name}: {x:e} rounded to {g:?}, expected {w:?}");
            }
        }
    }
    for t in crate::kernels::x86::test_stored_tiers() {
        // (bfloat16 NaNs keep their payload, quieted, as `half` does: their bits are compared.)
        check(t.name, t.bf16, half::bf16::from_f32, half::bf16::to_bits, |_| false);
        if let Some(f16) = t.f16 {
            check(t.name, f16, half::f16::from_f32, half::f16::to_bits, |h| h.is_nan());
        }
    }
}
