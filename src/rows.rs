//! The math of one row, in the compute type, written once on top of the kernel primitives.
//! Rows are read and written a block at a time where they are not already slices of the
//! compute type (`crate::blocks`).
//!
//! Per row `z` with maximum `m` at index `k`, everything derives from
//! `rest = Σ_{j≠k} exp(z_j - m)`: `lse = m + log1p(rest)`. Keeping the maximum's own term out
//! of the sum is what makes confident rows exact: `lse - z_k = log1p(rest)` has no
//! cancellation, and `p_k - 1 = -rest / (1 + rest)`.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::blocks::{block_ranges, BlockBuf, Reader, Row, RowOut, BLOCK};
use crate::kernels::scalar::two_diff;
use crate::kernels::{Ahead, CompensatedSum, Float, RowKernels};

/// Rows at least this long are cut into parts that the threads share, so that a few huge
/// rows (1 × 1 Mi classes) still use every core. The parts depend on the row only, never on
/// the thread count, so neither do the results. Rows this long are also never widened whole
/// (`crate::ops`).
pub const SPLIT_MIN: usize = 1 << 16;
/// Elements per part when a row is split (256 KiB of f32): whole blocks of the row sums.
pub(crate) const SPLIT_BLOCK: usize = 1 << 16;
const _: () = assert!(SPLIT_BLOCK.is_multiple_of(BLOCK));

/// Part `i` of a split row.
fn split_part(i: usize, len: usize) -> Range<usize> {
    i * SPLIT_BLOCK..((i + 1) * SPLIT_BLOCK).min(len)
}

/// `Σ_{j≠skip} exp(z_j - shift)` of a row shorter than `SPLIT_MIN`, accurate to a few ulp
/// however long the row: the kernel sums blocks of `BLOCK`, and a compensated sum adds the
/// blocks. While a stretch of the row is summed (from cache: the max pass just read it), the
/// same share of `ahead` is asked for, so that memory works while the exps are computed. With
/// `exps`, each term is also stored there (1 at `skip`): the same sum, bit for bit. With a
/// dense row's plain targets `t`, also their [`target_sums`] with `shift` the row's maximum,
/// bit for bit, from the same pass.
fn sum_exp<F: Float>(
    k: &RowKernels<F>,
    z: &Row<F>,
    shift: F,
    skip: usize,
    ahead: Ahead,
    mut exps: Option<&mut [F]>,
    t: Option<&[F]>,
) -> (f64, Option<(F, F)>) {
    let len = z.len();
    assert!(len < SPLIT_MIN, "a row split across threads has its own statistics (split_stats)");
    let ahead = ahead.along(len);
    // The sum of one block less its `skip` term: from the stored elements where the source
    // reads them, else from the block in the compute type (keeping the terms in `exps`, a
    // whole row's, where given); with the block's targets `t`, their sums too.
    let block_sum = |reader: &mut Reader<F>, r: Range<usize>, exps: Option<&mut [F]>, t: Option<&[F]>| {
        let ahead = ahead.part(r.clone());
        // (Past the block's end where the skipped term is not in it.)
        let skip = skip.wrapping_sub(r.start);
        if let Some(t) = t {
            let exps = exps.map(|e| &mut e[r.clone()]);
            let (sum, sums) = (k.sum_exp_targets)(reader.read(r), shift, skip, t, exps, ahead);
            return (sum, Some(sums));
        }
        if let Some(e) = exps {
            // (Rows that keep their exps are widened whole: no stored kernel for them.)
            return ((k.sum_exp_store)(reader.read(r.clone()), shift, skip, &mut e[r], ahead), None);
        }
        (block_sum_exp(k, reader, r, shift, skip, ahead), None)
    };
    let mut total = CompensatedSum::default();
    assert!(t.is_none_or(|t| t.len() == len), "a target per element");
    let (mut reader, mut sums) = (z.reader(), TargetTotals::default());
    for block in block_ranges(0..len) {
        let t = t.map(|t| &t[block.clone()]);
        let (sum, block_sums) = block_sum(&mut reader, block.clone(), exps.as_deref_mut(), t);
        total.add(sum);
        if let (Some(t), Some(block_sums)) = (t, block_sums) {
            sums.add(block.start, t, block_sums, skip);
        }
    }
    if let Some(e) = exps {
        e[skip] = F::one();
    }
    (total.value(), t.map(|_| sums.value()))
}

/// `Σ_{j≠skip} exp(z_j - shift)` over one block of `z`: from the stored elements where the
/// source reads them, else from the block in the compute type.
fn block_sum_exp<F: Float>(
    k: &RowKernels<F>,
    reader: &mut Reader<F>,
    block: Range<usize>,
    shift: F,
    skip: usize,
    ahead: Ahead,
) -> f64 {
    match reader.stored_sum_exp(block.clone(), shift, skip, ahead) {
        Some(sum) => sum,
        None => (k.sum_exp)(reader.read(block), shift, skip, ahead),
    }
}

