//! Narrow rows, sixteen at a time: a row of ten classes gives a SIMD loop along the row nothing
//! to do (its setup, tail and horizontal sums cost more than its arithmetic), so the max, the
//! exps and the sums of a tile of 16 rows run across rows, one lane per row. The SIMD tiers
//! do it on their vectors (`super::simd::tile_lanes`, columns transposed four at a time on
//! AVX-512 and AVX2, gathered on NEON); the portable tier here on a tile transposed in L1
//! (`tile[j][r]` is element `j` of row `r`), plain Rust over fixed-width lanes. Both finish
//! with the lane-wise `log1p` below. Float64 rows of up to 64 classes take the same SIMD tiles
//! on x86 (`tile_stats_f64`), with the `log1p` the row path takes. Also here: widening
//! float16 rows to f32 with F16C.
//!
//! Accuracy: the portable tiles' `exp` is within 1 ulp (a degree-7 Taylor polynomial after a
//! two-constant Cody-Waite reduction, exact subnormal scaling, checked exhaustively), and the
//! `log1p` is computed in f64 (within 1 ulp of every f32, checked exhaustively).

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::simd::{Storage, Vector};
use crate::dispatch::tier;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::dispatch::Tier;

/// Rows per tile: one AVX-512 vector of f32.
pub const LANES: usize = 16;
/// The widest row any tier's tiled path takes (see [`max_classes`]): the size of a tile's
/// column arrays.
pub const MAX_CLASSES: usize = 128;

/// The widest row the tiled path takes on the tier in use; wider rows go one at a time.
/// Sparse float32, 128 MiB of logits, 2 threads:
/// - AVX2 (Zen 3): tiles took 33-class rows in 43 ms against 108 one at a time and 64-class
///   rows in 40 against 53 (gathered columns); with transposed columns, 96-class rows in 34
///   against 45 (bfloat16 30 against 52), and a tie at 128 classes, where the float32
///   gradient into `grad_out` ran slower in tiles: 96.
/// - AVX-512 (Zen 4, transposed columns): 112 classes 16 against 27 ms (bfloat16 13 against
///   28), 128 classes 16.5 against 24 (bfloat16 13 against 25), the float32 gradient into
///   `grad_out` a tie at 128 and slower from 160 (26-27 against 24 ms): 128.
/// - NEON and the portable tier: unmeasured past 64; 96, as AVX2.
pub fn max_classes() -> usize {
    #[cfg(target_arch = "x86_64")]
    if tier() == Tier::Avx512 {
        return MAX_CLASSES;
    }
    96
}

/// The statistics of the rows of a tile (see `crate::rows::RowStats`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TileStats {
    pub max: [f32; LANES],
    pub argmax: [u32; LANES],
    pub rest: [f64; LANES],
    pub log_rest: [f32; LANES],
    /// Where dense targets came with the tile, their sums (see
    /// [`crate::rows::RowStats::target_sums`]), row `r`'s in `[0][r]` and `[1][r]`.
    pub target_sums: [[f32; LANES]; 2],
}

impl TileStats {
    /// The sparse losses of the tile's rows of `classes` elements (see
    /// `Float::tile_sparse_losses`), `z_at(r, j)` reading element `j` of row `r`.
    #[inline(always)]
    pub fn sparse_losses(
        &self,
        classes: usize,
        labels: &[usize; LANES],
        z_at: impl Fn(usize, usize) -> f32,
        out: &mut [f32],
    ) -> bool {
        let mut plain = true;
        for (r, (o, &label)) in out.iter_mut().zip(labels).enumerate() {
            let s = self.row(r);
            let counted = label < classes;
            plain &= !counted || s.is_plain();
            *o = if counted { crate::rows::sparse_plain(z_at(r, label), &s) } else { 0.0 };
        }
        plain
    }

    /// Row `r`'s statistics.
    #[inline(always)]
    pub fn row(&self, r: usize) -> crate::rows::RowStats<f32> {
        crate::rows::RowStats {
            max: self.max[r],
            argmax: self.argmax[r] as usize,
            rest: self.rest[r],
            log_rest: self.log_rest[r],
            target_sums: None,
        }
    }
}

