//! The x86-64 SIMD tiers, hand-written with `std::arch` intrinsics: AVX-512F (16 f32 / 8 f64
//! lanes, `vscalefps/pd` for `2^n`, masked tails) and AVX2+FMA (8 f32 / 4 f64 lanes, `2^n`
//! from exponent bits, `vmaskmov` tails). The kernels themselves are written once
//! in `super::simd`; this file gives them their vectors and wraps them in
//! `#[target_feature]` functions, reachable only through the tables below, which
//! `dispatch::kernels_f32`/`kernels_f64` hand out when `dispatch::tier()` says the CPU has the
//! features.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use half::{bf16, f16};

use crate::element::Element;

use super::lanes::{Column, TileStats, LANES, MAX_CLASSES};
use super::simd::{self, Bf16Bits, ExpConsts, F16Bits, Plain, Storage, Vector};
use super::{Ahead, RowKernels, StoredKernels};
use crate::dispatch::Tier;

/// The mask of the first `n` (< 64) lanes.
#[inline(always)]
fn first_lanes(n: usize) -> u64 {
    (1u64 << n) - 1
}

// ---- AVX-512F ----

/// `2^(j/16)` rounded to f32 (bits), `j` = 0..16: the table of the AVX-512 exps.
#[rustfmt::skip]
const EXP2_SIXTEENTHS: [u32; 16] = [
    0x3f80_0000, 0x3f85_aac3, 0x3f8b_95c2, 0x3f91_c3d3, 0x3f98_37f0, 0x3f9e_f532, 0x3fa5_fed7, 0x3fad_583f,
    0x3fb5_04f3, 0x3fbd_08a4, 0x3fc5_672a, 0x3fce_248c, 0x3fd7_44fd, 0x3fe0_ccdf, 0x3fea_c0c7, 0x3ff5_257d,
];

/// The body of the AVX-512 and AVX2 `columns` (their intrinsics differ only in width): four
/// columns at a time, from four loads `rows(z, classes, readable, r, j)` (r = 0..4), each
/// holding elements `j .. j + 4` of a row per 128-bit lane, then a 4x4 transpose in each lane
/// by eight shuffles; lane `l` of column `j + k` is then element `j + k` of row `l`.
macro_rules! transposed_columns {
    ($z:ident, $classes:ident, $readable:ident, $cols:ident, $rows:ident, $unpacklo:ident, $unpackhi:ident, $shuffle:ident) => {
        for j in (0..$classes).step_by(4) {
            let a = $rows($z, $classes, $readable, 0, j);
            let b = $rows($z, $classes, $readable, 1, j);
            let c = $rows($z, $classes, $readable, 2, j);
            let d = $rows($z, $classes, $readable, 3, j);
            let (ab_lo, ab_hi) = ($unpacklo(a, b), $unpackhi(a, b));
            let (cd_lo, cd_hi) = ($unpacklo(c, d), $unpackhi(c, d));
            let four = [
                $shuffle::<0x44>(ab_lo, cd_lo),
                $shuffle::<0xee>(ab_lo, cd_lo),
                $shuffle::<0x44>(ab_hi, cd_hi),
                $shuffle::<0xee>(ab_hi, cd_hi),
            ];
            for (k, col) in four.into_iter().enumerate().take($classes - j) {
                $cols[j + k].write(col);
            }
        }
    };
}

unsafe impl Vector for __m512 {
    type E = f32;
    const N: usize = 16;
    const CHEAP_FULL: bool = true;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> Self {
        // Masked-off lanes are not read (no fault past the end of the slice).
        _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(n) as __mmask16, p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: Self) {
        _mm512_mask_storeu_ps(p, first_lanes(n) as __mmask16, v)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fnmadd_ps(a, b, c)
    }
    // x86 max and min return their second operand where either is NaN.
    #[inline(always)]
    unsafe fn max_nan(lo: Self, x: Self) -> Self {
        _mm512_max_ps(lo, x)
    }
    #[inline(always)]
    unsafe fn min_nan(hi: Self, x: Self) -> Self {
        _mm512_min_ps(hi, x)
    }
    #[inline(always)]
    unsafe fn max_num(x: Self, m: Self) -> Self {
        _mm512_max_ps(x, m)
    }
    #[inline(always)]
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, _t: Self) -> Self {
        // Exact scaling with one rounding, into the subnormals or to inf if it must.
        _mm512_scalef_ps(p, n)
    }
    const EXP_TABLE: bool = true;
    #[inline(always)]
    unsafe fn exp2_sixteenths(r: Self, n16: Self, t: Self) -> (Self, Self) {
        // e^r - 1 = r (1 + r (c2 + r c3)), minimax on |r| <= 1.3 ln2/32 (relative error of
        // e^r 4.6e-9); 2^(j/16) e^r = T_j + T_j (e^r - 1), rounded once. (A second lookup, for the
        // rounding error of T_j, made sum_exp 11% slower.)
        let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
        let q = _mm512_fmadd_ps(_mm512_fmadd_ps(c(0x3e2a_aae4), r, c(0x3f00_01ca)), r, _mm512_set1_ps(1.0));
        let em1 = _mm512_mul_ps(r, q);
        let table = _mm512_castsi512_ps(_mm512_loadu_si512(EXP2_SIXTEENTHS.as_ptr().cast()));
        let t_j = _mm512_permutexvar_ps(_mm512_castps_si512(t), table);
        // `ldexp` (vscalefps) scales by 2^floor(n): floor(n16 / 16), the rest being in `T_j`.
        (_mm512_fmadd_ps(t_j, em1, t_j), _mm512_mul_ps(n16, _mm512_set1_ps(1.0 / 16.0)))
    }
    #[inline(always)]
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self {
        let t = _mm512_fmadd_ps(e, err, e);
        _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t, t), e)
    }
    #[inline(always)]
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self {
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(t, _mm512_setzero_ps());
        _mm512_mask3_fmadd_ps(t, d, acc, nonzero)
    }
    #[inline(always)]
    unsafe fn unord_mask(a: Self, b: Self) -> u64 {
        _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b) as u64
    }
    #[inline(always)]
    unsafe fn eq_mask(a: Self, b: Self) -> u64 {
        _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) as u64
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b) as u64
    }
    #[inline(always)]
    unsafe fn hmax(v: Self) -> f32 {
        _mm512_reduce_max_ps(v)
    }
    #[inline(always)]
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self {
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b), f, t)
    }
    #[inline(always)]
    unsafe fn columns(z: *const f32, classes: usize, readable: usize, cols: &mut [MaybeUninit<Self>; MAX_CLASSES]) {
        // Four rows to a vector, one per 128-bit lane (see `transposed_columns!`).
        debug_assert!(readable >= 16 * classes);
        transposed_columns!(
            z,
            classes,
            readable,
            cols,
            row_quad,
            _mm512_unpacklo_ps,
            _mm512_unpackhi_ps,
            _mm512_shuffle_ps
        );
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f32, v: Self) {
        _mm512_stream_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fence() {
        _mm_sfence()
    }
}