/// The maximum, its index and `Σ_{j≠argmax} exp(z_j - max)` of a row split across threads
/// (`SPLIT_MIN` or longer; NaN for the sum where the maximum is not finite). A part's maximum
/// and the sum of its exps off that maximum are taken in one go (the part read from
/// memory once, then from cache; the next part asked for meanwhile, for rows of the compute
/// type, and by the last part the first part's worth of `after`, what comes after the row),
/// and the `(maximum, sum)` pairs are merged: a part's terms scaled by `exp(m_part - max)` in
/// f64, the difference taken exactly (rounded, it cost a float64 row 9 ulp in the test below,
/// where the maxima differ by ~40). One parallel pass, where a pass for the maximum and one
/// for the sum took two, each reading the row.
fn split_stats<F: Float>(k: &RowKernels<F>, z: &Row<F>, after: Ahead) -> (F, usize, f64) {
    let (len, n) = (z.len(), z.len().div_ceil(SPLIT_BLOCK));
    let parts: Vec<((F, usize), f64)> = crate::threads::map(n, |i| {
        let part = split_part(i, len);
        let (m, j) = max_argmax_in(k, z, part.clone());
        let mut rest = CompensatedSum::default();
        if m.is_finite() {
            // The next part, asked for while this one's exps are summed: the same thread
            // takes it next within a run (a whole row's parts, where rows are shared out
            // whole; else the runs of `threads::for_each_run`); after the last, the next
            // row's first (64×262144 2.54-2.64 -> 2.45 ms). (Not for rows read through a
            // source: half types.)
            let next = match z {
                Row::Slice(z) if i + 1 < n => Ahead::NONE.and(&z[split_part(i + 1, len)]),
                Row::Slice(_) => after.first(SPLIT_BLOCK * std::mem::size_of::<F>()),
                _ => Ahead::NONE,
            };
            let (ahead, mut reader) = (next.along(part.len()), z.reader());
            for block in block_ranges(part.clone()) {
                let ahead = ahead.part(block.start - part.start..block.end - part.start);
                rest.add(block_sum_exp(k, &mut reader, block.clone(), m, j.wrapping_sub(block.start), ahead));
            }
        }
        ((m, j), rest.value())
    });
    let (max, argmax) = parts.iter().map(|&(m, _)| m).reduce(first_max).expect("a split row is not empty");
    if !max.is_finite() {
        return (max, argmax, f64::NAN);
    }
    let mut rest = CompensatedSum::default();
    for ((m, j), part_rest) in parts {
        if j == argmax {
            rest.add(part_rest);
        } else if m.is_finite() {
            // (A part's own maximum is a term too, 1 before scaling.)
            let (d, err) = two_diff(<F as Float>::to_f64(m), <F as Float>::to_f64(max));
            rest.add((1.0 + part_rest) * (d.exp() * (1.0 + err)));
        }
    }
    (max, argmax, rest.value())
}

/// The first of two `(maximum, index)` candidates: NaN wins, then the larger, then the
/// earlier.
fn first_max<F: Float>(a: (F, usize), b: (F, usize)) -> (F, usize) {
    let b_wins = !a.0.is_nan() && (b.0.is_nan() || b.0 > a.0 || (b.0 == a.0 && b.1 < a.1));
    if b_wins {
        b
    } else {
        a
    }
}

/// The maximum of `z[range]` and the index of its first occurrence, or NaN if it holds one.
fn max_argmax_in<F: Float>(k: &RowKernels<F>, z: &Row<F>, range: Range<usize>) -> (F, usize) {
    let (mut reader, piece) = (z.reader(), z.piece());
    if let Some((m, j)) = reader.stored_max_argmax(range.clone()) {
        return (m, range.start + j);
    }
    let mut best = (F::neg_infinity(), usize::MAX);
    for from in range.clone().step_by(piece) {
        let (m, j) = (k.max_argmax)(reader.read(from..(from + piece).min(range.end)));
        best = first_max(best, (m, from + j));
    }
    best
}

/// Calls `f(from, z_piece, y_piece, out_piece)` over a whole row `z`, an optional second input
/// row `y` of the same length (empty pieces without one) and the output, in the longest
/// pieces that every side hands over without a buffer of that size; long rows are split
/// across threads.
#[inline(always)]
fn map<F: Float>(z: &Row<F>, y: Option<&Row<F>>, out: &mut RowOut<F>, f: impl Fn(usize, &[F], &[F], &mut [F]) + Sync) {
    // Slices, short enough for one thread: one call (narrow rows are millions of calls).
    if let (Row::Slice(zs), RowOut::Slice(os), None | Some(Row::Slice(_))) = (z, &mut *out, y) {
        if zs.len() < SPLIT_MIN {
            let ys = match y {
                Some(Row::Slice(ys)) => ys,
                _ => &[][..],
            };
            return f(0, zs, ys, os);
        }
    }
    map_blocks(z, y, out, f)
}