/// `exp(x)` for one lane and `x <= 0` or `-inf` (a logit minus its row's maximum): within
/// 1 ulp, subnormal results correctly rounded, 0 below -103.97. NaN never reaches it (rows with
/// NaN are answered before any exp), so it spends nothing on NaN.
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // 11 bits: n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Below -104 every result rounds to 0, which the scaling below produces by itself.
    let xc = x.max(-104.0);
    // n = round(x log2 e) by the 1.5 * 2^23 trick: the integer lands in the low mantissa
    // bits, read without a float-to-int conversion (which would not vectorise).
    const MAGIC: f32 = 12_582_912.0;
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let ni = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // e^r on |r| <= ln2/2: Taylor to degree 7 (truncation < 5e-9, below half an ulp).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // p * 2^n as p * 2^(n+64) * 2^-64: the first factor is a normal number for every
    // n in [-150, 0], and the last product rounds once, into the subnormals if it must.
    let scale = f32::from_bits(((ni + 64 + 127) as u32) << 23);
    p * scale * f32::from_bits((127 - 64) << 23)
}

/// `log1p(x)` for `x >= 0` (and NaN, +inf), in f64: `log(1 + x)` by exponent and a series of
/// `atanh` on the mantissa, plus the rounding error of `1 + x`. Branch-free, so it
/// vectorises.
#[inline(always)]
pub(crate) fn log1p_lane(x: f64) -> f32 {
    let u = 1.0 + x;
    // log(1 + x) = log(u) + c / u with c the rounding error of `u`. c / u only matters (at
    // the f32 result's precision) when x is small, where 1 / u = 1 - x + O(x²): a product
    // instead of a second division (from x = 1 on, c / u is below 2^-53 of the result).
    let correction = (x - (u - 1.0)) * (1.0 - x).max(0.0);
    let bits = u.to_bits();
    // Mantissa in [sqrt(1/2), sqrt(2)): shift the exponent so that log(f) stays small.
    let big = (bits & 0x000f_ffff_ffff_ffff) > 0x0006_a09e_667f_3bcd; // mantissa > sqrt(2)
    let e = ((bits >> 52) as i64 & 0x7ff) - 1023 + big as i64;
    let f = f64::from_bits(
        (bits & 0x000f_ffff_ffff_ffff) | if big { 0x3fe0_0000_0000_0000 } else { 0x3ff0_0000_0000_0000 },
    );
    let s = (f - 1.0) / (f + 1.0);
    let s2 = s * s;
    let log_f = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))));
    let y = e as f64 * std::f64::consts::LN_2 + log_f + correction;
    (if x.is_nan() || x == f64::INFINITY { x } else { y }) as f32
}

/// A tier's [`tile_stats`], for the tests.
#[cfg(test)]
pub(crate) type TileStatsFn = unsafe fn(&[f32], usize, &mut TileStats, Option<&mut [Column]>, Option<&[f32]>);

/// A tile transposed: `tile[j][r]` is element `j` of row `r`.
type Tile = [Column; MAX_CLASSES];
/// Element `j` of each of the 16 rows of a tile.
pub type Column = [f32; LANES];

/// Transposes 16 rows of `classes` elements, stored one after another in `z`, into `tile`.
#[inline(always)]
fn transpose_generic(z: &[f32], classes: usize, tile: &mut Tile) {
    for (j, col) in tile.iter_mut().enumerate().take(classes) {
        for (r, x) in col.iter_mut().enumerate() {
            *x = z[r * classes + j];
        }
    }
}

