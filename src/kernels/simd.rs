//! The row kernels written once over a small vector abstraction ([`Vector`]), with the
//! vectorised `exp` they share. Each SIMD tier (AVX-512F and AVX2+FMA in `super::x86`, NEON in
//! `super::neon`) implements [`Vector`] with its intrinsics and instantiates these functions inside its own
//! `#[target_feature]` wrappers; everything here is `#[inline(always)]`, so it compiles into
//! the wrappers with their features.
//!
//! # `exp`
//! `exp(d)` = `2^n · p(r)`, with `n = round(d · log2 e)` (the `1.5 · 2^p` rounding trick),
//! `r = d - n ln2` by a two-constant Cody-Waite reduction (`n · LN2_HI` is exact, `|r| ≤ ln2/2`),
//! `p` a minimax polynomial for the relative error of `e^r` with `p(0) = 1, p'(0) = 1` fixed
//! (f32: degree 6, 3.5e-9; f64: degree 11, 4.6e-18, both on `|r| ≤ 1.02 ln2/2`), and `2^n`
//! applied by `vscalefps/pd` (AVX-512) or by building exponent bits (AVX2, two factors where
//! the range needs them). Every result is rounded once from `p · 2^n`, so subnormal results
//! are rounded correctly to within the same bound (no flush to zero). AVX2's `exp_scaled`
//! skips two multiplies: an integer add to `p`'s exponent makes `p · 2^(n + 64)` (f64:
//! `n + 600`), exact and normal, and the unbiasing goes into its scale where that stays
//! normal (one rounding). Inputs below
//! `ln(2^-150) ≈ -103.97` (f32) / `ln(2^-1075) ≈ -745.13` (f64) give 0, `-inf` gives 0, inputs
//! above `ln(MAX)` (88.72 / 709.78) give `+inf`, NaN gives NaN.
//!
//! The row kernels compute `exp(x - shift)` without forming `x - shift` (see [`Split`]), so
//! that the rounding of `x - shift` costs nothing however large `|x - shift|` is. In f32 on
//! AVX-512 they reduce by sixteenths of ln 2 instead, `2^(n/16) · e^r` with `2^(j/16)` from a
//! table of 16 (`vpermps`) and `e^r` by a degree-3 polynomial on `|r| ≤ 1.3 ln2/32`: three
//! FMAs fewer, for a permute and two multiplies more, where the FMA pipes bound the exps
//! (sum_exp 4.8 -> 5.5 G elements/s on Zen 4).
//!
//! Measured errors (tests in `simd/tests.rs`; "ulp" is the spacing of the format at the exact
//! result, subnormal spacing below the smallest normal):
//! - f32 `exp`, and the kernels' form with `shift = 0`: at most 0.896 ulp over every f32 in
//!   `[-104, 89]` (exhaustive, both tiers; the kernels' form on AVX-512, the table: 0.975 ulp;
//!   always within 1 ulp of the correctly rounded value).
//! - f32 `exp(x - shift)` as the kernels compute it: at most 1.102 ulp (AVX2), 0.969 ulp
//!   (AVX-512, the table), and always within 1 ulp of the correctly rounded value (57 million
//!   points over 400 shifts of 2^-3 to 2^16 in magnitude,
//!   `exhaustive_f32_shifted_exp_over_400_shifts`; an earlier sample of as many points found
//!   1.17 ulp).
//! - f64: at most 0.89 ulp (`exp`) and 1.05 ulp (`exp(x - shift)`) against mpmath on 480,000
//!   points; within 1 ulp of `std`'s `exp` on 600,000 more.

use std::mem::MaybeUninit;

use num_traits::{Float as _, One as _, Zero as _};

use super::lanes::MAX_CLASSES;
use super::{Ahead, CompensatedSum, Float};
use crate::element::Element;

/// Per-type constants of `exp`, for the compute types (elements in their own right).
pub trait ExpConsts: Float {
    /// `log2(e)`.
    const LOG2E: Self;
    /// `1.5 · 2^p` (p = mantissa bits) plus a bias: `d · log2e + MAGIC` rounds to an integer
    /// and lands `n` plus the bias in the low mantissa bits. The bias (the exponent bias, plus
    /// 64 for f32 or 600 for f64) lets AVX2 read `2^(n + 64)` (`2^(n + 600)`) from those bits
    /// with one shift, a normal number for every `n` of a non-positive input.
    const MAGIC: Self;
    /// `1.5 · 2^p + exponent bias`: as `MAGIC`, for the two-factor scaling of the full range.
    const MAGIC_BIAS: Self;
    /// `1.5 · 2^p`: `d + ROUNDER` rounds `d` to an integer `n` and leaves `n` (two's complement)
    /// in the low mantissa bits, for the table lookups of [`Vector::exp2_sixteenths`].
    const ROUNDER: Self;
    /// `2^-64` (f32), `2^-600` (f64): undoes the bias of `MAGIC`.
    const UNSCALE: Self;
    /// `ln 2 = LN2_HI + LN2_LO`, `LN2_HI` short enough that `n · LN2_HI` is exact.
    const LN2_HI: Self;
    const LN2_LO: Self;
    /// Inputs are clamped to `[EXP_LO, EXP_HI]`: below, every result is 0; above, +inf.
    const EXP_LO: Self;
    const EXP_HI: Self;
    /// The split reduction of `exp(x - shift)` (see [`Split`]) takes shifts below this in
    /// magnitude; `x` is clamped to `[shift - SPAN, shift + EXP_HI]`.
    const SPLIT_LIMIT: Self;
    const SPAN: Self;
    /// The polynomial, highest degree first, ending with the coefficients of `r` and `1`.
    const POLY: &'static [Self];
}

impl ExpConsts for f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23 + 127 + 64.
    const MAGIC: f32 = 12_583_103.0;
    const MAGIC_BIAS: f32 = 12_583_039.0;
    const ROUNDER: f32 = 12_582_912.0;
    const UNSCALE: f32 = 5.421_011e-20; // 2^-64
    const LN2_HI: f32 = 0.693_145_75; // 0x3f317200
    const LN2_LO: f32 = 1.428_606_8e-6;
    const EXP_LO: f32 = -104.0;
    const EXP_HI: f32 = 89.0;
    const SPLIT_LIMIT: f32 = 65536.0;
    const SPAN: f32 = 110.0;
    // Minimax on |r| <= 1.02 ln2/2 (the split reduction's |r| reaches 1.012 ln2/2).
    const POLY: &'static [f32] = &[0.001_381_166_3, 0.008_370_135, 0.041_668_527, 0.166_665_09, 0.499_999_94, 1.0, 1.0];
}

impl ExpConsts for f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // 1.5 * 2^52 + 1023 + 600.
    const MAGIC: f64 = 6_755_399_441_057_367.0;
    const MAGIC_BIAS: f64 = 6_755_399_441_056_767.0;
    const ROUNDER: f64 = 6_755_399_441_055_744.0;
    const UNSCALE: f64 = 2.409_919_865_102_884e-181; // 2^-600
    const LN2_HI: f64 = 6.931_471_803_691_238e-1; // 32 bits
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const EXP_LO: f64 = -746.0;
    const EXP_HI: f64 = 710.0;
    const SPLIT_LIMIT: f64 = 524_288.0;
    const SPAN: f64 = 750.0;
    // Minimax on |r| <= 1.02 ln2/2.
    const POLY: &'static [f64] = &[
        2.499_790_940_194_292_2e-8,
        2.763_315_472_243_803_4e-7,
        2.755_760_841_535_247e-6,
        2.480_148_545_675_254e-5,
        1.984_126_946_452_017e-4,
        1.388_888_895_040_720_4e-3,
        8.333_333_333_521_934e-3,
        4.166_666_666_650_726_4e-2,
        1.666_666_666_666_635_8e-1,
        5.000_000_000_000_013e-1,
        1.0,
        1.0,
    ];
}