/// [`map`] a block at a time (and across threads for long rows).
#[inline(never)]
fn map_blocks<F: Float>(
    z: &Row<F>,
    y: Option<&Row<F>>,
    out: &mut RowOut<F>,
    f: impl Fn(usize, &[F], &[F], &mut [F]) + Sync,
) {
    let run = |part: &mut RowOut<F>, at: usize| {
        let piece = z.piece().min(part.piece()).min(y.map_or(usize::MAX, |y| y.piece()));
        let (mut z_reader, mut y_reader, mut buf) = (z.reader(), y.map(|y| y.reader()), BlockBuf::default());
        let len = part.len();
        for from in (0..len).step_by(piece) {
            let range = at + from..at + (from + piece).min(len);
            let zb = z_reader.read(range.clone());
            let yb = y_reader.as_mut().map_or(&[][..], |r| r.read(range.clone()));
            part.write(from..from + range.len(), &mut buf, |ob| f(range.start, zb, yb, ob));
        }
    };
    if z.len() >= SPLIT_MIN {
        let mut parts = out.parts(SPLIT_BLOCK);
        crate::threads::for_each_mut(&mut parts, |i, part| run(part, i * SPLIT_BLOCK));
    } else {
        run(out, 0);
    }
}

/// The row's `exps` (`exp(z_j - max)`, kept from its statistics), where their product with
/// `scale` is as accurate as the exp kernel: a scale above 1 would lift an exp rounded to a
/// subnormal, with the few bits it kept, into the normal range.
fn reusable<F: Float>(exps: Option<&[F]>, scale: F) -> Option<&[F]> {
    exps.filter(|_| scale <= F::one())
}

/// What turns a piece of a row into `exp(z_j - max) · scale`, and the row to read the pieces
/// from: a product with the row's kept `exps` where [`reusable`] (the exps are then
/// the row read: the logits need not be read, nor widened, again), else the exp kernel on the
/// logits `z` (`stream`: either's stores past the caches).
fn scaled_exps<'e, F: Float>(
    k: &RowKernels<F>,
    z: &Row<'e, F>,
    exps: Option<&'e [F]>,
    max: F,
    scale: F,
    stream: bool,
) -> (Row<'e, F>, impl Fn(&[F], &mut [F]) + Sync + 'e) {
    let (exp_kernel, scale_kernel) =
        if stream { (k.exp_scaled_stream, k.scale_stream) } else { (k.exp_scaled, k.scale) };
    let exps = reusable(exps, scale);
    let piece = move |zb: &[F], ob: &mut [F]| match exps {
        Some(_) => scale_kernel(zb, scale, ob),
        None => exp_kernel(zb, max, scale, ob),
    };
    (exps.map_or(*z, Row::Slice), piece)
}

/// `out_j = exp(z_j - max) · scale` over a whole row (see [`scaled_exps`]); in one pass, read
/// (unless widened already) and written as stored, where `out` is of a half type with a kernel
/// for it. `stream`: stores past the caches, where a kernel stores straight into `out` (never
/// into a buffer read back).
fn scaled_exp_row<F: Float>(
    k: &RowKernels<F>,
    z: &Row<F>,
    exps: Option<&[F]>,
    max: F,
    scale: F,
    stream: bool,
    out: &mut RowOut<F>,
) {
    let exps = reusable(exps, scale);
    if let Some(e) = exps {
        // Kept exps: one kernel call, without the pieces and closures below (which cost more
        // than a narrow row's products), where the output takes one.
        if let RowOut::Slice(o) = out {
            return (if stream { k.scale_stream } else { k.scale })(e, scale, o);
        }
        if out.stored_scaled(e, scale, stream) {
            return;
        }
    }
    if exps.is_none() && stored_exp_scaled_row(z, max, scale, stream, out) {
        return;
    }
    let (read, exp) = scaled_exps(k, z, exps, max, scale, stream && out.is_direct());
    map(&read, None, out, |_, zb, _, ob| exp(zb, ob));
}

/// The scaled exps of a whole row into an output stored in another type, by
/// [`RowOut::stored_exp_scaled`] from a row widened already, by [`Reader::stored_exp_scaled`]
/// from a stored one (only long ones are, where a row has outputs: in parts across threads,
/// as [`map`]); false where there is no kernel for the stored types (the answer is the same
/// for every part: then none was written). `stream`: stores past the caches.
fn stored_exp_scaled_row<F: Float>(z: &Row<F>, shift: F, scale: F, stream: bool, out: &mut RowOut<F>) -> bool {
    let len = z.len();
    match (z, &*out) {
        (_, RowOut::Slice(_)) => return false,
        (Row::Slice(zs), _) => return len < SPLIT_MIN && out.stored_exp_scaled(zs, shift, scale, stream),
        (Row::Stored { .. }, _) => {}
    }
    let exp = |range, part: &mut RowOut<F>| z.reader().stored_exp_scaled(range, shift, scale, part, stream);
    let (mut parts, done) = (out.parts(SPLIT_BLOCK), AtomicBool::new(true));
    crate::threads::for_each_mut(&mut parts, |i, part| {
        if !exp(split_part(i, len), part) {
            done.store(false, Ordering::Relaxed);
        }
    });
    done.into_inner()
}