unsafe impl Vector for __m512d {
    type E = f64;
    const N: usize = 8;
    const CHEAP_FULL: bool = true;
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        _mm512_set1_pd(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        _mm512_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f64, n: usize, fill: f64) -> Self {
        _mm512_mask_loadu_pd(_mm512_set1_pd(fill), first_lanes(n) as __mmask8, p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self) {
        _mm512_storeu_pd(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f64, n: usize, v: Self) {
        _mm512_mask_storeu_pd(p, first_lanes(n) as __mmask8, v)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        _mm512_sub_pd(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm512_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_pd(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fnmadd_pd(a, b, c)
    }
    // x86 max and min return their second operand where either is NaN.
    #[inline(always)]
    unsafe fn max_nan(lo: Self, x: Self) -> Self {
        _mm512_max_pd(lo, x)
    }
    #[inline(always)]
    unsafe fn min_nan(hi: Self, x: Self) -> Self {
        _mm512_min_pd(hi, x)
    }
    #[inline(always)]
    unsafe fn max_num(x: Self, m: Self) -> Self {
        _mm512_max_pd(x, m)
    }
    #[inline(always)]
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, _t: Self) -> Self {
        _mm512_scalef_pd(p, n)
    }
    #[inline(always)]
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self {
        let t = _mm512_fmadd_pd(e, err, e);
        _mm512_mask_mov_pd(t, _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(t, t), e)
    }
    #[inline(always)]
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self {
        let nonzero = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(t, _mm512_setzero_pd());
        _mm512_mask3_fmadd_pd(t, d, acc, nonzero)
    }
    #[inline(always)]
    unsafe fn unord_mask(a: Self, b: Self) -> u64 {
        _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(a, b) as u64
    }
    #[inline(always)]
    unsafe fn eq_mask(a: Self, b: Self) -> u64 {
        _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a, b) as u64
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        _mm512_cmp_pd_mask::<_CMP_GT_OQ>(a, b) as u64
    }
    #[inline(always)]
    unsafe fn hmax(v: Self) -> f64 {
        _mm512_reduce_max_pd(v)
    }
    #[inline(always)]
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self {
        _mm512_mask_blend_pd(_mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a, b), f, t)
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f64, v: Self) {
        _mm512_stream_pd(p, v)
    }
    #[inline(always)]
    unsafe fn fence() {
        _mm_sfence()
    }
}

// ---- AVX2 + FMA ----

/// The lanes below `n` of an AVX2 vector of `32 / 8 * lanes`-bit elements: all ones in those
/// lanes (as 32-bit integers, two per f64 lane).
#[inline(always)]
unsafe fn lanes_below(n: usize, lanes: i32) -> __m256i {
    let lane =
        if lanes == 8 { _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7) } else { _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3) };
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane)
}

/// Elements `j .. j + 4` of rows `r` and `r + 4` (rows of `classes` elements from `z`), in the
/// low and high halves; past `readable` (the last row's end), zeros.
#[inline(always)]
unsafe fn row_pair(z: *const f32, classes: usize, readable: usize, r: usize, j: usize) -> __m256 {
    _mm256_insertf128_ps::<1>(
        _mm256_castps128_ps256(four_at(z, r * classes + j, readable)),
        four_at(z, (r + 4) * classes + j, readable),
    )
}

/// Elements `j .. j + 4` of rows `r`, `r + 4`, `r + 8` and `r + 12` (rows of `classes`
/// elements from `z`), in the four 128-bit lanes; past `readable` (the last row's end), zeros.
#[inline(always)]
unsafe fn row_quad(z: *const f32, classes: usize, readable: usize, r: usize, j: usize) -> __m512 {
    let pair = |r: usize| _mm256_castps_pd(row_pair(z, classes, readable, r, j));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(pair(r)), pair(r + 8)))
}

/// `z[at .. at + 4]`, zeros past `readable` (`at < readable`).
#[inline(always)]
unsafe fn four_at(z: *const f32, at: usize, readable: usize) -> __m128 {
    if at + 4 <= readable {
        return _mm_loadu_ps(z.add(at));
    }
    let mut four = [0.0f32; 4];
    std::ptr::copy_nonoverlapping(z.add(at), four.as_mut_ptr(), readable - at);
    _mm_loadu_ps(four.as_ptr())
}

/// `2^k` from a `MAGIC`-shifted `t` whose low mantissa bits hold the biased exponent `k`.
#[inline(always)]
unsafe fn pow2_ps(t: __m256) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(t)))
}

/// `2^k` from a `MAGIC`-shifted `t` whose low mantissa bits hold the biased exponent `k`.
#[inline(always)]
unsafe fn pow2_pd(t: __m256d) -> __m256d {
    _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_castpd_si256(t)))
}

