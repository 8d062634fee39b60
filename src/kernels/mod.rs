//! Row kernels over contiguous slices of the compute type (`f32` or `f64`).
//!
//! Each SIMD tier provides the same primitives ([`RowKernels`]); the row math in `crate::rows` is written
//! once on top of them. Every tier has the scalar tier as its reference twin.

pub mod lanes;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use crate::dispatch::Tier;

/// The primitives every tier implements. Contracts (all tiers):
/// - `max_argmax(z)`: `(max, index of its first occurrence)`, or `(NaN, _)` if any element is
///   NaN. `z` is never empty.
/// - `sum_exp(z, shift, skip)`: `Σ_{j≠skip} exp(z_j - shift)` (`skip >= z.len()`: every
///   term), with `exp(-inf) = 0`, in f64 (not rounded to `F`: the callers add partial sums,
///   and `log1p` of the total keeps its extra bits). The skipped term is the row maximum's,
///   1, kept out so that a small rest keeps its bits. `sum_exp_store(z, shift, skip, out)`:
///   the same sum, bit for bit, also storing each term (the skipped one too) in `out`
///   (`out.len() == z.len()`). `sum_exp_targets(z, shift, skip, t, exps)`: `sum_exp`
///   (`sum_exp_store` into `exps` where given) and `target_sums(t, z, shift)`, each bit for
///   bit, in one pass over the row where the tier can (`t.len() == z.len()`; the scalar tier
///   makes the two calls). All three ask for their [`Ahead`] on the way (a hint: any tier may
///   ignore it).
/// - `exp_scaled(z, shift, scale, out)`: `out_j = exp(z_j - shift) * scale`; `out.len() == z.len()`.
///   `exp_scaled_stream`: the same bits, stored past the caches where the tier can.
/// - `scale(x, c, out)`: `out_j = x_j * c` (`out.len() == x.len()`); `scale_stream` as above.
/// - `target_sums(t, z, max)`: `(Σ t_j, Σ_{t_j≠0} t_j (max - z_j))`, the two sums of a dense
///   target row (a zero target on a -inf logit counts 0); `t.len() == z.len()`.
/// - `log_softmax(z, max, l, out)`: `out_j = (z_j - max) - l` (`l`, the row's `log1p` of its
///   rest, in f64), within half an ulp and a rounding of a term below the result's ulp, for a
///   row without NaN or +inf and a finite `max` not below any `z_j`; `-inf` where `z_j - max`
///   is (`out.len() == z.len()`).
///
/// `sum_exp`, `sum_exp_store`, `sum_exp_targets` and `exp_scaled` are only called on rows
/// without NaN, with a finite `shift` not below any `z_j` (the row's maximum). `exp_scaled`
/// with a scale above 1 keeps its bound where the exps alone would be subnormal (the row math
/// relies on it: see `rows::reusable`).
pub struct RowKernels<F> {
    pub tier: Tier,
    pub max_argmax: fn(&[F]) -> (F, usize),
    pub sum_exp: fn(&[F], F, usize, Ahead) -> f64,
    pub sum_exp_store: fn(&[F], F, usize, &mut [F], Ahead) -> f64,
    pub sum_exp_targets: SumExpTargets<F>,
    pub exp_scaled: fn(&[F], F, F, &mut [F]),
    /// `exp_scaled` with its stores past the caches (where the tier can): for outputs far
    /// larger than the caches, written once and not read back soon.
    pub exp_scaled_stream: fn(&[F], F, F, &mut [F]),
    pub scale: fn(&[F], F, &mut [F]),
    pub scale_stream: fn(&[F], F, &mut [F]),
    pub target_sums: TargetSums<F>,
    pub log_softmax: fn(&[F], F, f64, &mut [F]),
}