/// A SIMD vector of `Self::N` lanes of `Self::E`, with the operations the kernels need.
///
/// # Safety
/// Every method may only be called on a CPU with the implementing tier's features (the
/// kernels only run behind `dispatch::tier()` or an explicit feature check). Pointer
/// arguments must be valid for the lanes read or written.
pub unsafe trait Vector: Copy {
    type E: ExpConsts;
    const N: usize;
    /// Whether `exp` over the full range costs no more than over `x <= 0` (else the kernels
    /// check each vector for lanes that need it).
    const CHEAP_FULL: bool;
    unsafe fn splat(x: Self::E) -> Self;
    unsafe fn load(p: *const Self::E) -> Self;
    /// `n < N` lanes from `p`, the others set to `fill`.
    unsafe fn load_partial(p: *const Self::E, n: usize, fill: Self::E) -> Self;
    unsafe fn store(p: *mut Self::E, v: Self);
    /// The first `n < N` lanes of `v` to `p`.
    unsafe fn store_partial(p: *mut Self::E, n: usize, v: Self);
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a · b + c`, rounded once.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// `c - a · b`, rounded once.
    unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self;
    /// `max(lo, x)`, NaN where `x` is NaN (`lo` is not NaN).
    unsafe fn max_nan(lo: Self, x: Self) -> Self;
    /// `min(hi, x)`, NaN where `x` is NaN (`hi` is not NaN).
    unsafe fn min_nan(hi: Self, x: Self) -> Self;
    /// `max(x, m)`, `m` where `x` is NaN (`m` is not NaN).
    unsafe fn max_num(x: Self, m: Self) -> Self;
    /// `p · 2^n`, rounded once, for `p` in `[0.7, 1.42]` and integral `n` in `[-159, 129]` (f32)
    /// or `[-1083, 1025]` (f64); `t` is the `MAGIC`-shifted value `n` was read from. Unless
    /// `FULL`, `n ≤ 0`. (Or `p` and `n` as [`Vector::exp2_sixteenths`] gives them.)
    unsafe fn ldexp<const FULL: bool>(p: Self, n: Self, t: Self) -> Self;
    /// Whether the row kernels' `exp(x - shift)` ([`Split`]) reduces by sixteenths of `ln 2`
    /// and takes `2^(j/16)` from a table ([`Vector::exp2_sixteenths`]), with a polynomial of
    /// degree 3 instead of 6: for a tier with a one-instruction lookup, where the exps are
    /// bound by the FMA pipes (AVX-512 on Zen 4).
    const EXP_TABLE: bool = false;
    /// `(p, n)` such that [`Vector::ldexp`]`(p, n, _)` is `2^(n16/16) · e^r`, for `|r| ≤ 1.3 ln2/32`
    /// and integral `n16`, `t` the `ROUNDER`-shifted `n16` (its low four bits hold `n16 mod 16`).
    /// Only called where `EXP_TABLE`.
    unsafe fn exp2_sixteenths(_r: Self, _n16: Self, _t: Self) -> (Self, Self) {
        unreachable!("exp2_sixteenths: the tier has no table")
    }
    /// `log2` of the factor [`Vector::ldexp_biased`] scales its results by; 0: the tier has no
    /// such form.
    const EXP_BIAS: i32 = 0;
    /// `p · 2^(n + EXP_BIAS)`, exact, for `n` in `[-159, 0]` (f32) or `[-1083, 0]` (f64), from
    /// finite `p` and `t` (as `ldexp`): where the tier builds `2^n` from exponent bits, this
    /// is a normal number made by an integer add (no multiply, no subnormal), for a scaled
    /// exp to unbias in its scale. Unlike `ldexp`, it never rounds to 0, and turns NaN into
    /// garbage: callers zero the lanes below the range ([`Vector::keep_above`]).
    #[inline(always)]
    unsafe fn ldexp_biased(p: Self, n: Self, t: Self) -> Self {
        Self::ldexp::<false>(p, n, t)
    }
    /// `v` in the lanes where `x > lo`, 0 where `x <= lo` (either where `x` is NaN).
    #[inline(always)]
    unsafe fn keep_above(v: Self, x: Self, lo: Self) -> Self {
        Self::select_eq(Self::max_nan(lo, x), lo, Self::splat(Self::E::zero()), v)
    }
    /// `e + e · err`, or `e` where that is NaN (`err` NaN, or `e` infinite).
    unsafe fn fmadd_or_keep(e: Self, err: Self) -> Self;
    /// `acc + t · d` in the lanes where `t != 0` (NaN counts as non-zero), else `acc`.
    unsafe fn fmadd_nonzero(t: Self, d: Self, acc: Self) -> Self;
    /// A bit per lane (lane 0 lowest): `a` or `b` is NaN.
    unsafe fn unord_mask(a: Self, b: Self) -> u64;
    /// A bit per lane (lane 0 lowest): `a == b`.
    unsafe fn eq_mask(a: Self, b: Self) -> u64;
    /// A bit per lane (lane 0 lowest): `a > b`.
    unsafe fn gt_mask(a: Self, b: Self) -> u64;
    /// The largest lane (no lane is NaN).
    unsafe fn hmax(v: Self) -> Self::E;
    /// `v` to `p` (aligned to 64 bytes) past the caches, where the tier can: for outputs far
    /// larger than the caches, it saves reading each line before it is written.
    #[inline(always)]
    unsafe fn stream(p: *mut Self::E, v: Self) {
        Self::store(p, v)
    }
    /// Orders the streamed stores before any that follow.
    #[inline(always)]
    unsafe fn fence() {}
    /// `t` in the lanes where `a == b`, `f` elsewhere.
    unsafe fn select_eq(a: Self, b: Self, t: Self, f: Self) -> Self;
    /// Lane `i` read from `p + i · stride`.
    #[inline(always)]
    unsafe fn gather(p: *const Self::E, stride: usize) -> Self {
        let mut lanes = [Self::E::zero(); 16];
        for (i, x) in lanes.iter_mut().enumerate().take(Self::N) {
            *x = *p.add(i * stride);
        }
        Self::load(lanes.as_ptr())
    }
    /// `cols[j]` = element `j` of each of `Self::N` rows of `classes` (1 ..= [`MAX_CLASSES`])
    /// elements stored one after another from `z` (lane `r`: row `r`), for `j < classes`; `z`
    /// is valid for `readable >= Self::N · classes` reads (tiers may read past the rows, never
    /// past `readable`). By a gather per column unless the tier has better.
    #[inline(always)]
    unsafe fn columns(z: *const Self::E, classes: usize, readable: usize, cols: &mut [MaybeUninit<Self>; MAX_CLASSES]) {
        debug_assert!(readable >= Self::N * classes);
        for (j, col) in cols.iter_mut().enumerate().take(classes) {
            col.write(Self::gather(z.add(j), classes));
        }
    }
}

#[inline(always)]
unsafe fn splat<V: Vector>(x: V::E) -> V {
    V::splat(x)
}

/// How kernels read and write elements as stored: in the compute type ([`Plain`]), or in a
/// half type widened as loaded and rounded as stored ([`F16Bits`], [`Bf16Bits`], implemented
/// by the tiers that can), so that a half-type row is read once, at two bytes an element,
/// with no widened copy.
///
/// # Safety
/// As [`Vector`]: the CPU has the tier's features, pointers are valid for the lanes read or
/// written.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // (half types: x86 tiers only, so far)
pub unsafe trait Storage<V: Vector>: Copy {
    /// The stored element (one at a time, it converts as `Element` says).
    type S: Element<Compute = V::E> + Default;
    unsafe fn load(p: *const Self::S) -> V;
    /// `v` rounded to nearest (ties to even) into `V::N` elements at `p`, as
    /// `Element::narrow` rounds each.
    unsafe fn store(p: *mut Self::S, v: V);
    /// `n < N` lanes from `p`, the others set to `fill`.
    #[inline(always)]
    unsafe fn load_partial(p: *const Self::S, n: usize, fill: V::E) -> V {
        // Copied as stored, widened as a vector (not one at a time), then `fill` put in.
        let mut stored = [Self::S::default(); 16];
        for (i, x) in stored.iter_mut().enumerate().take(n) {
            *x = *p.add(i);
        }
        let mut lanes = [V::E::zero(); 16];
        V::store(lanes.as_mut_ptr(), Self::load(stored.as_ptr()));
        V::load_partial(lanes.as_ptr(), n, fill)
    }
    /// The first `n < N` lanes of `v`, stored as [`Storage::store`] stores them.
    #[inline(always)]
    unsafe fn store_partial(p: *mut Self::S, n: usize, v: V) {
        let mut stored = [Self::S::default(); 16];
        Self::store(stored.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(stored.as_ptr(), p, n);
    }
    /// [`Storage::store`] past the caches where the storage can, to `p` aligned to 64 bytes
    /// (or, for a half type, to the bytes it stores); else an ordinary store.
    #[inline(always)]
    unsafe fn stream(p: *mut Self::S, v: V) {
        Self::store(p, v)
    }
    /// [`Vector::columns`] of rows stored as `Self`, widened.
    unsafe fn columns(z: *const Self::S, classes: usize, readable: usize, cols: &mut [MaybeUninit<V>; MAX_CLASSES]);
}

/// Elements stored in the compute type.
#[derive(Clone, Copy)]
pub struct Plain;

unsafe impl<V: Vector> Storage<V> for Plain {
    type S = V::E;
    #[inline(always)]
    unsafe fn load(p: *const V::E) -> V {
        V::load(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut V::E, v: V) {
        V::store(p, v)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const V::E, n: usize, fill: V::E) -> V {
        V::load_partial(p, n, fill)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut V::E, n: usize, v: V) {
        V::store_partial(p, n, v)
    }
    #[inline(always)]
    unsafe fn stream(p: *mut V::E, v: V) {
        V::stream(p, v)
    }
    #[inline(always)]
    unsafe fn columns(z: *const V::E, classes: usize, readable: usize, cols: &mut [MaybeUninit<V>; MAX_CLASSES]) {
        V::columns(z, classes, readable, cols)
    }
}

/// float16 elements, widened to f32 as loaded (x86 tiers only, so far).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct F16Bits;

/// bfloat16 elements, widened to f32 as loaded (x86 tiers only, so far).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Bf16Bits;

/// `exp(d)` lane-wise; see the module docs for its bounds. `FULL`: any input (positive ones up
/// to overflow); otherwise inputs are `≤ 0`, `-inf` or NaN.
#[inline(always)]
pub unsafe fn exp<V: Vector, const FULL: bool>(d: V) -> V {
    exp_times::<V, FULL, false>(d, splat(V::E::one()))
}

/// `exp(d) · c` if `TIMES` (`c` multiplies the polynomial before the power of two is applied;
/// with `FULL` and `c = 1 / UNSCALE`, exact and normal down to `d = EXP_LO`), else `exp(d)`.
#[inline(always)]
unsafe fn exp_times<V: Vector, const FULL: bool, const TIMES: bool>(d: V, c: V) -> V {
    let mut d = V::max_nan(splat(V::E::EXP_LO), d);
    if FULL {
        d = V::min_nan(splat(V::E::EXP_HI), d);
    }
    let t = V::fmadd(d, splat(V::E::LOG2E), splat(V::E::MAGIC));
    let n = V::sub(t, splat(V::E::MAGIC));
    let r = V::fnmadd(n, splat(V::E::LN2_HI), d);
    let r = V::fnmadd(n, splat(V::E::LN2_LO), r);
    let p = poly([r])[0];
    V::ldexp::<FULL>(if TIMES { V::mul(p, c) } else { p }, n, t)
}

/// `[f(a_0), …, f(a_U-1)]` for an array of vectors `a`, written out in place: through a
/// closure (or `array::map`) the body is not always inlined, and then runs without the tier's
/// target features, a vector at a time through memory.
macro_rules! each {
    ($a:expr, |$x:ident| $body:expr) => {{
        let mut out = $a;
        for v in out.iter_mut() {
            let $x = *v;
            *v = $body;
        }
        out
    }};
}

/// `U` vectors of `L` from `p`, one after another.
#[inline(always)]
unsafe fn load_vectors<V: Vector, L: Storage<V>, const U: usize>(p: *const L::S) -> [V; U] {
    let mut x = [splat::<V>(V::E::zero()); U];
    for (k, x) in x.iter_mut().enumerate() {
        *x = L::load(p.add(k * V::N));
    }
    x
}

/// The `len` elements of `L` from `p` in `U` vectors (`len <= U · V::N`), the lanes past them
/// `fill`.
#[inline(always)]
unsafe fn load_up_to<V: Vector, L: Storage<V>, const U: usize>(p: *const L::S, len: usize, fill: V::E) -> [V; U] {
    let mut x = [splat::<V>(fill); U];
    for (k, x) in x.iter_mut().enumerate() {
        let at = k * V::N;
        if at + V::N <= len {
            *x = L::load(p.add(at));
        } else if at < len {
            *x = L::load_partial(p.add(at), len - at, fill);
        }
    }
    x
}

/// A way of computing `exp(x - shift)` for one row's `shift`, a few vectors at a time: the
/// steps of their exps interleaved, so that the out-of-order core overlaps their chains of
/// ~20 dependent operations (one vector's chain after another ran 10% slower on Zen 3).
trait ShiftedExp<V: Vector>: Copy {
    /// `exp(x_k - shift)`; `FULL`: for any `x` (otherwise `x <= shift`, -inf or NaN).
    unsafe fn exps<const FULL: bool, const U: usize>(&self, x: [V; U]) -> [V; U];
    /// `exp(x_k - shift) / UNSCALE`, exact (a normal number), for `x <= shift` or -inf (not
    /// NaN), with the lanes below the range (-inf included) zeroed, as [`Vector::keep_above`]:
    /// the biased exps of tiers that have none of their own, by the full-range `ldexp`.
    unsafe fn lifted_exps<const U: usize>(&self, x: [V; U]) -> [V; U];
    /// `exp(x_k - shift) · 2^V::EXP_BIAS`, for `x <= shift` or -inf (not NaN).
    #[inline(always)]
    unsafe fn biased_exps<const U: usize>(&self, x: [V; U]) -> [V; U] {
        let bias = splat::<V>(V::E::from_f64((V::EXP_BIAS as f64).exp2()));
        each!(self.exps::<false, U>(x), |e| V::mul(e, bias))
    }
    #[inline(always)]
    unsafe fn exp<const FULL: bool>(&self, x: V) -> V {
        self.exps::<FULL, 1>([x])[0]
    }
}

/// `exp(x - shift)` from `d = x - shift` and its rounding error (TwoSum, as the scalar tier
/// does): the rounding of `d` alone would cost `|d| / 2` ulp. Works for any finite shift;
/// the kernels use it only where [`Split`] does not apply (`|shift| >= SPLIT_LIMIT`).
#[derive(Clone, Copy)]
struct Compensated<V> {
    shift: V,
}

impl<V: Vector> Compensated<V> {
    /// `x - shift` and its rounding error (TwoSum). The error is NaN where `x` is -inf (or
    /// `x - shift` overflows): there an exp is 0 and stays 0, one that overflowed stays inf.
    #[inline(always)]
    unsafe fn diff(&self, x: V) -> (V, V) {
        let s = self.shift;
        let d = V::sub(x, s);
        let bv = V::sub(d, x);
        let av = V::sub(d, bv);
        (d, V::sub(V::sub(x, av), V::add(s, bv)))
    }
}

impl<V: Vector> ShiftedExp<V> for Compensated<V> {
    #[inline(always)]
    unsafe fn exps<const FULL: bool, const U: usize>(&self, x: [V; U]) -> [V; U] {
        each!(x, |x| {
            let (d, err) = self.diff(x);
            V::fmadd_or_keep(exp::<V, FULL>(d), err)
        })
    }
    #[inline(always)]
    unsafe fn biased_exps<const U: usize>(&self, x: [V; U]) -> [V; U] {
        // (The default would round each exp first: to a subnormal, far below the shift.)
        debug_assert!(V::E::from_f64((V::EXP_BIAS as f64).exp2()) == V::E::one() / V::E::UNSCALE);
        self.lifted_exps(x)
    }
    #[inline(always)]
    unsafe fn lifted_exps<const U: usize>(&self, x: [V; U]) -> [V; U] {
        let lift = splat::<V>(V::E::one() / V::E::UNSCALE);
        each!(x, |x| {
            let (d, err) = self.diff(x);
            let e = V::fmadd_or_keep(exp_times::<V, true, true>(d, lift), err);
            V::keep_above(e, d, splat(V::E::EXP_LO))
        })
    }
}

/// `exp(x - shift)` by a reduction that never forms `x - shift`. With `k = round(shift log2e)`,
/// `s_r = shift - k LN2_HI` (exact), `n = round((x - shift) log2e)` and `N = n + k`:
///
/// `x - shift - n ln2 = (x - N LN2_HI) - s_r - n LN2_LO`.
///
/// `N LN2_HI` is exact inside the FMA, and `x - N LN2_HI` (below 1 in magnitude) is exact
/// whenever `|x| >= 1` (both lie on a grid fine enough for it) and otherwise within half an
/// ulp of 1/2; `s_r` is exact (for `|shift| < SPLIT_LIMIT`), and the two last steps round once
/// each (the first often not at all: both terms lie on coarse grids): the reduced argument is
/// within one ulp of 1 absolutely (2^-24, 2^-53), whatever `|x - shift|`. (Rounding the sum
/// `-s_r - n LN2_LO` first, then adding it, makes the chain 7 cycles shorter and sum_exp 3-7%
/// faster on Zen 3, but two roundings then always happen: 18% more results one ulp off, the
/// worst 1.18 ulp instead of 1.10.) `N = n + k` is read from `t` directly, to shorten the chain
/// as well. [`Compensated`] gets there by TwoSum, at five more operations per vector. With a
/// table ([`Vector::EXP_TABLE`]) the same, in sixteenths of ln 2: `k`, `n` and `N` count
/// sixteenths, `LN2_HI` and `LN2_LO` are divided by 16 (see [`Split::steps`]).
#[derive(Clone, Copy)]
struct Split<V> {
    lo: V,
    hi: V,
    neg_shift_log2e: V,
    /// `magic - k` (`MAGIC`, or `ROUNDER` with a table: [`Split::steps`]): `t - (magic - k)`
    /// is `n + k`, exactly (integers below 2^24 / 2^53).
    magic_less_k: V,
    s_r: V,
}

impl<V: Vector> Split<V> {
    /// The constants for `shift`, or `None` where `|shift| >= SPLIT_LIMIT` (or NaN): there
    /// `k LN2_HI` or `shift log2e` would not be accurate enough.
    #[inline(always)]
    unsafe fn new(shift: V::E) -> Option<Self> {
        let e = |x: f64| V::E::from_f64(x);
        if shift.abs() >= V::E::SPLIT_LIMIT || shift.is_nan() {
            return None;
        }
        let (steps, magic) = Self::steps();
        let k = (shift * V::E::LOG2E * steps).round();
        // Exact: k < 2^21 and LN2_HI has 32 bits (f64) or 15 (f32), and the difference is a
        // multiple of the coarser of the two grids below 1 in magnitude.
        let s_r = e(shift.to_f64() - k.to_f64() * (V::E::LN2_HI / steps).to_f64());
        Some(Split {
            lo: V::splat(shift - V::E::SPAN),
            hi: V::splat(shift + V::E::EXP_HI),
            neg_shift_log2e: V::splat(-(shift * V::E::LOG2E * steps)),
            magic_less_k: V::splat(magic - k),
            s_r: V::splat(s_r),
        })
    }
}

impl<V: Vector> Split<V> {
    /// Steps of the reduction per ln 2 (1, or 16 with a table: `n` then counts sixteenths, and
    /// the constants scaled by 16 stay exact), and its rounding constant.
    #[inline(always)]
    fn steps() -> (V::E, V::E) {
        if V::EXP_TABLE {
            (V::E::from_f64(16.0), V::E::ROUNDER)
        } else {
            (V::E::one(), V::E::MAGIC)
        }
    }

    /// `(p(r), n, t)` of each lane's `exp(x - shift) = 2^n · p(r)`, step by step across the
    /// vectors, for [`Vector::ldexp`]; `x` in `[shift - SPAN, shift + EXP_HI]` (`n` in range).
    /// With a table, `p` and `n` as [`Vector::exp2_sixteenths`] gives them (`n` is `n16 / 16`,
    /// not an integer: the tier's `ldexp` floors it).
    #[inline(always)]
    unsafe fn reduce<const U: usize>(&self, x: [V; U]) -> ([V; U], [V; U], [V; U]) {
        let (steps, magic) = Self::steps();
        let (magic, log2e) = (splat::<V>(magic), splat::<V>(V::E::LOG2E * steps));
        let (ln2_hi, ln2_lo) = (V::E::LN2_HI / steps, V::E::LN2_LO / steps);
        let t = each!(x, |x| V::add(V::fmadd(x, log2e, self.neg_shift_log2e), magic));
        let mut n = each!(t, |t| V::sub(t, magic));
        let mut r = x;
        for k in 0..U {
            r[k] = V::fnmadd(V::sub(t[k], self.magic_less_k), splat(ln2_hi), x[k]);
        }
        for k in 0..U {
            r[k] = V::fnmadd(n[k], splat(ln2_lo), V::sub(r[k], self.s_r));
        }
        if !V::EXP_TABLE {
            return (poly(r), n, t);
        }
        let mut p = r;
        for k in 0..U {
            (p[k], n[k]) = V::exp2_sixteenths(r[k], n[k], t[k]);
        }
        (p, n, t)
    }
}

impl<V: Vector> ShiftedExp<V> for Split<V> {
    #[inline(always)]
    unsafe fn exps<const FULL: bool, const U: usize>(&self, x: [V; U]) -> [V; U] {
        // Clamped to [shift - SPAN, shift + EXP_HI] (results 0 and inf); NaN goes through.
        let x = each!(x, |x| if FULL { V::min_nan(self.hi, V::max_nan(self.lo, x)) } else { V::max_nan(self.lo, x) });
        let (mut p, n, t) = self.reduce(x);
        for k in 0..U {
            p[k] = V::ldexp::<FULL>(p[k], n[k], t[k]);
        }
        p
    }
    #[inline(always)]
    unsafe fn lifted_exps<const U: usize>(&self, x: [V; U]) -> [V; U] {
        let lift = splat::<V>(V::E::one() / V::E::UNSCALE);
        let (mut p, n, t) = self.reduce(x);
        for k in 0..U {
            p[k] = V::keep_above(V::ldexp::<true>(V::mul(p[k], lift), n[k], t[k]), x[k], self.lo);
        }
        p
    }
    #[inline(always)]
    unsafe fn biased_exps<const U: usize>(&self, x: [V; U]) -> [V; U] {
        // Lanes at or below shift - SPAN (-inf included) are zeroed, not clamped: there a
        // biased exp would be a tiny normal number, not the 0 that an exp rounds to.
        let (mut p, n, t) = self.reduce(x);
        for k in 0..U {
            p[k] = V::keep_above(V::ldexp_biased(p[k], n[k], t[k]), x[k], self.lo);
        }
        p
    }
}

#[inline(always)]
unsafe fn poly<V: Vector, const U: usize>(r: [V; U]) -> [V; U] {
    let poly = V::E::POLY;
    let mut p = [splat::<V>(poly[0]); U];
    for &c in &poly[1..] {
        for k in 0..U {
            p[k] = V::fmadd(p[k], r[k], splat(c));
        }
    }
    p
}

/// Elements per block of [`max_argmax`]'s first pass: its second pass, for the first
/// occurrence of the maximum, starts at the block that first reached it, not at the row's
/// start (half a row again on average, from L2 for a long row).
pub const MAX_BLOCK: usize = 2048;

/// `(max, index of its first occurrence)`, or `(NaN, index of the first NaN)`. `z` is not
/// empty.
#[inline(always)]
pub unsafe fn max_argmax<V: Vector, L: Storage<V>>(z: &[L::S]) -> (V::E, usize) {
    max_argmax_widening::<V, L, false>(z, std::ptr::null_mut())
}

/// [`max_argmax`] of `z`, which it also writes to `dst` in the compute type (as [`widen`]
/// does): one pass over the stored row where the widening and the first pass of the maximum
/// were two. `dst` is as long as `z`.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // (half types: x86 tiers only, so far)
pub unsafe fn widen_max_argmax<V: Vector, L: Storage<V>>(z: &[L::S], dst: &mut [V::E]) -> (V::E, usize) {
    assert_eq!(z.len(), dst.len(), "a widened element per element");
    max_argmax_widening::<V, L, true>(z, dst.as_mut_ptr())
}

/// [`max_argmax`], and with `WIDEN`, each element loaded in its first pass stored to `dst`.
#[inline(always)]
unsafe fn max_argmax_widening<V: Vector, L: Storage<V>, const WIDEN: bool>(
    z: &[L::S],
    dst: *mut V::E,
) -> (V::E, usize) {
    debug_assert!(!z.is_empty(), "the maximum of an empty row");
    let (n, p, w) = (z.len(), z.as_ptr(), V::N);
    let keep = |i: usize, x: V| {
        if WIDEN {
            V::store(dst.add(i), x);
        }
    };
    let ninf = V::E::neg_infinity();
    let mut nan = 0u64;
    // The maximum so far, and the start of the first block that holds it.
    let (mut best, mut from) = (ninf, 0);
    for start in (0..n).step_by(MAX_BLOCK) {
        let end = n.min(start + MAX_BLOCK);
        let mut m = [splat::<V>(ninf); 4];
        let mut i = start;
        while i + 4 * w <= end {
            let x0 = L::load(p.add(i));
            let x1 = L::load(p.add(i + w));
            let x2 = L::load(p.add(i + 2 * w));
            let x3 = L::load(p.add(i + 3 * w));
            keep(i, x0);
            keep(i + w, x1);
            keep(i + 2 * w, x2);
            keep(i + 3 * w, x3);
            // A NaN in x leaves m as it is; the masks record it.
            m[0] = V::max_num(x0, m[0]);
            m[1] = V::max_num(x1, m[1]);
            m[2] = V::max_num(x2, m[2]);
            m[3] = V::max_num(x3, m[3]);
            nan |= V::unord_mask(x0, x1) | V::unord_mask(x2, x3);
            i += 4 * w;
        }
        while i + w <= end {
            let x = L::load(p.add(i));
            keep(i, x);
            m[0] = V::max_num(x, m[0]);
            nan |= V::unord_mask(x, x);
            i += w;
        }
        if i < end {
            let x = L::load_partial(p.add(i), end - i, ninf);
            if WIDEN {
                V::store_partial(dst.add(i), end - i, x);
            }
            m[1] = V::max_num(x, m[1]);
            nan |= V::unord_mask(x, x);
        }
        let block_max = V::hmax(V::max_num(V::max_num(m[0], m[1]), V::max_num(m[2], m[3])));
        if block_max > best {
            (best, from) = (block_max, start);
        }
    }
    if nan != 0 {
        let j = z.iter().position(|&x| x.widen().is_nan()).unwrap_or(0);
        return (V::E::nan(), j);
    }
    // The first occurrence: a second pass from that block, over a row still in cache.
    let target = splat::<V>(best);
    let mut i = from;
    // Four vectors a step up to the four holding it, then a vector at a time (with a branch
    // a vector, the kernel in L1 ran at 12.0 against 12.6 G elements/s for f32, 4.9 against
    // 6.1 for f64).
    while i + 4 * w <= n {
        let hits = V::eq_mask(L::load(p.add(i)), target)
            | V::eq_mask(L::load(p.add(i + w)), target)
            | V::eq_mask(L::load(p.add(i + 2 * w)), target)
            | V::eq_mask(L::load(p.add(i + 3 * w)), target);
        if hits != 0 {
            break;
        }
        i += 4 * w;
    }
    while i + w <= n {
        let hits = V::eq_mask(L::load(p.add(i)), target);
        if hits != 0 {
            let j = i + hits.trailing_zeros() as usize;
            // The element itself: of two zeros, the sign of the first, as the scalar tier.
            return (z.get_unchecked(j).widen(), j);
        }
        i += w;
    }
    let hits = V::eq_mask(L::load_partial(p.add(i), n - i, V::E::nan()), target);
    let j = (i + hits.trailing_zeros() as usize).min(n - 1);
    (z.get_unchecked(j).widen(), j)
}

/// `Σ_{j≠skip} exp(z_j - shift)` (`skip` past the end: every term), in `N` compensated
/// partial sums, added up in f64; asking for `ahead` on the way.
#[inline(always)]
pub unsafe fn sum_exp<V: Vector, L: Storage<V>>(z: &[L::S], shift: V::E, skip: usize, ahead: Ahead) -> f64 {
    sum_exp_into::<V, L, false, false>(z, shift, skip, std::ptr::null_mut(), std::ptr::null(), ahead).0
}

/// [`sum_exp`], bit for bit, also storing each term `exp(z_j - shift)` in `out` (as long as
/// `z`, in the compute type; the one at `skip` too): a gradient or softmax of the row then
/// costs no second exp.
#[inline(always)]
pub unsafe fn sum_exp_store<V: Vector, L: Storage<V>>(
    z: &[L::S],
    shift: V::E,
    skip: usize,
    out: &mut [V::E],
    ahead: Ahead,
) -> f64 {
    assert_eq!(z.len(), out.len(), "a term per element");
    sum_exp_into::<V, L, true, false>(z, shift, skip, out.as_mut_ptr(), std::ptr::null(), ahead).0
}

/// [`sum_exp`] (or [`sum_exp_store`] into `exps`) and [`target_sums`]`(t, z, shift)`, each
/// bit for bit, in one pass over the row: a dense row's targets summed as its exps are,
/// not in a pass of their own that reads the row again.
#[inline(always)]
pub unsafe fn sum_exp_targets<V: Vector>(
    z: &[V::E],
    shift: V::E,
    skip: usize,
    t: &[V::E],
    exps: Option<&mut [V::E]>,
    ahead: Ahead,
) -> (f64, (V::E, V::E)) {
    assert_eq!(z.len(), t.len(), "a target per element");
    match exps {
        Some(out) => {
            assert_eq!(z.len(), out.len(), "a term per element");
            sum_exp_into::<V, Plain, true, true>(z, shift, skip, out.as_mut_ptr(), t.as_ptr(), ahead)
        }
        None => sum_exp_into::<V, Plain, false, true>(z, shift, skip, std::ptr::null_mut(), t.as_ptr(), ahead),
    }
}

/// [`sum_exp`], storing the terms to `out` if `STORE`, and with the [`target_sums`] of the
/// targets at `t` if `TARGETS` (else zeros). The cache level of the hints is chosen here, once
/// a call: chosen a step at a time, the branch made sparse float32 8192×32768 18% slower.
#[inline(always)]
unsafe fn sum_exp_into<V: Vector, L: Storage<V>, const STORE: bool, const TARGETS: bool>(
    z: &[L::S],
    shift: V::E,
    skip: usize,
    out: *mut V::E,
    t: *const V::E,
    ahead: Ahead,
) -> (f64, (V::E, V::E)) {
    match (Split::<V>::new(shift), ahead.into_l1()) {
        (Some(split), false) => sum_exp_with::<V, L, _, STORE, TARGETS, false>(z, split, shift, skip, out, t, ahead),
        (Some(split), true) => sum_exp_with::<V, L, _, STORE, TARGETS, true>(z, split, shift, skip, out, t, ahead),
        (None, l1) => {
            let f = Compensated { shift: splat::<V>(shift) };
            if l1 {
                sum_exp_with::<V, L, _, STORE, TARGETS, true>(z, f, shift, skip, out, t, ahead)
            } else {
                sum_exp_with::<V, L, _, STORE, TARGETS, false>(z, f, shift, skip, out, t, ahead)
            }
        }
    }
}

/// A vector of running sums with Kahan's compensation: the error stays at a few ulp
/// whatever the number of terms (a plain running sum of `L` terms can be `L / 2` ulp off, and
/// is, on rows whose terms are all equal).
#[derive(Clone, Copy)]
struct KahanSum<V> {
    sum: V,
    /// Minus the rounding error not yet in `sum`.
    carry: V,
}

impl<V: Vector> KahanSum<V> {
    #[inline(always)]
    unsafe fn add(&mut self, x: V) {
        let y = V::sub(x, self.carry);
        let t = V::add(self.sum, y);
        self.carry = V::sub(V::sub(t, self.sum), y);
        self.sum = t;
    }

    /// The sum of the lanes' sums less their carries, in f64: f32 lanes by a tree of f64
    /// additions (each lane is exact in f64, and the tree's few roundings of 2^-53 are far
    /// below the 2^-24 of the f32 results; a compensated chain of 8 to 32 steps made short rows
    /// pay for a long dependency), f64 lanes compensated (a plain tree of 16 lanes would
    /// round four more times).
    #[inline(always)]
    unsafe fn value(self) -> f64 {
        let mut lanes = [V::E::zero(); 32];
        V::store(lanes.as_mut_ptr(), self.sum);
        V::store(lanes.as_mut_ptr().add(V::N), V::sub(splat::<V>(V::E::zero()), self.carry));
        if std::mem::size_of::<V::E>() == 4 {
            let mut wide = [0.0f64; 32];
            for (w, &x) in wide.iter_mut().zip(&lanes[..2 * V::N]) {
                *w = x.to_f64();
            }
            let mut width = 2 * V::N;
            while width > 1 {
                width /= 2;
                for k in 0..width {
                    wide[k] += wide[k + width];
                }
            }
            return wide[0];
        }
        let mut total = CompensatedSum::<f64>::default();
        for &x in &lanes[..2 * V::N] {
            total.add(x.to_f64());
        }
        total.value()
    }
}

#[inline(always)]
unsafe fn sum_exp_with<
    V: Vector,
    L: Storage<V>,
    S: ShiftedExp<V>,
    const STORE: bool,
    const TARGETS: bool,
    const L1: bool,
>(
    z: &[L::S],
    f: S,
    shift: V::E,
    skip: usize,
    out: *mut V::E,
    t: *const V::E,
    ahead: Ahead,
) -> (f64, (V::E, V::E)) {
    let (n, p, w) = (z.len(), z.as_ptr(), V::N);
    let zero = splat::<V>(V::E::zero());
    let mut acc = KahanSum { sum: zero, carry: zero };
    let mut targets = TargetSums::<V>::new(shift);
    let mut ahead = ahead.stepper(p as *const u8);
    let mut i = 0;
    while i + 8 * w <= n {
        // (Eight lines hold a step's share of any region: 8 vectors of at most 4-byte
        // elements for f32, of 8 for f64.)
        ahead.upto::<8, L1>(i + 8 * w);
        // Eight vectors summed as a tree (exact for equal terms), then into the running sum.
        let x = load_vectors::<V, L, 8>(p.add(i));
        if TARGETS {
            targets.add::<8>(load_vectors::<V, Plain, 8>(t.add(i)), x);
        }
        let mut e = f.exps::<false, 8>(x);
        if STORE {
            for (k, &e) in e.iter().enumerate() {
                V::store(out.add(i + k * w), e);
            }
        }
        // (True at most once a call, a branch the predictor learns: a block of a row holding
        // its maximum takes one call, not one each side of it, which short rows gain most.)
        if skip.wrapping_sub(i) < 8 * w {
            without_lane(&mut e, skip - i);
        }
        let [e0, e1, e2, e3, e4, e5, e6, e7] = e;
        let s0 = V::add(V::add(e0, e1), V::add(e2, e3));
        let s1 = V::add(V::add(e4, e5), V::add(e6, e7));
        acc.add(V::add(s0, s1));
        i += 8 * w;
    }
    // The rest (fewer than eight vectors) in one batch, as the loop's (a vector at a time,
    // each exp's chain of ~20 operations would wait on the one before, and short rows pay
    // for that), the smallest batch that holds it: at most twice the exps needed.
    let rest = n - i;
    if rest > 4 * w {
        acc.add(sum_exp_rest::<V, L, S, STORE, 8>(z, i, f, shift, skip, out));
    } else if rest > 2 * w {
        acc.add(sum_exp_rest::<V, L, S, STORE, 4>(z, i, f, shift, skip, out));
    } else if rest > w {
        acc.add(sum_exp_rest::<V, L, S, STORE, 2>(z, i, f, shift, skip, out));
    } else if rest > 0 {
        acc.add(sum_exp_rest::<V, L, S, STORE, 1>(z, i, f, shift, skip, out));
    }
    ahead.finish::<L1>();
    let target_sums = if TARGETS { targets.rest::<L>(t, p, i, n) } else { (V::E::zero(), V::E::zero()) };
    (acc.value(), target_sums)
}

/// The terms of `z[i..]` (at most `U` vectors) but the one at `skip`, summed as a tree; stored
/// to `out[i..]` if `STORE`. The lanes past the end read `shift` (exp 1: no subnormal on the
/// way; filled with -inf they would underflow through the subnormals, a microcode assist of
/// ~100 cycles on Intel) and count 0.
#[inline(always)]
unsafe fn sum_exp_rest<V: Vector, L: Storage<V>, S: ShiftedExp<V>, const STORE: bool, const U: usize>(
    z: &[L::S],
    i: usize,
    f: S,
    shift: V::E,
    skip: usize,
    out: *mut V::E,
) -> V {
    let (rest, p, w) = (z.len() - i, z.as_ptr().add(i), V::N);
    let mut e = f.exps::<false, U>(load_up_to::<V, L, U>(p, rest, shift));
    let ones = [V::E::one(); 16];
    for (k, e) in e.iter_mut().enumerate() {
        if (k + 1) * w <= rest {
            if STORE {
                V::store(out.add(i + k * w), *e);
            }
        } else if k * w < rest {
            if STORE {
                V::store_partial(out.add(i + k * w), rest - k * w, *e);
            }
            *e = V::mul(*e, V::load_partial(ones.as_ptr(), rest - k * w, V::E::zero()));
        } else {
            *e = splat(V::E::zero());
        }
    }
    if skip.wrapping_sub(i) < rest {
        without_lane(&mut e, skip - i);
    }
    tree(e)
}

/// Sets lane `at` of `e` (counted across its vectors) to zero.
#[inline(always)]
unsafe fn without_lane<V: Vector, const U: usize>(e: &mut [V; U], at: usize) {
    let (k, lane) = (at / V::N, at % V::N);
    debug_assert!(k < U && V::N <= 16);
    let mut lanes = [V::E::zero(); 16];
    V::store(lanes.as_mut_ptr(), e[k]);
    lanes[lane] = V::E::zero();
    e[k] = V::load(lanes.as_ptr());
}

/// `out_j = exp(z_j - shift) · scale`, for any `z_j - shift` (positive ones included), with
/// `z` stored as `In` and `out` as `Out` (a half type is widened as loaded and rounded as
/// stored: the bits of the compute type's kernel on the widened row, rounded); `STREAM`:
/// stored past the caches where `Out` can.
#[inline(always)]
pub unsafe fn exp_scaled<V: Vector, In: Storage<V>, Out: Storage<V>, const STREAM: bool>(
    z: &[In::S],
    shift: V::E,
    scale: V::E,
    out: &mut [Out::S],
) {
    // (Missing lanes read `shift`: exp 1, never stored, and no subnormal on the way.)
    match Split::<V>::new(shift) {
        Some(split) => map_lanes::<V, In, Out, _, STREAM>(z, ScaledExps::new(split, shift, scale), shift, out),
        None => {
            let f = ScaledExps::new(Compensated { shift: splat::<V>(shift) }, shift, scale);
            map_lanes::<V, In, Out, _, STREAM>(z, f, shift, out)
        }
    }
}

/// `out_j = x_j · c`, stored as `Out`; `STREAM`: stored past the caches where `Out` can.
#[inline(always)]
pub unsafe fn scale<V: Vector, Out: Storage<V>, const STREAM: bool>(x: &[V::E], c: V::E, out: &mut [Out::S]) {
    map_lanes::<V, Plain, Out, _, STREAM>(x, Scaled(splat::<V>(c)), V::E::zero(), out)
}

/// `out_j = (z_j - max) - l` (see `RowKernels::log_softmax`): with `l = l_hi + l_lo` (f32:
/// `l` to 48 bits), `z_j - max = d + e1` and `d - l_hi = s + e2` exactly (TwoSum), and the
/// result `s + ((e1 + e2) - l_lo)` rounded once. As `d ≤ 0 ≤ l_hi`, `|s|` is at least `|d|`
/// and `l_hi`, so the small sum is below 1.5 ulp of `s`, and its roundings cost a few 2^-24
/// (f32; 2^-53, f64) of an ulp. (In f64, element by element in portable code, `log_softmax`
/// ran 1.5 times as long as `softmax` on 65536×1000 float32 rows.)
#[inline(always)]
pub unsafe fn log_softmax<V: Vector>(z: &[V::E], max: V::E, l: f64, out: &mut [V::E]) {
    let l_hi = V::E::from_f64(l);
    let l_lo = V::E::from_f64(l - l_hi.to_f64());
    let m = LogSoftmax {
        max: Compensated { shift: splat(max) },
        l_hi: Compensated { shift: splat(l_hi) },
        l_lo: splat(l_lo),
    };
    map_lanes::<V, Plain, Plain, _, false>(z, m, V::E::zero(), out)
}

/// The lanes of [`log_softmax`].
#[derive(Clone, Copy)]
struct LogSoftmax<V> {
    max: Compensated<V>,
    l_hi: Compensated<V>,
    l_lo: V,
}

impl<V: Vector> LaneMap<V> for LogSoftmax<V> {
    #[inline(always)]
    unsafe fn of<const U: usize>(&self, x: [V; U]) -> [V; U] {
        let ninf = splat::<V>(V::E::neg_infinity());
        each!(x, |x| {
            let (d, e1) = self.max.diff(x);
            let (s, e2) = self.l_hi.diff(d);
            // Where `d` is -inf (`x` is, or `x - max` overflows) the errors are NaN.
            V::select_eq(d, ninf, d, V::add(s, V::sub(V::add(e1, e2), self.l_lo)))
        })
    }
}

/// A lane-wise function of vectors, applied a few at a time by [`map_lanes`].
trait LaneMap<V: Vector>: Copy {
    unsafe fn of<const U: usize>(&self, x: [V; U]) -> [V; U];
}

/// `x · c`.
#[derive(Clone, Copy)]
struct Scaled<V>(V);

impl<V: Vector> LaneMap<V> for Scaled<V> {
    #[inline(always)]
    unsafe fn of<const U: usize>(&self, x: [V; U]) -> [V; U] {
        each!(x, |x| V::mul(x, self.0))
    }
}

/// `exp(x_k - shift) · scale` for any `x`: over the full range only in the lanes that need it
/// (the contract's rows have none), if the full range costs this tier more; else, where the
/// tier has biased exps and `scale · 2^-EXP_BIAS` is a normal number (`biased_scale`), their
/// product with it: one rounding, no multiply to unbias. A scale above 1 on a tier without
/// biased exps takes [`ShiftedExp::lifted_exps`] times `scale · UNSCALE` (`lifted_scale`):
/// an exp rounded to a subnormal first would carry its few bits into the normal range (by
/// hundreds of ulp). Each lane's bits depend on its own `x` only (streamed and plain stores
/// group vectors differently), NaN aside (the contract's rows have none).
#[derive(Clone, Copy)]
struct ScaledExps<V, S> {
    f: S,
    shift: V,
    scale: V,
    biased_scale: Option<V>,
    lifted_scale: Option<V>,
}

impl<V: Vector, S: ShiftedExp<V>> ScaledExps<V, S> {
    #[inline(always)]
    unsafe fn new(f: S, shift: V::E, scale: V::E) -> Self {
        let biased = scale * V::E::from_f64((-V::EXP_BIAS as f64).exp2());
        let biased_scale = (V::EXP_BIAS != 0 && (biased.is_normal() || scale == V::E::zero())).then(|| splat(biased));
        let lifted = scale * V::E::UNSCALE;
        let lifted_scale = (biased_scale.is_none() && scale > V::E::one()).then(|| splat(lifted));
        ScaledExps { f, shift: splat(shift), scale: splat(scale), biased_scale, lifted_scale }
    }
}

impl<V: Vector, S: ShiftedExp<V>> LaneMap<V> for ScaledExps<V, S> {
    #[inline(always)]
    unsafe fn of<const U: usize>(&self, x: [V; U]) -> [V; U] {
        let mut e = match (self.lifted_scale, self.biased_scale) {
            (Some(c), _) => each!(self.f.lifted_exps(x), |e| V::mul(e, c)),
            _ if V::CHEAP_FULL => return each!(self.f.exps::<true, U>(x), |e| V::mul(e, self.scale)),
            (None, Some(c)) => each!(self.f.biased_exps(x), |e| V::mul(e, c)),
            (None, None) => each!(self.f.exps::<false, U>(x), |e| V::mul(e, self.scale)),
        };
        for k in 0..U {
            if V::gt_mask(x[k], self.shift) != 0 {
                let full = V::mul(self.f.exp::<true>(x[k]), self.scale);
                e[k] = V::select_eq(V::max_nan(self.shift, x[k]), self.shift, e[k], full);
            }
        }
        e
    }
}

/// `out_j = m(z_j)`, with `z` stored as `In` and `out` as `Out`, a few vectors at a time;
/// missing lanes of a partial vector read `fill`. `STREAM`: stored past the caches where `Out`
/// can (`m` must then give each lane's bits from its own lane: the head and tail group lanes
/// differently).
#[inline(always)]
unsafe fn map_lanes<V: Vector, In: Storage<V>, Out: Storage<V>, M: LaneMap<V>, const STREAM: bool>(
    z: &[In::S],
    m: M,
    fill: V::E,
    out: &mut [Out::S],
) {
    let n = z.len().min(out.len());
    let (p, o, w) = (z.as_ptr(), out.as_mut_ptr(), V::N);
    let mut i = 0;
    if STREAM {
        // Streamed stores want 64-byte alignment: the elements before it go the usual way.
        let head = o.align_offset(64).min(n);
        while i < head {
            let k = (head - i).min(w);
            if k == w {
                Out::store(o.add(i), m.of([In::load(p.add(i))])[0]);
            } else {
                let [e] = m.of([In::load_partial(p.add(i), k, fill)]);
                Out::store_partial(o.add(i), k, e);
            }
            i += k;
        }
    }
    while i + 4 * w <= n {
        let e = m.of(load_vectors::<V, In, 4>(p.add(i)));
        for (k, e) in e.into_iter().enumerate() {
            if STREAM {
                Out::stream(o.add(i + k * w), e);
            } else {
                Out::store(o.add(i + k * w), e);
            }
        }
        i += 4 * w;
    }
    while i + w <= n {
        Out::store(o.add(i), m.of([In::load(p.add(i))])[0]);
        i += w;
    }
    if i < n {
        let [e] = m.of([In::load_partial(p.add(i), n - i, fill)]);
        Out::store_partial(o.add(i), n - i, e);
    }
    if STREAM {
        V::fence();
    }
}

/// `dst_j = src_j` in the compute type.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn widen<V: Vector, L: Storage<V>>(src: &[L::S], dst: &mut [V::E]) {
    let n = src.len().min(dst.len());
    let (p, o, w) = (src.as_ptr(), dst.as_mut_ptr(), V::N);
    let mut i = 0;
    while i + w <= n {
        V::store(o.add(i), L::load(p.add(i)));
        i += w;
    }
    if i < n {
        V::store_partial(o.add(i), n - i, L::load_partial(p.add(i), n - i, V::E::zero()));
    }
}

/// `dst_j = src_j` rounded to the stored type.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn narrow<V: Vector, L: Storage<V>>(src: &[V::E], dst: &mut [L::S]) {
    let n = src.len().min(dst.len());
    let (p, o, w) = (src.as_ptr(), dst.as_mut_ptr(), V::N);
    let mut i = 0;
    while i + w <= n {
        L::store(o.add(i), V::load(p.add(i)));
        i += w;
    }
    for j in i..n {
        *o.add(j) = L::S::narrow(*p.add(j));
    }
}

/// `(Σ t_j, Σ_{t_j≠0} t_j (max - z_j))`.
#[inline(always)]
pub unsafe fn target_sums<V: Vector>(t: &[V::E], z: &[V::E], max: V::E) -> (V::E, V::E) {
    TargetSums::<V>::new(max).rest::<Plain>(t.as_ptr(), z.as_ptr(), 0, t.len().min(z.len()))
}

/// The running sums of [`target_sums`], in short chains of additions: a plain running sum of
/// `L` equal terms (as smoothed one-hot labels give) can be `L / 2` ulp off, and two plain
/// chains of vectors lost up to 31 ulp of float32 losses (24 of float64) on rows whose loss
/// is mostly the gap. Eight vectors at a time are added up as a tree (exact for equal terms),
/// [`TREES`] trees in a chain, and these groups go into [`TwoSums`]: the chains stay
/// this short however long the row's blocks (`crate::blocks::BLOCK`) and whatever the width
/// of the vectors. (Compensating each tree cost 7-13% on dense rows of 32768 classes, Zen 4.
/// Groups of 128 elements in two alternating plain chains suited blocks of 1024; for blocks
/// of 4096, groups of 512 in such chains (of 16 trees on AVX2 float64) put a float64 loss
/// 4.4 ulp off.)
struct TargetSums<V> {
    max: V,
    /// `Σ t_j` and `Σ t_j (max - z_j)`.
    sums: [TwoSums<V>; 2],
    /// The two sums of the trees of the group in hand, and how many trees it has.
    group: [V; 2],
    trees: usize,
}

/// Trees (of eight vectors each) to a group of [`TargetSums`].
const TREES: usize = 4;

/// Vectors of running sums and, apart, the exact errors of their additions (TwoSum): `sum`
/// stays the plain sum, so an infinite term (label mass on a -inf logit) gives an infinite
/// total, where Kahan's carry would turn it into NaN.
#[derive(Clone, Copy)]
struct TwoSums<V> {
    sum: V,
    error: V,
}

impl<V: Vector> TwoSums<V> {
    #[inline(always)]
    unsafe fn add(&mut self, x: V) {
        let t = V::add(self.sum, x);
        let b = V::sub(t, self.sum);
        let e = V::add(V::sub(self.sum, V::sub(t, b)), V::sub(x, b));
        self.error = V::add(self.error, e);
        self.sum = t;
    }

    /// The lanes of both added up in f64 ([`KahanSum::value`]), rounded once; the plain sum's
    /// where that is not finite.
    #[inline(always)]
    unsafe fn value(self) -> V::E {
        let zero = splat::<V>(V::E::zero());
        let total = KahanSum { sum: self.sum, carry: V::sub(zero, self.error) }.value();
        if total.is_finite() {
            return V::E::from_f64(total);
        }
        V::E::from_f64(KahanSum { sum: self.sum, carry: zero }.value())
    }
}

impl<V: Vector> TargetSums<V> {
    #[inline(always)]
    unsafe fn new(max: V::E) -> Self {
        let zero = splat::<V>(V::E::zero());
        let sum = TwoSums { sum: zero, error: zero };
        TargetSums { max: splat::<V>(max), sums: [sum; 2], group: [zero; 2], trees: 0 }
    }

    /// `U` vectors of targets `t` at logits `z`, as a tree. The gap's terms are `t (max - z)`
    /// where `t` is not 0 (a zero target counts 0, on a -inf logit too).
    #[inline(always)]
    unsafe fn add<const U: usize>(&mut self, t: [V; U], z: [V; U]) {
        let zero = splat::<V>(V::E::zero());
        let mut gaps = t;
        for (g, &z) in gaps.iter_mut().zip(&z) {
            *g = V::fmadd_nonzero(*g, V::sub(self.max, z), zero);
        }
        let trees = [tree(t), tree(gaps)];
        for (g, tree) in self.group.iter_mut().zip(trees) {
            *g = if self.trees == 0 { tree } else { V::add(*g, tree) };
        }
        self.trees += 1;
        if self.trees == TREES {
            self.end_group();
        }
    }

    /// The group in hand into the running sums.
    #[inline(always)]
    unsafe fn end_group(&mut self) {
        if self.trees > 0 {
            self.sums[0].add(self.group[0]);
            self.sums[1].add(self.group[1]);
            self.trees = 0;
        }
    }

    /// Adds elements `i..n` (`i` at a multiple of eight vectors) of the targets at `t` and
    /// the logits at `z`, and gives the two sums.
    #[inline(always)]
    unsafe fn rest<L: Storage<V>>(mut self, t: *const V::E, z: *const L::S, mut i: usize, n: usize) -> (V::E, V::E) {
        while i + 8 * V::N <= n {
            self.add::<8>(load_vectors::<V, Plain, 8>(t.add(i)), load_vectors::<V, L, 8>(z.add(i)));
            i += 8 * V::N;
        }
        // The rest (fewer than eight vectors) as one tree, the smallest that holds it.
        let rest = n - i;
        if rest > 4 * V::N {
            self.add_rest::<L, 8>(t, z, i, n);
        } else if rest > 2 * V::N {
            self.add_rest::<L, 4>(t, z, i, n);
        } else if rest > V::N {
            self.add_rest::<L, 2>(t, z, i, n);
        } else if rest > 0 {
            self.add_rest::<L, 1>(t, z, i, n);
        }
        self.end_group();
        let [sum, gap] = self.sums;
        (sum.value(), gap.value())
    }

    /// Elements `i..n` (at most `U` vectors), the lanes past `n` a zero target (which counts
    /// nothing).
    #[inline(always)]
    unsafe fn add_rest<L: Storage<V>, const U: usize>(&mut self, t: *const V::E, z: *const L::S, i: usize, n: usize) {
        let zero = V::E::zero();
        self.add::<U>(load_up_to::<V, Plain, U>(t.add(i), n - i, zero), load_up_to::<V, L, U>(z.add(i), n - i, zero));
    }
}

/// The sum of `x`'s vectors as a balanced tree (`U` a power of two).
#[inline(always)]
unsafe fn tree<V: Vector, const U: usize>(mut x: [V; U]) -> V {
    let mut width = U;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            x[k] = V::add(x[k], x[k + width]);
        }
    }
    x[0]
}

/// A tile's dense targets (in the compute type) and where [`tile_lanes`] puts their sums.
pub type TargetsAndSums<'a, E> = (*const E, &'a mut [[E; 16]; 2]);

/// Per-lane statistics of 16 narrow rows (lane `r` of part `h` is row `h · V::N + r`) of
/// `classes` (1 ..= [`MAX_CLASSES`]) elements each, stored one after another from `z` as `L`
/// stores them (half types are widened as the columns are formed): a row of ten classes
/// gives a loop along the row nothing to do, so the loops run across rows instead, one
/// column at a time, the `H = 16 / V::N` parts side by side (their chains of dependent steps
/// overlap). Writes, per row, the maximum (NaN for a row with NaN), the index of its first
/// occurrence (as a float), and the mass off the maximum, `Σ_{j≠argmax} exp(z_j - max)`, as a
/// Kahan sum and its carry (`sum - carry`): into `out[0..4][row]`. With `exps`, also
/// `exp(z_j - max)` of every element (1 at the maximum), into `exps[j][row]`: a gradient or
/// a softmax then costs no second exp. With `targets` (a dense row's targets `t`, in the
/// compute type), also their sums `(Σ_{j≠argmax} t_j, Σ_{t_j≠0} t_j (max - z_j))` into its
/// `[0..2][row]` (unspecified for rows without a finite maximum).
///
/// # Safety
/// `z` (and `targets`) are valid for `16 · classes` reads, `H · V::N == 16`; the CPU has the
/// tier's features.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // (part h of several arrays: indexing reads best)
pub unsafe fn tile_lanes<V: Vector, L: Storage<V>, const H: usize>(
    z: *const L::S,
    classes: usize,
    out: &mut [[V::E; 16]; 4],
    mut exps: Option<&mut [[V::E; 16]]>,
    targets: Option<TargetsAndSums<V::E>>,
) {
    debug_assert!((1..=MAX_CLASSES).contains(&classes) && H * V::N == 16);
    let part = V::N * classes;
    let mut cols = [[MaybeUninit::<V>::uninit(); MAX_CLASSES]; H];
    for (h, cols) in cols.iter_mut().enumerate() {
        L::columns(z.add(h * part), classes, (H - h) * part, cols);
    }
    let col = |h: usize, j: usize| cols[h][j].assume_init();
    let mut target_cols = [[MaybeUninit::<V>::uninit(); MAX_CLASSES]; H];
    if let Some((t, _)) = targets {
        for (h, cols) in target_cols.iter_mut().enumerate() {
            V::columns(t.add(h * part), classes, (H - h) * part, cols);
        }
    }
    let mut max = [splat::<V>(V::E::neg_infinity()); H];
    // A bit per row.
    let mut nan = 0u64;
    for j in 0..classes {
        for h in 0..H {
            max[h] = V::max_num(col(h, j), max[h]);
            nan |= V::unord_mask(col(h, j), col(h, j)) << (h * V::N);
        }
    }
    // Backwards, so that the last match is the first occurrence.
    let mut argmax = [splat::<V>(V::E::zero()); H];
    for j in (0..classes).rev() {
        let index = splat::<V>(V::E::from_f64(j as f64));
        for h in 0..H {
            argmax[h] = V::select_eq(col(h, j), max[h], index, argmax[h]);
        }
    }
    let zero = splat::<V>(V::E::zero());
    let mut rest = [KahanSum { sum: zero, carry: zero }; H];
    for j in 0..classes {
        let index = splat::<V>(V::E::from_f64(j as f64));
        for h in 0..H {
            let term = Compensated { shift: max[h] }.exp::<false>(col(h, j));
            rest[h].add(V::select_eq(index, argmax[h], zero, term));
            if let Some(e) = exps.as_deref_mut() {
                V::store(e[j].as_mut_ptr().add(h * V::N), term);
            }
        }
    }
    if let Some((_, sums)) = targets {
        // Plain sums, the even and the odd columns apart: chains of up to 8 roundings for the
        // rows of up to 16 classes that take this (the row kernel's tree of lanes has about
        // 4 levels; the losses' worst error measured 2.62 ulp against 2.27 with it).
        let mut acc = [[(zero, zero); 2]; H];
        for start in 0..2 {
            for j in (start..classes).step_by(2) {
                let index = splat::<V>(V::E::from_f64(j as f64));
                for h in 0..H {
                    let t = target_cols[h][j].assume_init();
                    let (others, gap) = &mut acc[h][start];
                    *others = V::add(*others, V::select_eq(index, argmax[h], zero, t));
                    *gap = V::fmadd_nonzero(t, V::sub(max[h], col(h, j)), *gap);
                }
            }
        }
        for h in 0..H {
            let [(others0, gap0), (others1, gap1)] = acc[h];
            V::store(sums[0].as_mut_ptr().add(h * V::N), V::add(others0, others1));
            V::store(sums[1].as_mut_ptr().add(h * V::N), V::add(gap0, gap1));
        }
    }
    for h in 0..H {
        let row = h * V::N;
        V::store(out[0].as_mut_ptr().add(row), max[h]);
        V::store(out[1].as_mut_ptr().add(row), argmax[h]);
        V::store(out[2].as_mut_ptr().add(row), rest[h].sum);
        V::store(out[3].as_mut_ptr().add(row), rest[h].carry);
    }
    while nan != 0 {
        out[0][nan.trailing_zeros() as usize] = V::E::nan();
        nan &= nan - 1;
    }
}

/// `out_j = exp(x_j)` over a slice (the vector `exp` on its own, for the tests).
#[cfg(test)]
#[inline(always)]
pub unsafe fn exp_slice<V: Vector>(x: &[V::E], out: &mut [V::E]) {
    let n = x.len().min(out.len());
    let (p, o, w) = (x.as_ptr(), out.as_mut_ptr(), V::N);
    let mut i = 0;
    while i + w <= n {
        V::store(o.add(i), exp::<V, true>(V::load(p.add(i))));
        i += w;
    }
    if i < n {
        V::store_partial(o.add(i), n - i, exp::<V, true>(V::load_partial(p.add(i), n - i, V::E::zero())));
    }
}

#[cfg(test)]
pub(crate) mod tests;