/// Max, its index and the mass off the maximum, for one row.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowStats<F> {
    pub max: F,
    pub argmax: usize,
    /// `Σ_{j≠argmax} exp(z_j - max)`; only meaningful when `max` is finite. In f64, as summed:
    /// `log1p` and the probabilities take it without a rounding to `F` first.
    pub rest: f64,
    /// `log1p(rest)`, so that `lse = max + log_rest`.
    pub log_rest: F,
    /// `(Σ_{j≠argmax} t_j, Σ_{t_j≠0} t_j (max - z_j))` of the row's targets `t` (a dense
    /// row's labels, mapped where weights or smoothing make them differ; a sparse row's
    /// smoothing targets, its class weights), where taken with the statistics (a tile's: see
    /// `kernels::lanes`; a row's: see `sum_exp`). Meaningful for a regular row only.
    pub target_sums: Option<(F, F)>,
}

impl<F: Float> RowStats<F> {
    pub fn of(k: &RowKernels<F>, z: &Row<F>) -> Self {
        Self::of_before(k, z, None, Ahead::NONE, None, None)
    }

    /// [`RowStats::of`], from the row's `max_argmax` where it was taken already (`known`),
    /// asking for what comes next from memory (see [`Ahead`]) while the exps are summed: the
    /// longer pass, over which the lines have time to come.
    /// With `exps` (as long as a row shorter than `SPLIT_MIN`), also `exp(z_j - max)` of each
    /// element, where the maximum is finite: the terms of the sum (the same statistics, bit for
    /// bit), which a softmax or a gradient then reuses instead of computing a second exp. With
    /// a dense row's plain `targets` (such a row too), also their sums, `target_sums`.
    pub fn of_before(
        k: &RowKernels<F>,
        z: &Row<F>,
        known: Option<(F, usize)>,
        ahead: Ahead,
        exps: Option<&mut [F]>,
        targets: Option<&[F]>,
    ) -> Self {
        if z.is_empty() {
            return RowStats {
                max: F::neg_infinity(),
                argmax: 0,
                rest: f64::NAN,
                log_rest: F::nan(),
                target_sums: None,
            };
        }
        if z.len() >= SPLIT_MIN {
            // (Never with a `known` maximum: rows this long are not widened whole.)
            assert!(exps.is_none() && targets.is_none(), "the terms of a row split across threads are not kept");
            let (max, argmax, rest) = split_stats(k, z, ahead);
            return RowStats { max, argmax, rest, log_rest: F::log1p_of(rest), target_sums: None };
        }
        let (max, argmax) = known.unwrap_or_else(|| max_argmax_in(k, z, 0..z.len()));
        let (rest, target_sums) =
            if max.is_finite() { sum_exp(k, z, max, argmax, ahead, exps, targets) } else { (f64::NAN, None) };
        RowStats { max, argmax, rest, log_rest: F::log1p_of(rest), target_sums }
    }

    /// The same statistics, with the off-maximum mass summed again in f64 when it is so small
    /// (below 2^-96 in f32) that the exps making it up were subnormal and lost their bits.
    /// Rare (the leader is ahead by ~66 or more), and it keeps those rows' tiny losses, and
    /// the gradient at the label, within an ulp.
    #[inline(always)]
    pub fn refined(&self, z: &Row<F>) -> Self {
        if self.is_regular() && self.lost_bits() {
            // (The target sums do not depend on the rest.)
            Self { target_sums: self.target_sums, ..Self::summed_in_f64(self.max, self.argmax, z) }
        } else {
            *self
        }
    }