unsafe impl Vector for __m256 {
    type E = f32;
    const N: usize = 8;
    const CHEAP_FULL: bool = false;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> Self {
        // Masked-off lanes are not read (no fault past the end of the slice).
        let mask = lanes_below(n, 8);
        _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, mask), _mm256_castsi256_ps(mask))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: Self) {
        _mm256_maskstore_ps(p, lanes_below(n, 8), v)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fnmadd_ps(a, b, c)
    }
    // x86 max and min return their second operand where either is NaN.
    #[inline(always)]
    unsafe fn max_nan(lo: Self, x: Self) -> Self {
        _mm256_max_ps(lo, x)
    }
    #[inline(always)]
    unsafe fn min_nan(hi: Self, x: Self) -> Self {
        _mm256_min_ps(hi, x)
    }
    #[inline(always)]
    unsafe fn max_num(x: Self, m: Self) -> Self {
        _mm256_max_ps(x, m)
    }
    #[inline(always)]
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, t: Self) -> Self {
        if FULL {
            // n in [-159, 129]: 2^n as 2^n1 · 2^n2, both normal; p · 2^n1 is exact and the
            // second product rounds once (to a subnormal or inf if it must).
            let bias = _mm256_set1_ps(f32::MAGIC_BIAS);
            let t1 = _mm256_fmadd_ps(n, _mm256_set1_ps(0.5), bias);
            let n2 = _mm256_sub_ps(n, _mm256_sub_ps(t1, bias));
            let t2 = _mm256_add_ps(n2, bias);
            _mm256_mul_ps(_mm256_mul_ps(p, pow2_ps(t1)), pow2_ps(t2))
        } else {
            // n in [-159, 0]: t's low bits hold n + 191, i.e. 2^(n + 64), a normal number.
            _mm256_mul_ps(_mm256_mul_ps(p, pow2_ps(t)), _mm256_set1_ps(f32::UNSCALE))
        }
    }
    const EXP_BIAS: i32 = 64;
    #[inline(always)]
    unsafe fn ldexp_biased(p: Self, _n: Self, t: Self) -> Self {
        // n in [-159, 0]: t's low bits hold n + 191, so p · 2^(n + 64) (a normal number) is p
        // with n + 191 - 127 added to its exponent field.
        let k = _mm256_sub_epi32(_mm256_slli_epi32::<23>(_mm256_castps_si256(t)), _mm256_set1_epi32(127 << 23));
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), k))
    }
    #[inline(always)]
    unsafe fn keep_above(v: Self, x: Self, lo: Self) -> Self {
        _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_GT_OQ>(x, lo))
    }
    #[inline(always)]
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self {
        let t = _mm256_fmadd_ps(e, err, e);
        _mm256_blendv_ps(t, e, _mm256_cmp_ps::<_CMP_UNORD_Q>(t, t))
    }
    #[inline(always)]
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self {
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(t, _mm256_setzero_ps());
        _mm256_blendv_ps(acc, _mm256_fmadd_ps(t, d, acc), nonzero)
    }
    #[inline(always)]
    unsafe fn unord_mask(a: Self, b: Self) -> u64 {
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(a, b)) as u32 as u64
    }
    #[inline(always)]
    unsafe fn eq_mask(a: Self, b: Self) -> u64 {
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, b)) as u32 as u64
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(a, b)) as u32 as u64
    }
    #[inline(always)]
    unsafe fn hmax(v: Self) -> f32 {
        let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)))
    }
    #[inline(always)]
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self {
        _mm256_blendv_ps(f, t, _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn columns(z: *const f32, classes: usize, readable: usize, cols: &mut [MaybeUninit<Self>; MAX_CLASSES]) {
        // Rows r and r + 4 in the two halves of a vector (see `transposed_columns!`; against a
        // gather a column, sparse rows of 32 to 64 classes ran 10-15% faster on Zen 3; at 10
        // classes the two tie).
        debug_assert!(readable >= 8 * classes);
        transposed_columns!(
            z,
            classes,
            readable,
            cols,
            row_pair,
            _mm256_unpacklo_ps,
            _mm256_unpackhi_ps,
            _mm256_shuffle_ps
        );
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f32, v: Self) {
        _mm256_stream_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fence() {
        _mm_sfence()
    }
}

unsafe impl Vector for __m256d {
    type E = f64;
    const N: usize = 4;
    const CHEAP_FULL: bool = false;
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        _mm256_set1_pd(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        _mm256_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f64, n: usize, fill: f64) -> Self {
        let mask = lanes_below(n, 4);
        _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, mask), _mm256_castsi256_pd(mask))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self) {
        _mm256_storeu_pd(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f64, n: usize, v: Self) {
        _mm256_maskstore_pd(p, lanes_below(n, 4), v)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        _mm256_sub_pd(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm256_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_pd(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fnmadd_pd(a, b, c)
    }
    // x86 max and min return their second operand where either is NaN.
    #[inline(always)]
    unsafe fn max_nan(lo: Self, x: Self) -> Self {
        _mm256_max_pd(lo, x)
    }
    #[inline(always)]
    unsafe fn min_nan(hi: Self, x: Self) -> Self {
        _mm256_min_pd(hi, x)
    }
    #[inline(always)]
    unsafe fn max_num(x: Self, m: Self) -> Self {
        _mm256_max_pd(x, m)
    }
    #[inline(always)]
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, t: Self) -> Self {
        if FULL {
            // n in [-1083, 1025]: 2^n as 2^n1 · 2^n2, both normal (see the f32 twin).
            let bias = _mm256_set1_pd(f64::MAGIC_BIAS);
            let t1 = _mm256_fmadd_pd(n, _mm256_set1_pd(0.5), bias);
            let n2 = _mm256_sub_pd(n, _mm256_sub_pd(t1, bias));
            let t2 = _mm256_add_pd(n2, bias);
            _mm256_mul_pd(_mm256_mul_pd(p, pow2_pd(t1)), pow2_pd(t2))
        } else {
            // n in [-1083, 0]: t's low bits hold n + 1623, i.e. 2^(n + 600), a normal number.
            _mm256_mul_pd(_mm256_mul_pd(p, pow2_pd(t)), _mm256_set1_pd(f64::UNSCALE))
        }
    }
    const EXP_BIAS: i32 = 600;
    #[inline(always)]
    unsafe fn ldexp_biased(p: Self, _n: Self, t: Self) -> Self {
        // As the f32 twin: t's low bits hold n + 1623, p · 2^(n + 600) is normal.
        let k = _mm256_sub_epi64(_mm256_slli_epi64::<52>(_mm256_castpd_si256(t)), _mm256_set1_epi64x(1023 << 52));
        _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), k))
    }
    #[inline(always)]
    unsafe fn keep_above(v: Self, x: Self, lo: Self) -> Self {
        _mm256_and_pd(v, _mm256_cmp_pd::<_CMP_GT_OQ>(x, lo))
    }
    #[inline(always)]
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self {
        let t = _mm256_fmadd_pd(e, err, e);
        _mm256_blendv_pd(t, e, _mm256_cmp_pd::<_CMP_UNORD_Q>(t, t))
    }
    #[inline(always)]
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self {
        let nonzero = _mm256_cmp_pd::<_CMP_NEQ_UQ>(t, _mm256_setzero_pd());
        _mm256_blendv_pd(acc, _mm256_fmadd_pd(t, d, acc), nonzero)
    }
    #[inline(always)]
    unsafe fn unord_mask(a: Self, b: Self) -> u64 {
        _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_UNORD_Q>(a, b)) as u32 as u64
    }
    #[inline(always)]
    unsafe fn eq_mask(a: Self, b: Self) -> u64 {
        _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_EQ_OQ>(a, b)) as u32 as u64
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(a, b)) as u32 as u64
    }
    #[inline(always)]
    unsafe fn hmax(v: Self) -> f64 {
        let x = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_max_sd(x, _mm_unpackhi_pd(x, x)))
    }
    #[inline(always)]
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self {
        _mm256_blendv_pd(f, t, _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f64, v: Self) {
        _mm256_stream_pd(p, v)
    }
    #[inline(always)]
    unsafe fn fence() {
        _mm_sfence()
    }
}