/// Kernels over rows stored as `S` (a half type) with compute type `F`: the `max_argmax`,
/// `sum_exp` and `exp_scaled` of [`RowKernels`], reading the stored elements and widening
/// them as they load (`exp_scaled` also rounding its results as it stores them: the bits of
/// widening, `RowKernels::exp_scaled` and `narrow`, in one pass; `exp_scaled_stream` the same,
/// stored past the caches), for rows read a block at a time; `widen_max_argmax(src, dst)`,
/// `widen` and `max_argmax` in one pass, for rows widened whole; `exp_scaled_narrow` (and
/// `exp_scaled_narrow_stream`), `exp_scaled` from a row widened already; `scale_narrow(x, c,
/// out)`, the `scale` of `RowKernels` rounded as stored (and `scale_narrow_stream`);
/// `widen(src, dst)` and `narrow(src, dst)` (rounded to nearest even) for the passes that want
/// the compute type and the outputs (the same lengths); `tile_sparse_losses`, the
/// [`Float::tile_sparse_losses`] of a tile as stored (no widened copy).
/// Tiers without them use portable code.
pub struct StoredKernels<S, F> {
    pub max_argmax: fn(&[S]) -> (F, usize),
    pub widen_max_argmax: fn(&[S], &mut [F]) -> (F, usize),
    pub sum_exp: fn(&[S], F, usize, Ahead) -> f64,
    pub exp_scaled: fn(&[S], F, F, &mut [S]),
    pub exp_scaled_stream: fn(&[S], F, F, &mut [S]),
    pub exp_scaled_narrow: fn(&[F], F, F, &mut [S]),
    pub exp_scaled_narrow_stream: fn(&[F], F, F, &mut [S]),
    pub scale_narrow: fn(&[F], F, &mut [S]),
    pub scale_narrow_stream: fn(&[F], F, &mut [S]),
    pub widen: fn(&[S], &mut [F]),
    pub narrow: fn(&[F], &mut [S]),
    pub tile_sparse_losses: fn(&[S], usize, &[usize; lanes::LANES], &mut [F]) -> bool,
}

/// The `skip` of [`RowKernels::sum_exp`] that keeps every term.
pub const NO_SKIP: usize = usize::MAX;

/// The signature of [`RowKernels::sum_exp_targets`].
pub type SumExpTargets<F> = fn(&[F], F, usize, &[F], Option<&mut [F]>, Ahead) -> (f64, (F, F));

/// The signature of [`RowKernels::target_sums`].
pub type TargetSums<F> = fn(&[F], &[F], F) -> (F, F);

/// Memory for a kernel to ask into the caches while it goes through its row, in step with it:
/// when it is done with a share of its elements, it has asked for that much of each region (a
/// long region from a lead on, see [`Ahead::stepper`]; the rest when it is done), into L2, and
/// into L1 too for rows with much to ask for (see `L1_AHEAD_MIN`). Asked
/// for while a row's exps are summed (the long pass: its maximum is taken from L2, too fast
/// for the lines to come): the next row's logits, and a dense row's labels (the next row's
/// where the pass sums them, the row's own where the row function reads them after). Asked
/// for while the maximum was taken instead, the labels came late to the pass that sums them:
/// dense float32 4096×32768 took 26-41% longer on Zen 4 (40-50 ms against 32-38, medians,
/// builds interleaved; one thread 72 against 49). Asked for a block at a time before each
/// kernel call, and the labels not at all, the float32 forward passes over 32768-class rows
/// ran slower on an AVX2 machine: see docs/performance.md.
#[derive(Clone, Copy, Debug)]
pub struct Ahead<'a> {
    regions: [&'a [u8]; 2],
    /// Bytes of each region per element of the row, in fixed point, set once per row by
    /// [`Ahead::along`] (without it, a kernel's steps ask for next to nothing, and its
    /// `finish` for everything).
    bytes_per_element: [u64; 2],
    /// Whether the lines go into L1 too (see `L1_AHEAD_MIN`); set by [`Ahead::along`].
    into_l1: bool,
}