    /// [`Self::refined`], with the row's kept exps (see [`RowStats::of_before`]) where they
    /// are still the terms of its rest: not where the rest was summed again in f64.
    #[inline(always)]
    pub fn refined_with<'e>(&self, z: &Row<F>, exps: Option<&'e [F]>) -> (Self, Option<&'e [F]>) {
        let refined = self.refined(z);
        (refined, exps.filter(|_| refined.rest == self.rest))
    }

    /// Whether the off-maximum mass is so small that its exps lost bits (see [`Self::refined`]).
    #[inline(always)]
    fn lost_bits(&self) -> bool {
        let narrow = F::epsilon() > F::from_f64(f64::EPSILON);
        let tiny = <F as Float>::to_f64(F::min_positive_value()) * 2f64.powi(30);
        narrow && self.rest < tiny
    }

    /// A regular row whose statistics need no refining: the common row.
    #[inline(always)]
    pub fn is_plain(&self) -> bool {
        self.is_regular() && !self.lost_bits()
    }

    /// (The rare part of [`RowStats::refined`], out of line: narrow rows are millions of calls,
    /// and the common part is a comparison. Handed the whole statistics, callers copied them
    /// to the stack first, and the comparison then waited on that copy.)
    #[cold]
    #[inline(never)]
    fn summed_in_f64(max: F, argmax: usize, z: &Row<F>) -> Self {
        let m = <F as Float>::to_f64(max);
        let mut rest = 0.0;
        z.reader().blocks(0..z.len(), |from, block| {
            for (j, &x) in (from..).zip(block) {
                if j != argmax {
                    rest += (<F as Float>::to_f64(x) - m).exp();
                }
            }
        });
        RowStats { max, argmax, rest, log_rest: F::log1p_of(rest), target_sums: None }
    }

    /// `factor / (1 + rest)`, rounded once (computed in f64): the factor that turns
    /// `exp(z_j - max)` into `factor * softmax_j`. One rounding here instead of three keeps
    /// softmax and gradients within a few ulp.
    pub fn probability_scale(&self, factor: F) -> F {
        F::from_f64(<F as Float>::to_f64(factor) / (1.0 + self.rest))
    }

    /// A row with a finite maximum: no NaN, no +inf, not all -inf.
    pub fn is_regular(&self) -> bool {
        self.max.is_finite()
    }

    /// `-inf` for a row of -inf, `+inf` for a row with +inf, NaN for a row with NaN.
    pub fn logsumexp(&self) -> F {
        if self.is_regular() {
            self.max + self.log_rest
        } else {
            self.max
        }
    }
}

pub fn log_softmax<F: Float>(k: &RowKernels<F>, z: &Row<F>, s: &RowStats<F>, _exps: Option<&[F]>, out: &mut RowOut<F>) {
    if !s.is_regular() {
        return out.fill(F::nan());
    }
    // The row's log-sum is not rounded to F first (see `RowKernels::log_softmax`).
    let l = s.rest.ln_1p();
    map(z, None, out, |_, zb, _, ob| (k.log_softmax)(zb, s.max, l, ob));
}

/// `exps`: the row's `exp(z_j - max)`, where already computed.
pub fn softmax<F: Float>(k: &RowKernels<F>, z: &Row<F>, s: &RowStats<F>, exps: Option<&[F]>, out: &mut RowOut<F>) {
    if !s.is_regular() {
        return out.fill(F::nan());
    }
    scaled_exp_row(k, z, exps, s.max, s.probability_scale(F::one()), false, out);
}

/// Per-call constants of the target distribution: class weights and label smoothing.
pub struct Targets<'w, F> {
    /// Per-class weights, `None` meaning all ones.
    pub weight: Option<&'w [F]>,
    /// `Σ weight` (the number of classes without weights).
    pub weight_sum: F,
    /// ε of label smoothing: targets become `(1 - ε) y + ε / C`.
    pub smoothing: F,
    /// `ε / C`, the uniform part of a smoothed target.
    pub uniform: F,
    /// The weights of the smoothing's gap ([`weighted_gap`]) a block at a time when there are
    /// no class weights: a block of ones (empty without smoothing).
    ones: Vec<F>,
}

impl<'w, F: Float> Targets<'w, F> {
    pub fn new(weight: Option<&'w [F]>, smoothing: F, classes: usize) -> Self {
        let c = F::from_f64(classes as f64);
        let weight_sum = weight.map_or(c, |w| w.iter().fold(F::zero(), |a, &x| a + x));
        let ones = if weight.is_none() && smoothing != F::zero() { vec![F::one(); classes.min(BLOCK)] } else { vec![] };
        Targets { weight, weight_sum, smoothing, uniform: smoothing / c, ones }
    }

    #[inline]
    pub fn weight(&self, j: usize) -> F {
        self.weight.map_or(F::one(), |w| w[j])
    }

    /// Labels used as they are: no weights, no smoothing.
    pub fn plain(&self) -> bool {
        self.weight.is_none() && self.smoothing == F::zero()
    }

    /// The target of class `j` for a dense label `y`: `w_j ((1-ε) y + ε/C)`.
    fn dense(&self, j: usize, y: F) -> F {
        let mut t = [F::zero()];
        self.dense_map(j, &[y], &mut t, |_, t| t);
        t[0]
    }

    /// A row of dense labels made its targets, in place.
    pub fn map_labels(&self, row: &mut [F]) {
        for (j, y) in row.iter_mut().enumerate() {
            *y = self.dense(j, *y);
        }
    }