/// The statistics of the 16 rows of a transposed tile. Rows with NaN get a NaN max. With
/// `exps`, also `exp(z_j - max)` of every element, transposed as the tile; with `targets`
/// (transposed as the tile), their sums.
#[inline(always)]
fn stats_of_tile(
    tile: &Tile,
    classes: usize,
    out: &mut TileStats,
    mut exps: Option<&mut [Column]>,
    targets: Option<&Tile>,
) {
    let tile = &tile[..classes];
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    for col in tile {
        for r in 0..LANES {
            nan[r] |= col[r].is_nan();
            max[r] = if col[r] > max[r] { col[r] } else { max[r] };
        }
    }
    // Walking the columns backwards, the last match is the first occurrence (and a plain
    // select vectorises, where "first match so far" would not).
    let mut argmax = [0u32; LANES];
    for (j, col) in tile.iter().enumerate().rev() {
        for r in 0..LANES {
            argmax[r] = if col[r] == max[r] { j as u32 } else { argmax[r] };
        }
    }
    // Summed in f64: a sum of up to 95 terms in f32 would add several ulp to the exps' 1 (the
    // loss of a confident row is this sum), and the f64 sum feeds the f64 `log1p` as it is.
    let mut rest = [0.0f64; LANES];
    for (j, col) in tile.iter().enumerate() {
        for r in 0..LANES {
            // `x - max` and its rounding error, as in the row kernels (TwoSum).
            let d = col[r] - max[r];
            let bv = d - col[r];
            let av = d - bv;
            let err = (col[r] - av) - (max[r] + bv);
            let err = if err.is_finite() { err } else { 0.0 };
            let e = exp_lane(d);
            let term = e + e * err;
            rest[r] += if argmax[r] == j as u32 { 0.0 } else { term as f64 };
            if let Some(exps) = exps.as_deref_mut() {
                exps[j][r] = term;
            }
        }
    }
    for r in 0..LANES {
        out.max[r] = if nan[r] { f32::NAN } else { max[r] };
        out.argmax[r] = argmax[r];
        out.rest[r] = rest[r];
        out.log_rest[r] = log1p_lane(rest[r]);
    }
    // Summed in f64 too, each term rounded far below the f32 results' precision.
    if let Some(targets) = targets {
        let (mut others, mut gap) = ([0.0f64; LANES], [0.0f64; LANES]);
        for (j, (t, z)) in targets.iter().zip(tile).enumerate() {
            for r in 0..LANES {
                others[r] += if argmax[r] == j as u32 { 0.0 } else { t[r] as f64 };
                gap[r] += if t[r] == 0.0 { 0.0 } else { t[r] as f64 * (max[r] as f64 - z[r] as f64) };
            }
        }
        out.target_sums = [others.map(|x| x as f32), gap.map(|x| x as f32)];
    }
}

/// [`tile_stats`] on a SIMD tier's vectors `V`, `H` to a tile (see
/// `super::simd::tile_lanes`: max, argmax, Kahan sum and carry of the rest, and the target
/// sums where it takes targets), with the `log1p` of each row's rest; `z` stored as `L`
/// stores it.
///
/// # Safety
/// As `tile_lanes`, with `z` (and `targets`) of `LANES` rows of `classes` elements.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) unsafe fn tile_stats_on<V: Vector<E = f32>, L: Storage<V>, const H: usize>(
    z: &[L::S],
    classes: usize,
    out: &mut TileStats,
    exps: Option<&mut [Column]>,
    targets: Option<&[f32]>,
) {
    let (mut lanes, mut sums) = ([[0.0f32; LANES]; 4], [[0.0f32; LANES]; 2]);
    super::simd::tile_lanes::<V, L, H>(z.as_ptr(), classes, &mut lanes, exps, targets.map(|t| (t.as_ptr(), &mut sums)));
    if targets.is_some() {
        out.target_sums = sums;
    }
    #[allow(clippy::needless_range_loop)] // (lane r of four arrays: indexing reads best)
    for r in 0..LANES {
        let rest = lanes[2][r] as f64 - lanes[3][r] as f64;
        out.max[r] = lanes[0][r];
        // The class index (a whole number below 2^23) read from the mantissa of `x + 2^23`:
        // an add and a mask, where `as` saturates through a scalar conversion per lane.
        out.argmax[r] = (lanes[1][r] + 8_388_608.0).to_bits() & 0x7f_ffff;
        out.rest[r] = rest;
        out.log_rest[r] = log1p_lane(rest);
    }
}

fn check(z: &[f32], classes: usize, exps: &Option<&mut [Column]>, targets: Option<&[f32]>) {
    assert!((1..=MAX_CLASSES).contains(&classes) && z.len() == classes * LANES);
    assert!(exps.as_ref().is_none_or(|e| e.len() >= classes), "a column of exps per class");
    assert!(targets.is_none_or(|t| t.len() == z.len()), "a target per logit");
}

fn tile_stats_portable(
    z: &[f32],
    classes: usize,
    out: &mut TileStats,
    exps: Option<&mut [Column]>,
    targets: Option<&[f32]>,
) {
    let mut tile: Tile = [[0.0; LANES]; MAX_CLASSES];
    transpose_generic(z, classes, &mut tile);
    match targets {
        Some(t) => {
            let mut target_tile: Tile = [[0.0; LANES]; MAX_CLASSES];
            transpose_generic(t, classes, &mut target_tile);
            stats_of_tile(&tile, classes, out, exps, Some(&target_tile))
        }
        None => stats_of_tile(&tile, classes, out, exps, None),
    }
}