// ---- Narrow rows, sixteen at a time (see `super::lanes`) ----

/// # Safety
/// The CPU has AVX-512F; `z` (and `targets`) hold `LANES` rows of `classes` (1 ..=
/// `MAX_CLASSES`) elements; `exps`, at least `classes` columns.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn tile_stats_avx512(
    z: &[f32],
    classes: usize,
    out: &mut TileStats,
    exps: Option<&mut [Column]>,
    targets: Option<&[f32]>,
) {
    super::lanes::tile_stats_on::<__m512, Plain, 1>(z, classes, out, exps, targets)
}

/// # Safety
/// The CPU has AVX2 and FMA; `z` (and `targets`) hold `LANES` rows of `classes` (1 ..=
/// `MAX_CLASSES`) elements; `exps`, at least `classes` columns.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_stats_avx2(
    z: &[f32],
    classes: usize,
    out: &mut TileStats,
    exps: Option<&mut [Column]>,
    targets: Option<&[f32]>,
) {
    super::lanes::tile_stats_on::<__m256, Plain, 2>(z, classes, out, exps, targets)
}

/// `simd::tile_lanes` over float64 rows, AVX-512 (two vectors to a tile of 16).
///
/// # Safety
/// The CPU has AVX-512F; `z` (and the targets) hold `LANES` rows of `classes` (1 ..=
/// `MAX_CLASSES`) elements; `exps`, at least `classes` columns.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn tile_lanes_f64_avx512(
    z: &[f64],
    classes: usize,
    out: &mut [[f64; LANES]; 4],
    exps: Option<&mut [[f64; LANES]]>,
    targets: Option<simd::TargetsAndSums<f64>>,
) {
    simd::tile_lanes::<__m512d, Plain, 2>(z.as_ptr(), classes, out, exps, targets)
}

/// The same on AVX2 (four vectors to a tile).
///
/// # Safety
/// As [`tile_lanes_f64_avx512`], on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_lanes_f64_avx2(
    z: &[f64],
    classes: usize,
    out: &mut [[f64; LANES]; 4],
    exps: Option<&mut [[f64; LANES]]>,
    targets: Option<simd::TargetsAndSums<f64>>,
) {
    simd::tile_lanes::<__m256d, Plain, 4>(z.as_ptr(), classes, out, exps, targets)
}

// ---- The tables ----