/// Rows with at least this many bytes to ask for ahead (float32 rows of 49152 classes, float64
/// or dense float32 rows of 24576, dense float64 rows of 12288, split rows' parts) ask for them
/// into L1 as well as L2. Into L1, such rows took 9-17% less time on a Sapphire Rapids-class
/// Xeon (dense float32 4096×32768 43.3-44.6 against 49.7-50.9 ms, sparse float64 4096×32768
/// 51.1-51.5 against 61.2-62.4, float32 5461×49152 48.4 against 53.8; medians, builds' calls
/// interleaved; split rows the same either way), while rows of 160 KiB or less were up to 8%
/// slower (float32 6553×40960 and 8192×32768). Why is not known: that machine, a VM, exposes no
/// performance counters. Not measured on other machines (AVX2, Zen 4).
const L1_AHEAD_MIN: usize = 192 << 10;

/// Fraction bits of [`Ahead`]'s rates.
const RATE_BITS: u32 = 16;

impl<'a> Ahead<'a> {
    pub const NONE: Ahead<'static> = Ahead { regions: [&[], &[]], bytes_per_element: [0; 2], into_l1: false };

    /// These regions and `other`'s (two in all at most), before [`Ahead::along`].
    pub fn with(mut self, other: Ahead<'a>) -> Self {
        for r in other.regions.into_iter().filter(|r| !r.is_empty()) {
            *self.regions.iter_mut().find(|r| r.is_empty()).expect("two regions at most") = r;
        }
        self
    }

    /// These regions and `data` (two in all at most).
    pub fn and<T: crate::Element>(self, data: &'a [T]) -> Self {
        // SAFETY: the same memory as bytes: the element types (sealed) are numbers, without
        // padding.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) };
        self.with(Ahead { regions: [bytes, &[]], ..Ahead::NONE })
    }

    /// The regions, to be asked for along a row of `len` elements.
    pub fn along(mut self, len: usize) -> Self {
        let len = len.max(1) as u64;
        for (k, r) in self.regions.iter().enumerate() {
            let bytes = (r.len() as u64).max(1);
            // (Rounded up: the last element's share ends at the region's end.)
            self.bytes_per_element[k] = (bytes << RATE_BITS).div_ceil(len);
        }
        self.into_l1 = self.regions.iter().map(|r| r.len()).sum::<usize>() >= L1_AHEAD_MIN;
        self
    }

    /// The share of each region that elements `range` of the row take (see [`Ahead::along`]).
    #[inline]
    pub fn part(&self, range: std::ops::Range<usize>) -> Self {
        let mut part = *self;
        for (k, r) in part.regions.iter_mut().enumerate() {
            let at = |j: usize| (((j as u64 * self.bytes_per_element[k]) >> RATE_BITS) as usize).min(r.len());
            *r = &r[at(range.start)..at(range.end)];
        }
        part
    }

    /// The first `bytes` of each region.
    pub fn first(mut self, bytes: usize) -> Self {
        for r in self.regions.iter_mut() {
            *r = &r[..bytes.min(r.len())];
        }
        self
    }

    /// Whether its lines are to go into L1 too (see `L1_AHEAD_MIN`).
    pub fn into_l1(&self) -> bool {
        self.into_l1
    }

    /// Asks for all of it at once.
    pub fn prefetch(&self) {
        self.regions.iter().for_each(|r| prefetch(r));
    }

    /// A [`Prefetcher`] for a loop over the row's elements (or a part's) from `row` on.
    pub fn stepper(self, row: *const u8) -> Prefetcher<'a> {
        // A long region's lines are asked for half a page, in page offset, from the row's
        // loads of the time. Asked for in step from its start, the next row of rows a whole
        // number of pages long (32768 float32) put every hint at the page offset of the loads,
        // and the pass ran 25-30% slower in some builds: sparse float32 2048×32768 14.8 ms and
        // 1985×33792 15.6, but 2047×32784 11.7 (loads waiting on lines in flight that match
        // their low 12 address bits, presumably). Regions under 4 pages start at 0.
        let lead = self.regions.map(|r| {
            let apart = (r.as_ptr() as usize).wrapping_sub(row as usize);
            if r.len() >= 4 * PAGE {
                (PAGE / 2).wrapping_sub(apart) % PAGE
            } else {
                0
            }
        });
        Prefetcher { asked: lead, lead, ahead: self }
    }
}