    /// `out_i = f(out_i, t_i)` for the targets `t` of the dense labels `y` of classes
    /// `from..`; one loop per case, so that each vectorises.
    #[inline]
    fn dense_map(&self, from: usize, y: &[F], out: &mut [F], f: impl Fn(F, F) -> F) {
        let (keep, uniform) = (F::one() - self.smoothing, self.uniform);
        match self.weight {
            _ if self.plain() => out.iter_mut().zip(y).for_each(|(o, &yj)| *o = f(*o, yj)),
            None => out.iter_mut().zip(y).for_each(|(o, &yj)| *o = f(*o, keep * yj + uniform)),
            Some(w) => {
                let w = &w[from..from + y.len()];
                out.iter_mut().zip(y).zip(w).for_each(|((o, &yj), &wj)| *o = f(*o, wj * (keep * yj + uniform)))
            }
        }
    }
}

/// `Σ_j w_j (m - z_j)` over the classes with a non-zero weight (so a zero weight on a -inf
/// logit counts 0), by the `target_sums` kernel a block at a time (its sums short chains
/// of trees), the blocks combined by a compensated sum. Every term is ≥ 0: no cancellation.
/// (Element by element in a compensated sum, smoothed sparse losses took 3-5 times as long as
/// plain ones.)
fn weighted_gap<F: Float>(k: &RowKernels<F>, t: &Targets<F>, z: &Row<F>, m: F) -> F {
    let mut gap = CompensatedSum::default();
    z.reader().blocks(0..z.len(), |from, block| {
        let w = match t.weight {
            Some(w) => &w[from..from + block.len()],
            None => &t.ones[..block.len()],
        };
        gap.add((k.target_sums)(w, block, m).1);
    });
    gap.value()
}

/// Gradient to fill, with the factor the reduction applies (`1`, or `1 / divisor` for mean).
pub struct Grad<'g, 'o, F> {
    /// (Borrowed: a `RowOut` moved through memory would wait on the stores before it.)
    pub out: &'g mut RowOut<'o, F>,
    pub scale: F,
    /// The whole gradient is far larger than the caches and its rows are long: rows written
    /// once may be stored past the caches, by the kernels that store straight into `out` (in
    /// the compute type or, where they can, a half type).
    pub stream: bool,
    /// The row's `exp(z_j - max)`, where its statistics kept them.
    pub exps: Option<&'g [F]>,
}

/// Loss of one row against class `label`, with weights and smoothing:
/// targets `t_j = (1-ε) w_y δ_jy + (ε/C) w_j`, loss `Σ_j t_j (lse - z_j)`,
/// gradient `scale (Σt · p - t)`. Always inlined: for narrow rows the call costs as much as
/// the loss (and passing `grad` through memory stalls on the stores before it).
#[inline(always)]
pub fn sparse<F: Float>(
    k: &RowKernels<F>,
    z: &Row<F>,
    s: &RowStats<F>,
    label: usize,
    t: &Targets<F>,
    grad: Option<Grad<F>>,
) -> F {
    if !s.is_regular() {
        if let Some(g) = grad {
            g.out.fill(F::nan());
        }
        return F::nan();
    }
    let l = s.log_rest;
    let a = (F::one() - t.smoothing) * t.weight(label);
    let b = t.uniform;
    let mut loss = F::zero();
    if a != F::zero() {
        loss = a * ((s.max - z.get(label)) + l);
    }
    if b != F::zero() {
        // (The gap came with the statistics where a tile's took it: see `ops::RepeatedTargets`.)
        let gap = s.target_sums.map_or_else(|| weighted_gap(k, t, z, s.max), |(_, gap)| gap);
        loss = loss + b * (gap + t.weight_sum * l);
    }
    if let Some(g) = grad {
        sparse_grad(k, z, s, label, t, (a, b), g);
    }
    loss
}

/// [`dense`] without weights, smoothing or gradient, from the row's target sums (see
/// [`RowStats::target_sums`]) and its label at the maximum: `gap + (others + y_argmax)
/// log_rest`.
#[inline]
pub fn dense_plain<F: Float>(s: &RowStats<F>, (others, gap): (F, F), y_argmax: F) -> F {
    if s.is_regular() {
        gap + (others + y_argmax) * s.log_rest
    } else {
        F::nan()
    }
}

/// [`sparse`] without weights, smoothing or gradient: `lse - z_label`.
#[inline]
pub fn sparse_plain<F: Float>(z_label: F, s: &RowStats<F>) -> F {
    if s.is_regular() {
        (s.max - z_label) + s.log_rest
    } else {
        F::nan()
    }
}