macro_rules! tier {
    ($table:ident, $module:ident, $vector:ty, $t:ty, $tier:expr, $features:literal) => {
        /// The `#[target_feature]` instances of the kernels. Safety (every function): the CPU
        /// has the features.
        mod $module {
            use super::*;

            #[target_feature(enable = $features)]
            pub unsafe fn max_argmax(z: &[$t]) -> ($t, usize) {
                simd::max_argmax::<$vector, Plain>(z)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn sum_exp(z: &[$t], shift: $t, skip: usize, ahead: Ahead) -> f64 {
                simd::sum_exp::<$vector, Plain>(z, shift, skip, ahead)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn sum_exp_store(z: &[$t], shift: $t, skip: usize, out: &mut [$t], ahead: Ahead) -> f64 {
                simd::sum_exp_store::<$vector, Plain>(z, shift, skip, out, ahead)
            }
            #[target_feature(enable = $features)]
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
            #[target_feature(enable = $features)]
            pub unsafe fn exp_scaled(z: &[$t], shift: $t, scale: $t, out: &mut [$t]) {
                simd::exp_scaled::<$vector, Plain, Plain, false>(z, shift, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_scaled_stream(z: &[$t], shift: $t, scale: $t, out: &mut [$t]) {
                simd::exp_scaled::<$vector, Plain, Plain, true>(z, shift, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn scale(x: &[$t], scale: $t, out: &mut [$t]) {
                simd::scale::<$vector, Plain, false>(x, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn scale_stream(x: &[$t], scale: $t, out: &mut [$t]) {
                simd::scale::<$vector, Plain, true>(x, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn target_sums(t: &[$t], z: &[$t], max: $t) -> ($t, $t) {
                simd::target_sums::<$vector>(t, z, max)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn log_softmax(z: &[$t], max: $t, l: f64, out: &mut [$t]) {
                simd::log_softmax::<$vector>(z, max, l, out)
            }
            #[cfg(test)]
            #[target_feature(enable = $features)]
            pub unsafe fn exp(x: &[$t], out: &mut [$t]) {
                simd::exp_slice::<$vector>(x, out)
            }
        }

        /// The row kernels of this tier. Only to be used on a CPU with the tier's features:
        /// `dispatch::kernels_f32`/`kernels_f64` hand it out only then.
        pub static $table: RowKernels<$t> = RowKernels {
            tier: $tier,
            // SAFETY (all of them): the table is only used when the CPU has the features.
            max_argmax: |z| unsafe { $module::max_argmax(z) },
            sum_exp: |z, s, k, a| unsafe { $module::sum_exp(z, s, k, a) },
            sum_exp_store: |z, s, k, o, a| unsafe { $module::sum_exp_store(z, s, k, o, a) },
            sum_exp_targets: |z, s, k, t, e, a| unsafe { $module::sum_exp_targets(z, s, k, t, e, a) },
            exp_scaled: |z, s, c, o| unsafe { $module::exp_scaled(z, s, c, o) },
            exp_scaled_stream: |z, s, c, o| unsafe { $module::exp_scaled_stream(z, s, c, o) },
            scale: |x, c, o| unsafe { $module::scale(x, c, o) },
            scale_stream: |x, c, o| unsafe { $module::scale_stream(x, c, o) },
            target_sums: |t, z, m| unsafe { $module::target_sums(t, z, m) },
            log_softmax: |z, m, l, o| unsafe { $module::log_softmax(z, m, l, o) },
        };
    };
}

tier!(AVX512_F32, avx512_f32, __m512, f32, Tier::Avx512, "avx512f,avx2,fma");
tier!(AVX512_F64, avx512_f64, __m512d, f64, Tier::Avx512, "avx512f,avx2,fma");
tier!(AVX2_F32, avx2_f32, __m256, f32, Tier::Avx2, "avx2,fma");
tier!(AVX2_F64, avx2_f64, __m256d, f64, Tier::Avx2, "avx2,fma");

// ---- Half types, widened as loaded and rounded as stored ----

/// Rounds to nearest even as `vcvtps2ph` does (NaN stays NaN).
const F16_ROUND: i32 = _MM_FROUND_TO_NEAREST_INT;

unsafe impl Storage<__m512> for F16Bits {
    type S = f16;
    #[inline(always)]
    unsafe fn load(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, v: __m512) {
        _mm256_storeu_si256(p as *mut __m256i, _mm512_cvtps_ph::<F16_ROUND>(v))
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f16, v: __m512) {
        _mm256_stream_si256(p as *mut __m256i, _mm512_cvtps_ph::<F16_ROUND>(v))
    }
    #[inline(always)]
    unsafe fn columns(z: *const f16, classes: usize, readable: usize, cols: &mut [MaybeUninit<__m512>; MAX_CLASSES]) {
        // As `__m512::columns`, each quad of rows widened as one vector.
        transposed_columns!(
            z,
            classes,
            readable,
            cols,
            row_quad_f16,
            _mm512_unpacklo_ps,
            _mm512_unpackhi_ps,
            _mm512_shuffle_ps
        );
    }
}

unsafe impl Storage<__m512> for Bf16Bits {
    type S = bf16;
    #[inline(always)]
    unsafe fn load(p: *const bf16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
    }
    #[inline(always)]
    unsafe fn store(p: *mut bf16, v: __m512) {
        _mm256_storeu_si256(p as *mut __m256i, bf16_bits_512(v))
    }
    #[inline(always)]
    unsafe fn stream(p: *mut bf16, v: __m512) {
        _mm256_stream_si256(p as *mut __m256i, bf16_bits_512(v))
    }
    #[inline(always)]
    unsafe fn columns(z: *const bf16, classes: usize, readable: usize, cols: &mut [MaybeUninit<__m512>; MAX_CLASSES]) {
        // As `__m512::columns`, each quad of rows widened as one vector.
        transposed_columns!(
            z,
            classes,
            readable,
            cols,
            row_quad_bf16,
            _mm512_unpacklo_ps,
            _mm512_unpackhi_ps,
            _mm512_shuffle_ps
        );
    }
}

/// [`row_quad`] of float16 rows.
#[inline(always)]
unsafe fn row_quad_f16(z: *const f16, classes: usize, readable: usize, r: usize, j: usize) -> __m512 {
    _mm512_cvtph_ps(stored_quad(z, classes, readable, r, j))
}

/// [`row_quad`] of bfloat16 rows.
#[inline(always)]
unsafe fn row_quad_bf16(z: *const bf16, classes: usize, readable: usize, r: usize, j: usize) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(stored_quad(z, classes, readable, r, j))))
}

/// [`row_pair`] of float16 rows.
#[inline(always)]
unsafe fn row_pair_f16(z: *const f16, classes: usize, readable: usize, r: usize, j: usize) -> __m256 {
    _mm256_cvtph_ps(stored_pair(z, classes, readable, r, j))
}

/// [`row_pair`] of bfloat16 rows.
#[inline(always)]
unsafe fn row_pair_bf16(z: *const bf16, classes: usize, readable: usize, r: usize, j: usize) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(stored_pair(z, classes, readable, r, j))))
}

/// Elements `j .. j + 4` of rows `r`, `r + 4`, `r + 8` and `r + 12` (rows of `classes`
/// half-type elements from `z`), as stored, 64 bits a row; past `readable`, zeros.
#[inline(always)]
unsafe fn stored_quad<S>(z: *const S, classes: usize, readable: usize, r: usize, j: usize) -> __m256i {
    let (lo, hi) = (stored_pair(z, classes, readable, r, j), stored_pair(z, classes, readable, r + 8, j));
    _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi)
}

/// Elements `j .. j + 4` of rows `r` and `r + 4` (as [`stored_quad`]).
#[inline(always)]
unsafe fn stored_pair<S>(z: *const S, classes: usize, readable: usize, r: usize, j: usize) -> __m128i {
    _mm_unpacklo_epi64(four_stored(z, r * classes + j, readable), four_stored(z, (r + 4) * classes + j, readable))
}

/// `z[at .. at + 4]` (elements of 16 bits) in the low 64 bits, zeros past `readable` (`at <
/// readable`).
#[inline(always)]
unsafe fn four_stored<S>(z: *const S, at: usize, readable: usize) -> __m128i {
    debug_assert_eq!(std::mem::size_of::<S>(), 2);
    if at + 4 <= readable {
        return _mm_loadl_epi64(z.add(at) as *const __m128i);
    }
    let mut four = [0u16; 4];
    std::ptr::copy_nonoverlapping(z.add(at) as *const u16, four.as_mut_ptr(), readable - at);
    _mm_loadl_epi64(four.as_ptr() as *const __m128i)
}

/// `v` rounded to bfloat16 (nearest even; NaN quieted, as `element::narrow_bf16`).
#[inline(always)]
unsafe fn bf16_bits_512(v: __m512) -> __m256i {
    // The top half, rounded.
    let b = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)));
    let nan = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
    let bits = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v), rounded, nan);
    _mm512_cvtepi32_epi16(bits)
}