/// The statistics of 16 rows of `classes` (1 ..= MAX_CLASSES) elements each, stored one
/// after another in `z`, with the code compiled for the tier in use; with `exps` (at least
/// `classes` columns), also `exps[j][r] = exp(z_j - max)` of row `r` (1 at the maximum;
/// unspecified for rows without a finite maximum); with `targets` (a dense row's targets for
/// each row of `z`, stored as `z`), also their sums, `out.target_sums`.
pub fn tile_stats(
    z: &[f32],
    classes: usize,
    out: &mut TileStats,
    exps: Option<&mut [Column]>,
    targets: Option<&[f32]>,
) {
    check(z, classes, &exps, targets);
    match tier() {
        // SAFETY: `tier()` only reports tiers whose features the CPU has; `check` holds.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => unsafe { super::x86::tile_stats_avx512(z, classes, out, exps, targets) },
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { super::x86::tile_stats_avx2(z, classes, out, exps, targets) },
        #[cfg(target_arch = "aarch64")]
        Tier::Neon => unsafe { super::neon::tile_stats_neon(z, classes, out, exps, targets) },
        _ => tile_stats_portable(z, classes, out, exps, targets),
    }
}

/// The widest float64 row the tiled path takes; wider rows go one at a time. Float64 tiles
/// are x86 only, so far (NEON's two-lane vectors would want eight to a tile). AVX-512 (Zen 4),
/// 10 to 16 million elements, two threads, sparse forward / its gradient into `grad_out`,
/// tiles against rows one at a time (fastest of 15, the builds' calls interleaved): 10
/// classes 17.4 / 29.3 ms against 93.2 / 100.1; 32: 22.0 / 35.7 against 52.7 / 58.1; 64: 22.0
/// / 35.5 against 29.8 / 38.2. At 96 classes the gradient ran slower as tiles (31 against
/// 23 ms, fastest of 9, one run of each build), at 128 too, the forward the same.
#[cfg(target_arch = "x86_64")]
pub const F64_MAX_CLASSES: usize = 64;

/// Whether float64 rows of `classes` go in tiles on the tier in use.
#[cfg(target_arch = "x86_64")]
pub fn tiles_f64(classes: usize) -> bool {
    matches!(tier(), Tier::Avx512 | Tier::Avx2) && (1..=F64_MAX_CLASSES).contains(&classes)
}