/// The gradient of [`sparse`], whose target is `a` at `label` plus `b w_j` everywhere.
#[inline(always)]
fn sparse_grad<F: Float>(
    k: &RowKernels<F>,
    z: &Row<F>,
    s: &RowStats<F>,
    label: usize,
    t: &Targets<F>,
    (a, b): (F, F),
    Grad { out, scale, stream, exps }: Grad<F>,
) {
    // (Read first: in place, the row is about to be overwritten.)
    let z_y = z.get(label);
    let inv = F::from_f64(1.0 / (1.0 + s.rest));
    let total = a + b * t.weight_sum;
    let p_scale = s.probability_scale(scale * total);
    if b == F::zero() {
        scaled_exp_row(k, z, exps, s.max, p_scale, stream, out);
    } else {
        // (Not streamed: each piece is read back at once.)
        let (read, exp) = scaled_exps(k, z, exps, s.max, p_scale, false);
        map(&read, None, out, |from, zb, _, ob| {
            exp(zb, ob);
            match t.weight {
                None => ob.iter_mut().for_each(|o| *o = *o - scale * b),
                Some(w) => ob.iter_mut().zip(&w[from..]).for_each(|(o, &wj)| *o = *o - scale * b * wj),
            }
        });
    }
    // The label's entry, without the cancellation of `p_y - 1`: minus the other classes' mass.
    let e_y = match exps {
        _ if label == s.argmax => F::one(),
        Some(e) => e[label],
        None => (z_y - s.max).exp(),
    };
    let off = F::from_f64(if label == s.argmax { s.rest } else { 1.0 + (s.rest - <F as Float>::to_f64(e_y)) });
    let p_y = e_y * inv;
    out.set(label, scale * (b * (t.weight_sum * p_y - t.weight(label)) - a * off * inv));
}

/// `(Σ_{j≠skip} t_j, Σ_j t_j (max - z_j))` over a row's targets (of labels `y`), by kernel
/// blocks combined with compensated sums (every gap term is ≥ 0: no cancellation), as in
/// [`sum_exp`]. `scratch` holds a block of targets.
#[inline(always)]
fn target_sums<F: Float>(
    k: &RowKernels<F>,
    t: &Targets<F>,
    y: &Row<F>,
    z: &Row<F>,
    max: F,
    skip: usize,
    scratch: &mut Vec<F>,
) -> (F, F) {
    if let (Row::Slice(zs), Row::Slice(ys), true) = (z, y, t.plain()) {
        if zs.len() <= BLOCK {
            // One block (narrow rows are millions of calls): what the sums below give for a
            // single term, `0 + x` (zero's sign included), without their trips through memory.
            let (sum, gap) = (k.target_sums)(ys, zs, max);
            let others = if skip < ys.len() { sum - ys[skip] } else { sum };
            return (F::zero() + others, F::zero() + gap);
        }
    }
    let mut sums = TargetTotals::default();
    let mut add_block = |from: usize, yb: &[F], zb: &[F]| {
        let tb = if t.plain() {
            yb
        } else {
            scratch.resize(yb.len(), F::zero());
            t.dense_map(from, yb, scratch, |_, tj| tj);
            &scratch[..]
        };
        sums.add(from, tb, (k.target_sums)(tb, zb, max), skip);
    };
    if let (Row::Slice(zs), Row::Slice(ys)) = (z, y) {
        // (Slices directly: narrow rows are millions of calls.)
        for (i, (zb, yb)) in zs.chunks(BLOCK).zip(ys.chunks(BLOCK)).enumerate() {
            add_block(i * BLOCK, yb, zb);
        }
    } else {
        let mut y_reader = y.reader();
        z.reader().blocks(0..z.len(), |from, zb| add_block(from, y_reader.read(from..from + zb.len()), zb));
    }
    sums.value()
}

/// The [`target_sums`] of a row, a block at a time.
#[derive(Default)]
struct TargetTotals<F> {
    others: CompensatedSum<F>,
    gap: CompensatedSum<F>,
}

impl<F: Float> TargetTotals<F> {
    /// The block of targets `t` from element `from`, and the `target_sums` kernel's sums of it.
    #[inline(always)]
    fn add(&mut self, from: usize, t: &[F], (sum, gap): (F, F), skip: usize) {
        // The skipped target is taken out of its own block's sum, where it is of the same size.
        self.others.add(if (from..from + t.len()).contains(&skip) { sum - t[skip - from] } else { sum });
        self.gap.add(gap);
    }

    fn value(self) -> (F, F) {
        (self.others.value(), self.gap.value())
    }
}