/// Asks for an [`Ahead`]'s lines in step with a loop over the elements of its row.
pub struct Prefetcher<'a> {
    ahead: Ahead<'a>,
    /// Where each region's lines are asked for from (bytes into it), and how far they are
    /// asked for so far.
    lead: [usize; 2],
    asked: [usize; 2],
}

impl Prefetcher<'_> {
    /// Asks for each region's share of elements `..done` (shifted by its lead), at most `N`
    /// lines of it beyond those asked for already, in `N` hints without a loop or a branch on
    /// how many lines are due (where fewer are, the last line due is asked for again;
    /// `finish` asks for what is left).
    #[inline(always)]
    pub fn upto<const N: usize, const L1: bool>(&mut self, done: usize) {
        self.upto_with::<N>(done, prefetch_line::<L1>);
    }

    /// [`Prefetcher::upto`], asking `ask` for each line.
    #[inline(always)]
    fn upto_with<const N: usize>(&mut self, done: usize, ask: impl Fn(*const u8)) {
        for k in 0..2 {
            let r = self.ahead.regions[k];
            if self.asked[k] >= r.len() {
                continue;
            }
            // (One clamp, to the region: clamping the share first, as `Ahead::part` does, made
            // sparse float32 8192×32768 15% slower, 47-48 against 55 ms.)
            let due =
                (self.lead[k] + ((done as u64 * self.ahead.bytes_per_element[k]) >> RATE_BITS) as usize).min(r.len());
            let last = r.as_ptr().wrapping_add(due.max(1) - 1);
            for j in 0..N {
                ask(r.as_ptr().wrapping_add(self.asked[k] + j * LINE).min(last));
            }
            self.asked[k] = (self.asked[k] + N * LINE).min(due.max(self.asked[k]));
        }
    }

    /// Asks for the rest of each region.
    #[inline(always)]
    pub fn finish<const L1: bool>(&mut self) {
        self.finish_with(prefetch_line::<L1>);
    }

    /// [`Prefetcher::finish`], asking `ask` for each line.
    #[inline(always)]
    fn finish_with(&mut self, ask: impl Fn(*const u8)) {
        for k in 0..2 {
            let r = self.ahead.regions[k];
            // The region past what was asked for, then the bytes before its lead.
            (self.asked[k]..r.len()).step_by(LINE).for_each(|at| ask(r[at..].as_ptr()));
            (0..self.lead[k]).step_by(LINE).for_each(|at| ask(r[at..].as_ptr()));
            (self.asked[k], self.lead[k]) = (r.len(), 0);
        }
    }
}

/// The cache line size of the targets this crate is tuned for.
const LINE: usize = 64;
/// The page size of the targets this crate is tuned for.
const PAGE: usize = 4096;

/// Asks for `data` to be brought into L2, a cache line at a time.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    let bytes = std::mem::size_of_val(data);
    (0..bytes).step_by(LINE).for_each(|at| prefetch_line::<false>((data.as_ptr() as *const u8).wrapping_add(at)));
}