/// (Needs F16C besides AVX2: see `dispatch::stored_f16`.)
unsafe impl Storage<__m256> for F16Bits {
    type S = f16;
    #[inline(always)]
    unsafe fn load(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, v: __m256) {
        _mm_storeu_si128(p as *mut __m128i, _mm256_cvtps_ph::<F16_ROUND>(v))
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f16, v: __m256) {
        _mm_stream_si128(p as *mut __m128i, _mm256_cvtps_ph::<F16_ROUND>(v))
    }
    #[inline(always)]
    unsafe fn columns(z: *const f16, classes: usize, readable: usize, cols: &mut [MaybeUninit<__m256>; MAX_CLASSES]) {
        // As `__m256::columns`, each pair of rows widened as one vector.
        transposed_columns!(
            z,
            classes,
            readable,
            cols,
            row_pair_f16,
            _mm256_unpacklo_ps,
            _mm256_unpackhi_ps,
            _mm256_shuffle_ps
        );
    }
}

unsafe impl Storage<__m256> for Bf16Bits {
    type S = bf16;
    #[inline(always)]
    unsafe fn load(p: *const bf16) -> __m256 {
        // The eight elements in both halves (a broadcast load: no shuffle), then elements 0-3
        // (4-7) of the lower (upper) half moved into the top halves of its lanes, zeros below:
        // one shuffle a vector instead of a widening and a shift.
        let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
        #[rustfmt::skip]
        let top = _mm256_setr_epi8(
            -1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
            -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15,
        );
        _mm256_castsi256_ps(_mm256_shuffle_epi8(x, top))
    }
    #[inline(always)]
    unsafe fn store(p: *mut bf16, v: __m256) {
        _mm_storeu_si128(p as *mut __m128i, bf16_bits_256(v))
    }
    #[inline(always)]
    unsafe fn stream(p: *mut bf16, v: __m256) {
        _mm_stream_si128(p as *mut __m128i, bf16_bits_256(v))
    }
    #[inline(always)]
    unsafe fn columns(z: *const bf16, classes: usize, readable: usize, cols: &mut [MaybeUninit<__m256>; MAX_CLASSES]) {
        // As `__m256::columns`, each pair of rows widened as one vector.
        transposed_columns!(
            z,
            classes,
            readable,
            cols,
            row_pair_bf16,
            _mm256_unpacklo_ps,
            _mm256_unpackhi_ps,
            _mm256_shuffle_ps
        );
    }
}

/// `v` rounded to bfloat16, as [`bf16_bits_512`].
#[inline(always)]
unsafe fn bf16_bits_256(v: __m256) -> __m128i {
    // As the AVX-512 twin, with the results in the top halves of the lanes.
    let b = _mm256_castps_si256(v);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let rounded = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    let nan = _mm256_or_si256(b, _mm256_set1_epi32(0x40_0000));
    let bits = _mm256_blendv_epi8(rounded, nan, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)));
    // The top halves, in order: bytes 2-3 of each lane to the bottom of its 128 bits,
    // then the two 64-bit halves that hold them together.
    let top = _mm256_setr_epi8(
        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, //
        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_shuffle_epi8(bits, top));
    _mm256_castsi256_si128(packed)
}

// ---- The maximum of half-type rows, on their bits ----

/// float16 and bfloat16, as the bits they are (both `#[repr(transparent)]` over a `u16`).
trait HalfBits: Element<Compute = f32> {
    /// The bits of +inf.
    const INF: u16;
    fn from_bits(bits: u16) -> Self;
}