/// `Float::tile_stats` for float64 rows (only called where [`tiles_f64`]): the SIMD tier's
/// `tile_lanes` on f64 vectors, with the `log1p` of each row's rest as the row path takes it.
#[cfg(target_arch = "x86_64")]
pub fn tile_stats_f64(
    z: &[f64],
    classes: usize,
    out: &mut [crate::rows::RowStats<f64>],
    exps: Option<&mut [f64]>,
    targets: Option<&[f64]>,
) {
    assert!(tiles_f64(classes) && z.len() == classes * LANES && out.len() == LANES, "a tile of rows");
    assert!(targets.is_none_or(|t| t.len() == z.len()) && exps.as_ref().is_none_or(|e| e.len() == z.len()));
    let (mut lanes, mut sums) = ([[0.0f64; LANES]; 4], [[0.0f64; LANES]; 2]);
    // The exps' columns, where asked for (only those in use are set: zeroing all of them
    // would write 8 KiB a tile).
    let mut storage = [std::mem::MaybeUninit::<[f64; LANES]>::uninit(); F64_MAX_CLASSES];
    let mut columns = exps.is_some().then(|| {
        for c in &mut storage[..classes] {
            c.write([0.0; LANES]);
        }
        // SAFETY: the first `classes` columns were just written, and `MaybeUninit<T>` has the
        // layout of `T`.
        unsafe { &mut *(&mut storage[..classes] as *mut [_] as *mut [[f64; LANES]]) }
    });
    let cols = columns.as_deref_mut();
    let targets_and_sums = targets.map(|t| (t.as_ptr(), &mut sums));
    match tier() {
        // SAFETY: `tier()` only reports tiers whose features the CPU has; the sizes are
        // checked above.
        Tier::Avx512 => unsafe { super::x86::tile_lanes_f64_avx512(z, classes, &mut lanes, cols, targets_and_sums) },
        Tier::Avx2 => unsafe { super::x86::tile_lanes_f64_avx2(z, classes, &mut lanes, cols, targets_and_sums) },
        _ => unreachable!("no float64 tiles on this tier"),
    }
    if let (Some(exps), Some(columns)) = (exps, columns) {
        for (r, row) in exps.chunks_exact_mut(classes).enumerate() {
            for (j, e) in row.iter_mut().enumerate() {
                *e = columns[j][r];
            }
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let rest = lanes[2][r] - lanes[3][r];
        *o = crate::rows::RowStats {
            max: lanes[0][r],
            argmax: lanes[1][r] as usize,
            rest,
            log_rest: rest.ln_1p(),
            target_sums: targets.map(|_| (sums[0][r], sums[1][r])),
        };
    }
}

/// float16 bits to f32, eight at a time with F16C where the CPU has it (`half`'s own slice
/// conversion calls a function per eight elements, which costs a third of a pass).
pub fn widen_f16(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX (checked just above).
        return unsafe { widen_f16_f16c(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let body = n - n % 8;
    for i in (0..body).step_by(8) {
        // SAFETY: i + 8 <= n for both slices.
        let halves = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(halves));
    }
    for i in body..n {
        dst[i] = half::f16::from_bits(src[i]).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_diff(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_lane_is_within_one_ulp() {
        // Every 679th f32 from -104 to 0 (over a billion values would be every one).
        let mut worst = 0;
        let mut bits = (-104.0f32).to_bits();
        while f32::from_bits(bits) < 0.0 {
            let x = f32::from_bits(bits);
            let want = ((x as f64).exp()) as f32;
            worst = worst.max(ulp_diff(exp_lane(x), want));
            bits -= 7 * 97;
        }
        assert!(worst <= 1, "worst {worst} ulp");
        assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_lane(-200.0), 0.0);
        assert_eq!(exp_lane(0.0), 1.0);
        assert_eq!(exp_lane(-103.98), 0.0);
    }

    #[test]
    fn log1p_lane_is_within_one_ulp() {
        // f64 arguments (the rows' sums), most of them between two f32 values; from where the
        // results are subnormal f32.
        let mut worst = 0;
        let mut x = 1e-50f64;
        while x < 1e30 {
            worst = worst.max(ulp_diff(log1p_lane(x), x.ln_1p() as f32));
            x *= 1.000_700_3;
        }
        assert!(worst <= 1, "worst {worst} ulp");
        assert_eq!(log1p_lane(0.0), 0.0);
        assert!(log1p_lane(f64::NAN).is_nan());
        assert_eq!(log1p_lane(f64::INFINITY), f32::INFINITY);
    }

    #[test]
    fn tile_matches_rows() {
        #[allow(unused_mut)]
        let mut impls: Vec<(&str, TileStatsFn)> = vec![("portable", tile_stats_portable as TileStatsFn)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                impls.push(("avx512", super::super::x86::tile_stats_avx512));
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                impls.push(("avx2", super::super::x86::tile_stats_avx2));
            }
        }
        #[cfg(target_arch = "aarch64")]
        impls.push(("neon", super::super::neon::tile_stats_neon));
        for classes in [1usize, 2, 3, 10, 17, 31, 32, 33, 48, 63, 64, 65, 95, 96, 97, 127, 128] {
            let mut z: Vec<f32> = (0..classes * LANES).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
            z[3 * classes] = f32::NAN;
            // (In the last part of the tile on every tier: rows 8..16 of AVX2, 12..16 of NEON.)
            z[12 * classes + classes / 2] = f32::NAN;
            z[5 * classes] = f32::NEG_INFINITY;
            // A tie for the maximum: the first occurrence counts, the other is in the rest.
            z[7 * classes] = 100.0;
            z[8 * classes - 1] = 100.0;
            // Targets: zeros (also on the -inf logit of row 5, which count nothing), negative
            // ones, and in row 9 a target on a -inf logit (+inf) and in row 10 an infinite one.
            let mut t: Vec<f32> =
                (0..classes * LANES).map(|i| [0.0, 0.25, -0.5, 1.5, 0.0][i % 5] * (i % 7) as f32).collect();
            t[5 * classes] = 0.0;
            z[9 * classes + classes - 1] = f32::NEG_INFINITY;
            t[9 * classes + classes - 1] = 0.5;
            t[10 * classes] = f32::INFINITY;
            for (name, f) in &impls {
                let mut stats = TileStats::default();
                let mut exps = [[f32::NAN; LANES]; MAX_CLASSES];
                // SAFETY: the CPU has the features (checked above); z and t hold LANES rows.
                unsafe { f(&z, classes, &mut stats, Some(&mut exps[..classes]), Some(&t)) };
                for (r, row) in z.chunks(classes).enumerate() {
                    let (m, k) = crate::kernels::scalar::max_argmax(row);
                    if m.is_nan() {
                        assert!(stats.max[r].is_nan(), "{name}");
                        continue;
                    }
                    // The exps (of rows with a finite maximum): within 2 ulp of exp(z_j - max),
                    // 1 at the maximum.
                    for (j, &x) in row.iter().enumerate().filter(|_| m.is_finite()) {
                        let want = (x as f64 - m as f64).exp();
                        let got = exps[j][r] as f64;
                        let tolerance = 2.0 * f32::EPSILON as f64 * want + 2.0 * f32::from_bits(1) as f64;
                        assert!((got - want).abs() <= tolerance, "{name}: {got} vs {want}");
                    }
                    assert!(!m.is_finite() || exps[k][r] == 1.0, "{name}");
                    assert_eq!((stats.max[r], stats.argmax[r] as usize), (m, k), "{name}, {classes} classes, row {r}");
                    let rest: f64 = row
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != k)
                        .map(|(_, &x)| (x as f64 - m as f64).exp())
                        .sum();
                    let err = (stats.rest[r] - rest).abs();
                    assert!(err <= 2e-7 * rest.max(f64::MIN_POSITIVE), "{name}, {classes} classes, row {r}: {err}");
                    assert_eq!(stats.log_rest[r], log1p_lane(stats.rest[r]), "{name}");
                    // The target sums (of rows with a finite maximum), against f64 (each term
                    // rounded once, then summed).
                    if !m.is_finite() {
                        continue;
                    }
                    let y = &t[r * classes..(r + 1) * classes];
                    let others: f64 = y.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, &x)| x as f64).sum();
                    let gap: f64 =
                        y.iter().zip(row).filter(|(&tj, _)| tj != 0.0).map(|(&tj, &x)| (tj * (m - x)) as f64).sum();
                    for (got, want, scale) in [
                        (stats.target_sums[0][r], others, y.iter().map(|x| x.abs() as f64).sum::<f64>()),
                        (
                            stats.target_sums[1][r],
                            gap,
                            y.iter()
                                .zip(row)
                                .filter(|(&tj, _)| tj != 0.0)
                                .map(|(&tj, &x)| (tj * (m - x)).abs() as f64)
                                .sum(),
                        ),
                    ] {
                        let ok = if want.is_finite() {
                            (got as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * scale
                        } else {
                            got as f64 == want || (got.is_nan() && want.is_nan())
                        };
                        assert!(ok, "{name}, {classes} classes, row {r}: target sum {got} vs {want}");
                    }
                }
            }
        }
    }

    /// The float64 tiles of each x86 tier against the rows one at a time in f64: the maximum
    /// and its first index, the exps within 2ε relatively (1 at the maximum), the rest within 4ε,
    /// the target sums; special rows as above, and a confident one (a rest of ~1e-304).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f64_tiles_match_rows() {
        use super::super::simd::TargetsAndSums;
        type LanesF64 =
            unsafe fn(&[f64], usize, &mut [[f64; LANES]; 4], Option<&mut [[f64; LANES]]>, Option<TargetsAndSums<f64>>);
        let mut impls: Vec<(&str, LanesF64)> = vec![];
        if std::arch::is_x86_feature_detected!("avx512f") {
            impls.push(("avx512", super::super::x86::tile_lanes_f64_avx512));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            impls.push(("avx2", super::super::x86::tile_lanes_f64_avx2));
        }
        let eps = f64::EPSILON;
        for classes in [1usize, 2, 3, 10, 17, 31, 32, 33, 48, 63, 64] {
            let mut z: Vec<f64> = (0..classes * LANES).map(|i| ((i * 37 % 101) as f64 - 50.0) * 0.37).collect();
            z[3 * classes] = f64::NAN;
            z[12 * classes + classes / 2] = f64::NAN; // (in the last vector of the tile)
            z[5 * classes] = f64::NEG_INFINITY;
            z[7 * classes] = 100.0;
            z[8 * classes - 1] = 100.0;
            z[11 * classes..12 * classes].fill(-700.0);
            z[11 * classes + classes / 3] = 0.0;
            let mut t: Vec<f64> =
                (0..classes * LANES).map(|i| [0.0, 0.25, -0.5, 1.5, 0.0][i % 5] * (i % 7) as f64).collect();
            t[5 * classes] = 0.0;
            z[9 * classes + classes - 1] = f64::NEG_INFINITY;
            t[9 * classes + classes - 1] = 0.5;
            t[10 * classes] = f64::INFINITY;
            for (name, f) in &impls {
                let (mut lanes, mut sums) = ([[f64::NAN; LANES]; 4], [[f64::NAN; LANES]; 2]);
                let mut exps = [[f64::NAN; LANES]; MAX_CLASSES];
                // SAFETY: the CPU has the features (checked above); z and t hold LANES rows.
                unsafe { f(&z, classes, &mut lanes, Some(&mut exps[..classes]), Some((t.as_ptr(), &mut sums))) };
                for (r, row) in z.chunks(classes).enumerate() {
                    let what = format!("{name}, {classes} classes, row {r}");
                    let (m, k) = crate::kernels::scalar::max_argmax(row);
                    if m.is_nan() {
                        assert!(lanes[0][r].is_nan(), "{what}");
                        continue;
                    }
                    assert_eq!((lanes[0][r], lanes[1][r] as usize), (m, k), "{what}");
                    if !m.is_finite() {
                        continue;
                    }
                    // `exp(x - m)` with the rounding error of `x - m` folded back in.
                    let exp_of = |x: f64| {
                        let (d, err) = crate::kernels::scalar::two_diff(x, m);
                        d.exp() * (1.0 + err)
                    };
                    for (j, &x) in row.iter().enumerate() {
                        let want = exp_of(x);
                        let tolerance = 2.0 * eps * want + 2.0 * f64::from_bits(1);
                        assert!((exps[j][r] - want).abs() <= tolerance, "{what}: exp {} vs {want}", exps[j][r]);
                    }
                    assert_eq!(exps[k][r], 1.0, "{what}");
                    let rest: f64 = row.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, &x)| exp_of(x)).sum();
                    let got = lanes[2][r] - lanes[3][r];
                    assert!((got - rest).abs() <= 4.0 * eps * rest, "{what}: rest {got} vs {rest}");
                    let y = &t[r * classes..(r + 1) * classes];
                    let others: f64 = y.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, &x)| x).sum();
                    let terms = || y.iter().zip(row).filter(|(&tj, _)| tj != 0.0).map(|(&tj, &x)| tj * (m - x));
                    let (gap, gap_scale) = (terms().sum::<f64>(), terms().map(f64::abs).sum::<f64>());
                    let others_scale = y.iter().map(|x| x.abs()).sum::<f64>();
                    for (got, want, scale) in [(sums[0][r], others, others_scale), (sums[1][r], gap, gap_scale)] {
                        let ok = if want.is_finite() {
                            (got - want).abs() <= 4.0 * eps * scale
                        } else {
                            got == want || (got.is_nan() && want.is_nan())
                        };
                        assert!(ok, "{what}: target sum {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Every f32 in [-104, 0] against f64's exp rounded to f32, and every non-negative f32
    /// against f64's log1p: `cargo test --release -- --ignored exhaustive`.
    #[test]
    #[ignore = "exhaustive: about a minute in release mode"]
    fn exhaustive_f32_exp_and_log1p() {
        use rayon::prelude::*;
        let exp_worst = ((-0.0f32).to_bits()..=(-104.0f32).to_bits())
            .into_par_iter()
            .map(|b| {
                let x = f32::from_bits(b);
                ulp_diff(exp_lane(x), ((x as f64).exp()) as f32)
            })
            .max()
            .unwrap();
        let log1p_worst = (0u32..f32::INFINITY.to_bits())
            .into_par_iter()
            .map(|b| {
                let x = f32::from_bits(b);
                ulp_diff(log1p_lane(x as f64), (x as f64).ln_1p() as f32)
            })
            .max()
            .unwrap();
        println!("exhaustive: exp within {exp_worst} ulp, log1p within {log1p_worst} ulp");
        assert!(exp_worst <= 1 && log1p_worst <= 1);
    }

    #[test]
    fn widen_f16_is_exact() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let mut out = vec![0.0f32; bits.len()];
        widen_f16(&bits, &mut out);
        for (&b, &o) in bits.iter().zip(&out) {
            let want = half::f16::from_bits(b).to_f32();
            assert!(o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()), "{b:#x}");
        }
    }
}