/// Asks for the cache line holding `p` to be brought into L2, and into L1 too if `L1` (a hint:
/// nothing happens on targets without the instruction).
#[inline(always)]
fn prefetch_line<const L1: bool>(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        if L1 {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        } else {
            _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Neumaier's compensated sum: the error stays at a few ulp whatever the number of terms.
#[derive(Clone, Copy, Default)]
pub struct CompensatedSum<F> {
    sum: F,
    carry: F,
}

impl<F: Float> CompensatedSum<F> {
    #[inline]
    pub fn add(&mut self, x: F) {
        let t = self.sum + x;
        self.carry = self.carry + if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
        self.sum = t;
    }

    #[inline]
    pub fn value(self) -> F {
        // An infinite term makes the carry NaN; the sum alone is then the answer.
        if self.sum.is_finite() {
            self.sum + self.carry
        } else {
            self.sum
        }
    }
}

/// The compute types: `f32` (for f16, bf16 and f32 data) and `f64`, element types themselves.
pub trait Float:
    num_traits::Float
    + num_traits::FloatConst
    + crate::Element<Compute = Self>
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `log1p(x)` of a row's off-maximum mass (`x >= 0`, NaN or +inf), rounded to `Self`.
    fn log1p_of(x: f64) -> Self {
        Self::from_f64(x.ln_1p())
    }
    /// The kernel table of the tier in use (chosen once per call by the caller).
    fn kernels() -> &'static RowKernels<Self>;
    /// Whether [`lanes`] handles rows of this type and width, sixteen at a time.
    fn tiles(_classes: usize) -> bool {
        false
    }
    /// The statistics of `lanes::LANES` rows stored one after another in `z` (only called
    /// when `tiles(classes)`); with `exps` (of `z`'s length), also `exp(z_j - max)` of each
    /// element of the rows with a finite maximum; with `targets` (targets for each row
    /// of `z`, stored as `z`), also their sums (`RowStats::target_sums`).
    fn tile_stats(
        _z: &[Self],
        _classes: usize,
        _out: &mut [crate::rows::RowStats<Self>],
        _exps: Option<&mut [Self]>,
        _targets: Option<&[Self]>,
    ) {
        unreachable!("no tiled path for this type")
    }
    /// The sparse losses ([`crate::rows::sparse_plain`]) of the `lanes::LANES` rows stored one
    /// after another in `z` (only called when `tiles(classes)`), 0 where a label is not below
    /// `classes` (an ignored row). False, with `out` unspecified, where a counted row's
    /// statistics are not plain (see `RowStats::is_plain`): it needs the row function.
    fn tile_sparse_losses(z: &[Self], classes: usize, labels: &[usize; lanes::LANES], out: &mut [Self]) -> bool {
        let mut stats = [crate::rows::RowStats::default(); lanes::LANES];
        Self::tile_stats(z, classes, &mut stats, None, None);
        let mut plain = true;
        for (r, ((o, &label), s)) in out.iter_mut().zip(labels).zip(&stats).enumerate() {
            let counted = label < classes;
            plain &= !counted || s.is_plain();
            *o = if counted { crate::rows::sparse_plain(z[r * classes + label], s) } else { Self::zero() };
        }
        plain
    }
    /// The dense losses ([`crate::rows::dense_plain`]) of the `lanes::LANES` rows stored one
    /// after another in `z` against their `targets` (stored as `z`; only called when
    /// `tiles(classes)`). False, with `out` unspecified, where a regular row's statistics are
    /// not plain (see `RowStats::is_plain`): it needs the row function.
    fn tile_dense_losses(z: &[Self], classes: usize, targets: &[Self], out: &mut [Self]) -> bool {
        let mut stats = [crate::rows::RowStats::default(); lanes::LANES];
        Self::tile_stats(z, classes, &mut stats, None, Some(targets));
        let mut plain = true;
        for ((o, y), s) in out.iter_mut().zip(targets.chunks_exact(classes)).zip(&stats) {
            plain &= !s.is_regular() || s.is_plain();
            let sums = s.target_sums.expect("the tile's target sums");
            *o = crate::rows::dense_plain(s, sums, y[s.argmax]);
        }
        plain
    }
}

impl Float for f32 {
    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    /// Within 1 ulp (checked for every f32 argument, and sampled over f64 ones), branch-free
    /// and cheaper than libm's, which took an eighth of the time of a row of 64 classes.
    #[inline]
    fn log1p_of(x: f64) -> f32 {
        lanes::log1p_lane(x)
    }
    fn kernels() -> &'static RowKernels<f32> {
        crate::dispatch::kernels_f32()
    }
    fn tiles(classes: usize) -> bool {
        (1..=lanes::max_classes()).contains(&classes)
    }
    fn tile_stats(
        z: &[f32],
        classes: usize,
        out: &mut [crate::rows::RowStats<f32>],
        exps: Option<&mut [f32]>,
        targets: Option<&[f32]>,
    ) {
        let mut t = lanes::TileStats::default();
        match exps {
            None => lanes::tile_stats(z, classes, &mut t, None, targets),
            Some(exps) => {
                // Only the columns in use are set: zeroing all 64 (4 KiB a tile, when that was
                // the limit) showed in profiles of 10-class gradients.
                let mut storage = [std::mem::MaybeUninit::<lanes::Column>::uninit(); lanes::MAX_CLASSES];
                for c in &mut storage[..classes] {
                    c.write([0.0; lanes::LANES]);
                }
                // SAFETY: the first `classes` columns were just written, and `MaybeUninit<T>`
                // has the layout of `T`.
                let columns = unsafe { &mut *(&mut storage[..classes] as *mut [_] as *mut [lanes::Column]) };
                lanes::tile_stats(z, classes, &mut t, Some(columns), targets);
                for (r, row) in exps.chunks_exact_mut(classes).enumerate() {
                    for (j, e) in row.iter_mut().enumerate() {
                        *e = columns[j][r];
                    }
                }
            }
        }
        for (r, o) in out.iter_mut().enumerate() {
            *o = crate::rows::RowStats {
                target_sums: targets.map(|_| (t.target_sums[0][r], t.target_sums[1][r])),
                ..t.row(r)
            };
        }
    }
    fn tile_sparse_losses(z: &[f32], classes: usize, labels: &[usize; lanes::LANES], out: &mut [f32]) -> bool {
        let mut t = lanes::TileStats::default();
        lanes::tile_stats(z, classes, &mut t, None, None);
        t.sparse_losses(classes, labels, |r, j| z[r * classes + j], out)
    }
    fn tile_dense_losses(z: &[f32], classes: usize, targets: &[f32], out: &mut [f32]) -> bool {
        let mut t = lanes::TileStats::default();
        lanes::tile_stats(z, classes, &mut t, None, Some(targets));
        let mut plain = true;
        for (r, (o, y)) in out.iter_mut().zip(targets.chunks_exact(classes)).enumerate() {
            let s = t.row(r);
            plain &= !s.is_regular() || s.is_plain();
            *o = crate::rows::dense_plain(&s, (t.target_sums[0][r], t.target_sums[1][r]), y[s.argmax]);
        }
        plain
    }
}