/// Loss of one row against a dense label row `y` (any real numbers), with weights and
/// smoothing: targets `t_j = w_j ((1-ε) y_j + ε/C)`, loss `Σ_{t_j≠0} t_j (lse - z_j)` (a zero
/// target on a -inf logit counts 0), gradient `scale (Σt · p - t)`. `scratch` holds a block
/// of targets. Always inlined, as [`sparse`].
#[inline(always)]
pub fn dense<F: Float>(
    k: &RowKernels<F>,
    z: &Row<F>,
    s: &RowStats<F>,
    y: &Row<F>,
    t: &Targets<F>,
    scratch: &mut Vec<F>,
    grad: Option<Grad<F>>,
) -> F {
    if !s.is_regular() {
        if let Some(g) = grad {
            g.out.fill(F::nan());
        }
        return F::nan();
    }
    let (others, gap) = match s.target_sums {
        Some(sums) => sums,
        None => target_sums(k, t, y, z, s.max, s.argmax, scratch),
    };
    let tk = t.dense(s.argmax, y.get(s.argmax));
    // An infinite (or NaN) target at the maximum makes the gradient NaN, as the loss (the
    // kernel's `sum - t_k` gives that; the tiles' sums leave `t_k` out).
    let others = if tk.is_finite() { others } else { F::nan() };
    let total = others + tk;
    let loss = gap + total * s.log_rest; // (as `dense_plain`: the same bits)
    if let Some(Grad { out, scale, exps, .. }) = grad {
        let inv = F::from_f64(1.0 / (1.0 + s.rest));
        // (Not streamed: each piece is read back at once.)
        let (read, exp) = scaled_exps(k, z, exps, s.max, s.probability_scale(scale * total), false);
        map(&read, Some(y), out, |from, zb, yb, ob| {
            exp(zb, ob);
            t.dense_map(from, yb, ob, |o, tj| o - scale * tj);
        });
        // At the maximum, `Σt p_k - t_k = (Σ_{j≠k} t_j - t_k rest) / (1 + rest)`: exact for
        // confident rows, where the direct form cancels.
        out.set(s.argmax, scale * (others - tk * F::from_f64(s.rest)) * inv);
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::{split_stats, Row, BLOCK, SPLIT_BLOCK};
    use crate::kernels::{Ahead, Float};

    /// A split row's merged statistics against float64 sums, where the parts' maxima differ
    /// by far (a part's terms would be subnormal off the row's maximum), the maximum ties
    /// across parts (the first counts), a part is all -inf, and where a NaN or +inf is in a
    /// late part; a float64 row against its sum in one kernel call, where the maxima differ
    /// by an inexact ~40.
    #[test]
    fn split_stats_merge_the_parts() {
        let len = 3 * SPLIT_BLOCK + 5;
        let mut z: Vec<f32> = (0..len).map(|j| ((j * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        z[..SPLIT_BLOCK].iter_mut().for_each(|x| *x -= 100.0);
        z[SPLIT_BLOCK..2 * SPLIT_BLOCK].fill(f32::NEG_INFINITY);
        let (at, tie) = (2 * SPLIT_BLOCK + 3 * BLOCK + 17, 3 * SPLIT_BLOCK + 2);
        (z[at], z[tie]) = (9.5, 9.5);
        let k = f32::kernels();
        // (With what comes after the row: the last part asks for its first part's worth.)
        let after = vec![0f32; 2 * SPLIT_BLOCK];
        let (max, argmax, rest) = split_stats(k, &Row::Slice(&z), Ahead::NONE.and(&after));
        assert_eq!((max, argmax), (9.5, at));
        let want: f64 = z.iter().enumerate().filter(|&(j, _)| j != at).map(|(_, &x)| (x as f64 - 9.5).exp()).sum();
        assert!((rest / want - 1.0).abs() < 1e-6, "rest {rest}, want {want}");
        // The first part's terms alone, some 100 below the maximum.
        let low: f64 = z[..SPLIT_BLOCK].iter().map(|&x| (x as f64 - 9.5).exp()).sum();
        let mut only_low = vec![f32::NEG_INFINITY; len];
        only_low[..SPLIT_BLOCK].copy_from_slice(&z[..SPLIT_BLOCK]);
        only_low[at] = 9.5;
        let (_, _, rest) = split_stats(k, &Row::Slice(&only_low), Ahead::NONE);
        assert!((rest / low - 1.0).abs() < 1e-6, "rest {rest}, want {low}");
        let mut wide: Vec<f64> =
            (0..len).map(|j| if j < SPLIT_BLOCK { 0.0 } else { 10.1 - (j % 7) as f64 * 1e-3 }).collect();
        wide[5] = 50.3;
        let (max, argmax, rest) = split_stats(f64::kernels(), &Row::Slice(&wide), Ahead::NONE);
        let want = (f64::kernels().sum_exp)(&wide, max, argmax, Ahead::NONE);
        assert!((rest / want - 1.0).abs() < 1e-15, "float64: rest {rest:e}, want {want:e}");
        for (bad, want) in [(f32::NAN, None), (f32::INFINITY, Some(f32::INFINITY))] {
            let mut z = z.clone();
            z[tie + 1] = bad;
            let (max, argmax, rest) = split_stats(k, &Row::Slice(&z), Ahead::NONE);
            assert_eq!((max.to_bits(), argmax), (want.unwrap_or(bad).to_bits(), tie + 1), "{bad}");
            assert!(rest.is_nan(), "{bad}");
        }
    }
}