impl HalfBits for f16 {
    const INF: u16 = 0x7c00;
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

impl HalfBits for bf16 {
    const INF: u16 = 0x7f80;
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

/// [`simd::max_argmax`] of float16 or bfloat16 elements, taken on their bits with 16-bit
/// integer maxima, 16 elements an instruction (the float maximum widens each element first;
/// AVX2 instructions on the AVX-512 tier too, which does not ask for AVX-512BW). Sign and
/// magnitude order the bits: the largest non-negative element has the largest bits as signed
/// integers, and where every element is negative the largest has the smallest bits as
/// unsigned ones. A NaN's bits lie above +inf's (signed) or -inf's (unsigned).
#[target_feature(enable = "avx2")]
unsafe fn half_max_argmax<S: HalfBits>(z: &[S]) -> (f32, usize) {
    assert!(!z.is_empty(), "the maximum of an empty row");
    let inf = S::INF;
    let of_bits = |b: u16| S::from_bits(b).widen();
    // Read as their bits (`HalfBits`: each is a `u16`).
    let (n, p) = (z.len(), z.as_ptr() as *const u16);
    const W: usize = 16;
    let mut nan = false;
    // The maximum so far as bits, and the start of the first block that holds it.
    let (mut best, mut best_bits, mut from) = (f32::NEG_INFINITY, inf | 0x8000, 0);
    for start in (0..n).step_by(simd::MAX_BLOCK) {
        let end = n.min(start + simd::MAX_BLOCK);
        let (mut smax, mut umax, mut umin) =
            ([_mm256_set1_epi16(i16::MIN); 2], _mm256_setzero_si256(), _mm256_set1_epi16(-1));
        let mut i = start;
        while i + 2 * W <= end {
            let x0 = _mm256_loadu_si256(p.add(i) as *const __m256i);
            let x1 = _mm256_loadu_si256(p.add(i + W) as *const __m256i);
            smax[0] = _mm256_max_epi16(smax[0], x0);
            smax[1] = _mm256_max_epi16(smax[1], x1);
            umax = _mm256_max_epu16(umax, _mm256_max_epu16(x0, x1));
            umin = _mm256_min_epu16(umin, _mm256_min_epu16(x0, x1));
            i += 2 * W;
        }
        // The rest a vector at a time, the last one ending where the block does where it
        // has one (elements seen twice change no maximum), else one at a time.
        while i < end && end - start >= W {
            let x = _mm256_loadu_si256(p.add(i.min(end - W)) as *const __m256i);
            smax[0] = _mm256_max_epi16(smax[0], x);
            umax = _mm256_max_epu16(umax, x);
            umin = _mm256_min_epu16(umin, x);
            i += W;
        }
        i = i.min(end);
        let (mut s, mut hi, mut lo) =
            (reduce_max_epi16(_mm256_max_epi16(smax[0], smax[1])), reduce_max_epu16(umax), reduce_min_epu16(umin));
        for j in i..end {
            let x = *p.add(j);
            (s, hi, lo) = (s.max(x as i16), hi.max(x), lo.min(x));
        }
        nan |= s > inf as i16 || hi > (inf | 0x8000);
        let bits = if s >= 0 { s as u16 } else { lo };
        let m = of_bits(bits);
        if m > best {
            (best, best_bits, from) = (m, bits, start);
        }
    }
    if nan {
        let j = z.iter().position(|&x| x.widen().is_nan()).unwrap_or(0);
        return (f32::NAN, j);
    }
    // The first occurrence, from the block that first reached it; a zero matches either sign.
    let mask = if best == 0.0 { 0x7fff } else { 0xffff };
    let (target, keep) = (_mm256_set1_epi16((best_bits & mask) as i16), _mm256_set1_epi16(mask as i16));
    let mut i = from;
    while i + W <= n {
        let x = _mm256_and_si256(_mm256_loadu_si256(p.add(i) as *const __m256i), keep);
        let hits = _mm256_movemask_epi8(_mm256_cmpeq_epi16(x, target)) as u32;
        if hits != 0 {
            let j = i + hits.trailing_zeros() as usize / 2;
            return (z.get_unchecked(j).widen(), j);
        }
        i += W;
    }
    let j = (i..n).find(|&j| *p.add(j) & mask == best_bits & mask).unwrap_or(n - 1);
    (z.get_unchecked(j).widen(), j)
}

/// The smallest of sixteen unsigned 16-bit lanes.
#[inline(always)]
unsafe fn reduce_min_epu16(v: __m256i) -> u16 {
    let half = _mm_min_epu16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    _mm_extract_epi16::<0>(_mm_minpos_epu16(half)) as u16
}

/// The largest of sixteen unsigned 16-bit lanes: the smallest of their complements.
#[inline(always)]
unsafe fn reduce_max_epu16(v: __m256i) -> u16 {
    !reduce_min_epu16(_mm256_xor_si256(v, _mm256_set1_epi16(-1)))
}

/// The largest of sixteen signed 16-bit lanes: as unsigned, `x ^ 0x7fff` orders them in reverse.
#[inline(always)]
unsafe fn reduce_max_epi16(v: __m256i) -> i16 {
    (reduce_min_epu16(_mm256_xor_si256(v, _mm256_set1_epi16(0x7fff))) ^ 0x7fff) as i16
}

macro_rules! stored_kernels {
    ($table:ident, $module:ident, $vector:ty, $load:ty, $s:ty, $features:literal) => {
        /// Safety (every function): the CPU has the features.
        mod $module {
            use super::*;

            #[target_feature(enable = $features)]
            pub unsafe fn max_argmax(z: &[$s]) -> (f32, usize) {
                half_max_argmax(z)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn widen_max_argmax(z: &[$s], dst: &mut [f32]) -> (f32, usize) {
                simd::widen_max_argmax::<$vector, $load>(z, dst)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn sum_exp(z: &[$s], shift: f32, skip: usize, ahead: Ahead) -> f64 {
                simd::sum_exp::<$vector, $load>(z, shift, skip, ahead)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_scaled(z: &[$s], shift: f32, scale: f32, out: &mut [$s]) {
                simd::exp_scaled::<$vector, $load, $load, false>(z, shift, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_scaled_stream(z: &[$s], shift: f32, scale: f32, out: &mut [$s]) {
                simd::exp_scaled::<$vector, $load, $load, true>(z, shift, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_scaled_narrow(z: &[f32], shift: f32, scale: f32, out: &mut [$s]) {
                simd::exp_scaled::<$vector, Plain, $load, false>(z, shift, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_scaled_narrow_stream(z: &[f32], shift: f32, scale: f32, out: &mut [$s]) {
                simd::exp_scaled::<$vector, Plain, $load, true>(z, shift, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn scale_narrow(x: &[f32], scale: f32, out: &mut [$s]) {
                simd::scale::<$vector, $load, false>(x, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn scale_narrow_stream(x: &[f32], scale: f32, out: &mut [$s]) {
                simd::scale::<$vector, $load, true>(x, scale, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn widen(src: &[$s], dst: &mut [f32]) {
                simd::widen::<$vector, $load>(src, dst)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn narrow(src: &[f32], dst: &mut [$s]) {
                simd::narrow::<$vector, $load>(src, dst)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn tile_sparse_losses(
                z: &[$s],
                classes: usize,
                labels: &[usize; LANES],
                out: &mut [f32],
            ) -> bool {
                assert!((1..=MAX_CLASSES).contains(&classes) && z.len() == classes * LANES, "a tile of rows");
                let mut t = TileStats::default();
                super::super::lanes::tile_stats_on::<$vector, $load, { 16 / <$vector as Vector>::N }>(
                    z, classes, &mut t, None, None,
                );
                t.sparse_losses(classes, labels, |r, j| z[r * classes + j].to_f32(), out)
            }
        }

        /// Only to be used on a CPU with the features: `dispatch` hands it out only then.
        pub static $table: StoredKernels<$s, f32> = StoredKernels {
            // SAFETY (all of them): the table is only used when the CPU has the features.
            max_argmax: |z| unsafe { $module::max_argmax(z) },
            widen_max_argmax: |z, d| unsafe { $module::widen_max_argmax(z, d) },
            sum_exp: |z, s, k, a| unsafe { $module::sum_exp(z, s, k, a) },
            exp_scaled: |z, s, c, o| unsafe { $module::exp_scaled(z, s, c, o) },
            exp_scaled_stream: |z, s, c, o| unsafe { $module::exp_scaled_stream(z, s, c, o) },
            exp_scaled_narrow: |z, s, c, o| unsafe { $module::exp_scaled_narrow(z, s, c, o) },
            exp_scaled_narrow_stream: |z, s, c, o| unsafe { $module::exp_scaled_narrow_stream(z, s, c, o) },
            scale_narrow: |x, c, o| unsafe { $module::scale_narrow(x, c, o) },
            scale_narrow_stream: |x, c, o| unsafe { $module::scale_narrow_stream(x, c, o) },
            widen: |src, dst| unsafe { $module::widen(src, dst) },
            narrow: |src, dst| unsafe { $module::narrow(src, dst) },
            tile_sparse_losses: |z, c, l, o| unsafe { $module::tile_sparse_losses(z, c, l, o) },
        };
    };
}

stored_kernels!(AVX512_F16, avx512_f16, __m512, F16Bits, f16, "avx512f,avx2,fma");
stored_kernels!(AVX512_BF16, avx512_bf16, __m512, Bf16Bits, bf16, "avx512f,avx2,fma");
stored_kernels!(AVX2_F16, avx2_f16, __m256, F16Bits, f16, "avx2,fma,f16c");
stored_kernels!(AVX2_BF16, avx2_bf16, __m256, Bf16Bits, bf16, "avx2,fma");

/// The tiers this CPU runs, for the tests in `super::simd`.
#[cfg(test)]
pub(super) fn test_tiers_f32() -> Vec<simd::tests::TestTier<f32>> {
    use simd::tests::TestTier;
    let mut v = vec![];
    if is_x86_feature_detected!("avx512f") {
        v.push(TestTier { name: "avx512", k: &AVX512_F32, exp: avx512_f32::exp, lanes: 16 });
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        v.push(TestTier { name: "avx2", k: &AVX2_F32, exp: avx2_f32::exp, lanes: 8 });
    }
    v
}

/// The half-type kernels this CPU runs, with the f32 kernels of their tier, for the tests in
/// `super::simd`.
#[cfg(test)]
pub(super) fn test_stored_tiers() -> Vec<simd::tests::StoredTier> {
    use simd::tests::StoredTier;
    let mut v = vec![];
    if is_x86_feature_detected!("avx512f") {
        v.push(StoredTier {
            name: "avx512",
            k: &AVX512_F32,
            tile_stats: tile_stats_avx512,
            f16: Some(&AVX512_F16),
            bf16: &AVX512_BF16,
        });
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        let f16 = is_x86_feature_detected!("f16c").then_some(&AVX2_F16);
        v.push(StoredTier { name: "avx2", k: &AVX2_F32, tile_stats: tile_stats_avx2, f16, bf16: &AVX2_BF16 });
    }
    v
}

#[cfg(test)]
pub(super) fn test_tiers_f64() -> Vec<simd::tests::TestTier<f64>> {
    use simd::tests::TestTier;
    let mut v = vec![];
    if is_x86_feature_detected!("avx512f") {
        v.push(TestTier { name: "avx512", k: &AVX512_F64, exp: avx512_f64::exp, lanes: 8 });
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        v.push(TestTier { name: "avx2", k: &AVX2_F64, exp: avx2_f64::exp, lanes: 4 });
    }
    v
}

/// The table of the AVX-512 exps holds `2^(j/16)` correctly rounded (against f64's `exp2`,
/// whose error is far below the rounding to f32; none of the sixteen lies near a tie).
#[test]
fn exp2_sixteenths_are_rounded_powers_of_two() {
    for (j, &bits) in EXP2_SIXTEENTHS.iter().enumerate() {
        assert_eq!(f32::from_bits(bits), (j as f64 / 16.0).exp2() as f32, "2^({j}/16)");
    }
}