impl Float for f64 {
    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    fn kernels() -> &'static RowKernels<f64> {
        crate::dispatch::kernels_f64()
    }
    #[cfg(target_arch = "x86_64")]
    fn tiles(classes: usize) -> bool {
        lanes::tiles_f64(classes)
    }
    #[cfg(target_arch = "x86_64")]
    fn tile_stats(
        z: &[f64],
        classes: usize,
        out: &mut [crate::rows::RowStats<f64>],
        exps: Option<&mut [f64]>,
        targets: Option<&[f64]>,
    ) {
        lanes::tile_stats_f64(z, classes, out, exps, targets)
    }
}

#[cfg(test)]
mod tests {
    use super::{Ahead, L1_AHEAD_MIN, LINE, PAGE};
    use half::f16;

    /// The shares of consecutive ranges tile each region: every byte once, in order.
    #[test]
    fn ahead_parts_tile_the_regions() {
        let (a, b) = (vec![1f32; 1000], vec![f16::ONE; 37]);
        for len in [1, 7, 64, 1000, 4099] {
            let ahead = Ahead::NONE.and(&a).and(&b).along(len);
            let mut ends = [0usize; 2];
            for start in (0..len).step_by(13) {
                let part = ahead.part(start..(start + 13).min(len));
                for (r, (p, end)) in ahead.regions.iter().zip(part.regions.iter().zip(&mut ends)) {
                    assert_eq!(p.as_ptr(), r[*end..].as_ptr(), "len {len}, from {start}");
                    *end += p.len();
                }
            }
            assert_eq!(ends, [4000, 74], "len {len}");
            // A missing region has no part.
            let one = Ahead::NONE.and(&b).along(len).part(0..len);
            assert_eq!((one.regions[0].len(), one.regions[1].len()), (74, 0), "len {len}");
        }
    }

    /// Rows with `L1_AHEAD_MIN` bytes or more ahead, both regions counted, ask into L1, and
    /// so does a kernel's part of such a row; the first bytes of what comes next are a prefix.
    #[test]
    fn rows_with_much_ahead_ask_into_l1() {
        let (a, b) = (vec![0f32; L1_AHEAD_MIN / 8], vec![0f32; L1_AHEAD_MIN / 8]);
        // Both regions count, and a kernel's part of the row asks as the row does.
        assert!(Ahead::NONE.and(&a).and(&b).along(100).into_l1());
        assert!(Ahead::NONE.and(&a).and(&b).along(100).part(10..20).into_l1());
        assert!(!Ahead::NONE.and(&a).along(100).into_l1());
        assert!(!Ahead::NONE.and(&a[1..]).and(&b).along(100).into_l1());
        assert!(!Ahead::NONE.into_l1());
        let first = Ahead::NONE.and(&a).and(&b[..10]).first(64);
        assert_eq!(
            first.regions.map(|r| (r.as_ptr(), r.len())),
            [(a.as_ptr() as *const u8, 64), (b.as_ptr() as *const u8, 40)]
        );
    }

    /// A loop over a part asks for each of its lines in step: by the time `done` of its
    /// elements are done, for the lines holding their share of each region (a long region's
    /// share counted from its lead; all but the last line at least) and for no other;
    /// `finish` for the rest. A long region's lines are asked for half a page from the step's
    /// loads, in page offset.
    #[test]
    fn prefetcher_asks_every_line_in_step() {
        let (row, a, b) = (vec![0f32; 16384], vec![0f32; 16384], vec![f16::ZERO; 1000]);
        let part = Ahead::NONE.and(&a).and(&b).along(16384).part(1024..9216);
        let row = &row[1024..9216];
        let lines_of = |r: &[u8]| -> Vec<usize> {
            let mut l: Vec<usize> = r.iter().map(|x| x as *const u8 as usize / LINE).collect();
            l.dedup();
            l
        };
        let asked = std::cell::RefCell::new(vec![]);
        let mut p = part.stepper(row.as_ptr() as *const u8);
        let ([long, short], lead) = (part.regions, p.lead[0]);
        assert_eq!(p.lead[1], 0, "a short region from its start");
        for done in (128..=row.len()).step_by(128) {
            let before = asked.borrow().len();
            p.upto_with::<8>(done, |line| asked.borrow_mut().push(line));
            let step_loads = row[done - 128..].as_ptr() as usize;
            for &at in &asked.borrow()[before..] {
                if long.as_ptr_range().contains(&at) {
                    let apart = (at as usize).wrapping_sub(step_loads) % PAGE;
                    assert!((PAGE / 2..PAGE / 2 + 512).contains(&apart), "done {done}: {apart} bytes apart");
                }
            }
            let share = |r: &[u8]| r.len() * done / row.len();
            for (r, due) in [(long, &long[lead..(lead + share(long)).min(long.len())]), (short, &short[..share(short)])]
            {
                let lines = r.as_ptr() as usize / LINE..=(r.as_ptr() as usize + r.len() - 1) / LINE;
                let mut got: Vec<usize> = asked.borrow().iter().map(|&at| at as usize / LINE).collect();
                got.retain(|l| lines.contains(l));
                got.sort();
                got.dedup();
                // (The line holding the share's last byte may come with the next step's.)
                let want = lines_of(due);
                assert!(
                    want.starts_with(&got) && got.len() + 1 >= want.len(),
                    "done {done}, a region of {} bytes",
                    r.len()
                );
            }
        }
        p.finish_with(|line| asked.borrow_mut().push(line));
        let mut want: Vec<usize> = part.regions.iter().flat_map(|r| lines_of(r)).collect();
        let mut got: Vec<usize> = asked.into_inner().iter().map(|&at| at as usize / LINE).collect();
        got.sort();
        got.dedup();
        want.sort();
        assert_eq!(got, want, "every line");
    }

    #[test]
    #[should_panic(expected = "two regions at most")]
    fn ahead_takes_two_regions() {
        let _ = Ahead::NONE.and(&[1f32]).and(&[2f32]).and(&[3f32]);
    }
}
