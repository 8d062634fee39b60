//! The math of one row, on contiguous slices of the compute type, written once on top of the
//! kernel primitives.
//!
//! Per row `z` with maximum `m` at index `k`, everything derives from
//! `rest = Σ_{j≠k} exp(z_j - m)`: `lse = m + log1p(rest)`. Keeping the maximum's own term out
//! of the sum is what makes confident rows exact: `lse - z_k = log1p(rest)` has no
//! cancellation, and `p_k - 1 = -rest / (1 + rest)`.

use rayon::prelude::*;

use crate::kernels::{CompensatedSum, Float, RowKernels};

/// Elements per call of the kernel's `sum_exp`: within a block the kernel's own accumulators
/// keep the error to a few ulp; across blocks a compensated sum keeps it there for any width.
const SUM_BLOCK: usize = 1024;

/// Rows at least this long are cut into blocks that rayon spreads over the threads, so that
/// a few huge rows (8 × 256 Ki classes) still use every core. The blocks depend on the row
/// only, never on the thread count, so neither do the results.
const SPLIT_MIN: usize = 1 << 16;
/// Elements per task when a row is split (256 KiB of f32).
const SPLIT_BLOCK: usize = 1 << 16;

/// `Σ_{j≠skip} exp(z_j - shift)`, accurate to a few ulp however long the row: the kernel sums
/// blocks of `SUM_BLOCK`, and a compensated sum adds the blocks. While a block is summed (from
/// cache: the max pass just read it), the same stretch of `next`, the row to come, is
/// prefetched, so that memory works while the exps are computed.
fn sum_exp<F: Float, N>(k: &RowKernels<F>, z: &[F], shift: F, skip: usize, next: Option<&[N]>) -> f64 {
    let block_sum = |i: usize, block: &[F]| {
        let start = i * SUM_BLOCK;
        if (start..start + block.len()).contains(&skip) {
            let at = skip - start;
            (k.sum_exp)(&block[..at], shift) + (k.sum_exp)(&block[at + 1..], shift)
        } else {
            (k.sum_exp)(block, shift)
        }
    };
    let mut total = CompensatedSum::default();
    if z.len() >= SPLIT_MIN {
        let sums: Vec<f64> = z
            .par_chunks(SUM_BLOCK)
            .enumerate()
            .with_min_len(SPLIT_BLOCK / SUM_BLOCK)
            .map(|(i, block)| block_sum(i, block))
            .collect();
        sums.into_iter().for_each(|x| total.add(x));
    } else {
        for (i, block) in z.chunks(SUM_BLOCK).enumerate() {
            if let Some(next) = next {
                prefetch(next.get(i * SUM_BLOCK..((i + 1) * SUM_BLOCK).min(next.len())).unwrap_or(&[]));
            }
            total.add(block_sum(i, block));
        }
    }
    total.value()
}

/// Asks for `data` to be brought into L2, one cache line at a time.
#[inline]
pub fn prefetch<F>(data: &[F]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let step = (64 / std::mem::size_of::<F>()).max(1);
        for line in data.chunks(step) {
            // SAFETY: prefetching is a hint; the address is inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The maximum and the index of its first occurrence, or NaN if the row holds one.
fn max_argmax<F: Float>(k: &RowKernels<F>, z: &[F]) -> (F, usize) {
    if z.len() < SPLIT_MIN {
        return (k.max_argmax)(z);
    }
    let first_max = |a: (F, usize), b: (F, usize)| {
        let b_wins = !a.0.is_nan() && (b.0.is_nan() || b.0 > a.0 || (b.0 == a.0 && b.1 < a.1));
        if b_wins {
            b
        } else {
            a
        }
    };
    z.par_chunks(SPLIT_BLOCK)
        .enumerate()
        .map(|(i, block)| {
            let (m, j) = (k.max_argmax)(block);
            (m, i * SPLIT_BLOCK + j)
        })
        .reduce_with(first_max)
        .expect("a split row is not empty")
}

/// `out_j = exp(z_j - shift) * scale`, split over threads for huge rows; `stream`: stored past
/// the caches.
pub fn exp_scaled<F: Float>(k: &RowKernels<F>, z: &[F], shift: F, scale: F, out: &mut [F], stream: bool) {
    let kernel = if stream { k.exp_scaled_stream } else { k.exp_scaled };
    if z.len() < SPLIT_MIN {
        return kernel(z, shift, scale, out);
    }
    out.par_chunks_mut(SPLIT_BLOCK)
        .zip(z.par_chunks(SPLIT_BLOCK))
        .for_each(|(o, block)| kernel(block, shift, scale, o));
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
}

impl<F: Float> RowStats<F> {
    pub fn of(k: &RowKernels<F>, z: &[F]) -> Self {
        Self::of_before::<F>(k, z, None)
    }

    /// [`RowStats::of`], prefetching `next` (the row that comes after) on the way.
    /// `next` is in its stored type (a half type is prefetched as it lies in memory).
    pub fn of_before<N>(k: &RowKernels<F>, z: &[F], next: Option<&[N]>) -> Self {
        if z.is_empty() {
            return RowStats { max: F::neg_infinity(), argmax: 0, rest: f64::NAN, log_rest: F::nan() };
        }
        let (max, argmax) = max_argmax(k, z);
        let rest = if max.is_finite() { sum_exp(k, z, max, argmax, next) } else { f64::NAN };
        RowStats { max, argmax, rest, log_rest: F::from_f64(rest.ln_1p()) }
    }

    /// The same statistics, with the off-maximum mass summed again in f64 when it is so small
    /// (below 2^-96 in f32) that the exps making it up were subnormal and lost their bits.
    /// Rare (the leader is ahead by ~66 or more), and it keeps those rows' tiny losses, and
    /// the gradient at the label, within an ulp.
    pub fn refined(mut self, z: &[F]) -> Self {
        let narrow = F::epsilon() > F::from_f64(f64::EPSILON);
        let tiny = <F as Float>::to_f64(F::min_positive_value()) * 2f64.powi(30);
        if narrow && self.is_regular() && self.rest < tiny {
            let m = <F as Float>::to_f64(self.max);
            let rest: f64 = z
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != self.argmax)
                .map(|(_, &x)| (<F as Float>::to_f64(x) - m).exp())
                .sum();
            self.rest = rest;
            self.log_rest = F::from_f64(rest.ln_1p());
        }
        self
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

pub fn log_softmax<F: Float>(_k: &RowKernels<F>, z: &[F], s: &RowStats<F>, out: &mut [F]) {
    if !s.is_regular() {
        return out.fill(F::nan());
    }
    // In f64, rounded once: `x - max` exactly (with its rounding error added back) less the
    // row's log-sum, which is not rounded to F first. f32 results are then within half an ulp
    // plus the error of the row's sum.
    let l = s.rest.ln_1p();
    for (o, &x) in out.iter_mut().zip(z) {
        let (d, err) = crate::kernels::scalar::two_diff(x, s.max);
        *o = F::from_f64((<F as Float>::to_f64(d) - l) + <F as Float>::to_f64(err));
    }
}

pub fn softmax<F: Float>(k: &RowKernels<F>, z: &[F], s: &RowStats<F>, out: &mut [F]) {
    if !s.is_regular() {
        return out.fill(F::nan());
    }
    exp_scaled(k, z, s.max, s.probability_scale(F::one()), out, false);
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
}

impl<'w, F: Float> Targets<'w, F> {
    pub fn new(weight: Option<&'w [F]>, smoothing: F, classes: usize) -> Self {
        let c = F::from_f64(classes as f64);
        let weight_sum = weight.map_or(c, |w| w.iter().fold(F::zero(), |a, &x| a + x));
        Targets { weight, weight_sum, smoothing, uniform: smoothing / c }
    }

    #[inline]
    fn weight(&self, j: usize) -> F {
        self.weight.map_or(F::one(), |w| w[j])
    }
}

/// `Σ_j w_j (m - z_j)` over the classes with a non-zero weight (so a zero weight on a -inf
/// logit counts 0). Every term is ≥ 0: no cancellation.
fn weighted_gap<F: Float>(t: &Targets<F>, z: &[F], m: F) -> F {
    let mut gap = CompensatedSum::default();
    for (j, &x) in z.iter().enumerate() {
        let w = t.weight(j);
        if w != F::zero() {
            gap.add(w * (m - x));
        }
    }
    gap.value()
}

/// Gradient to fill, with the factor the reduction applies (`1`, or `1 / divisor` for mean).
pub struct Grad<'g, F> {
    pub out: &'g mut [F],
    pub scale: F,
    /// `out` is the destination itself and the whole gradient is far larger than the caches:
    /// rows written once may be stored past them.
    pub stream: bool,
}

/// Loss of one row against class `label`, with weights and smoothing:
/// targets `t_j = (1-ε) w_y δ_jy + (ε/C) w_j`, loss `Σ_j t_j (lse - z_j)`,
/// gradient `scale (Σt · p - t)`. Inlined: for narrow rows the call costs as much as the loss.
#[inline]
pub fn sparse<F: Float>(
    k: &RowKernels<F>,
    z: &[F],
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
        loss = a * ((s.max - z[label]) + l);
    }
    if b != F::zero() {
        loss = loss + b * (weighted_gap(t, z, s.max) + t.weight_sum * l);
    }
    if let Some(g) = grad {
        sparse_grad(k, z, s, label, t, (a, b), g);
    }
    loss
}

/// [`sparse`] without weights, smoothing or gradient: `lse - z_label`.
#[inline]
pub fn sparse_plain<F: Float>(z: &[F], s: &RowStats<F>, label: usize) -> F {
    if s.is_regular() {
        (s.max - z[label]) + s.log_rest
    } else {
        F::nan()
    }
}

/// The gradient of [`sparse`], whose target is `a` at `label` plus `b w_j` everywhere.
#[inline(never)]
fn sparse_grad<F: Float>(
    k: &RowKernels<F>,
    z: &[F],
    s: &RowStats<F>,
    label: usize,
    t: &Targets<F>,
    (a, b): (F, F),
    Grad { out, scale, stream }: Grad<F>,
) {
    let inv = F::from_f64(1.0 / (1.0 + s.rest));
    let total = a + b * t.weight_sum;
    // (With smoothing the row is read back at once: then it stays in cache.)
    exp_scaled(k, z, s.max, s.probability_scale(scale * total), out, stream && b == F::zero());
    if b != F::zero() {
        for (j, o) in out.iter_mut().enumerate() {
            *o = *o - scale * b * t.weight(j);
        }
    }
    // The label's entry, without the cancellation of `p_y - 1`: minus the other classes' mass.
    let e_y = if label == s.argmax { F::one() } else { (z[label] - s.max).exp() };
    let off = F::from_f64(if label == s.argmax { s.rest } else { 1.0 + (s.rest - <F as Float>::to_f64(e_y)) });
    let p_y = e_y * inv;
    out[label] = scale * (b * (t.weight_sum * p_y - t.weight(label)) - a * off * inv);
}

/// `(Σ_{j≠skip} t_j, Σ_j t_j (max - z_j))` over a row, by kernel blocks combined with
/// compensated sums (every gap term is ≥ 0: no cancellation), as in [`sum_exp`].
fn target_sums<F: Float>(k: &RowKernels<F>, t: &[F], z: &[F], max: F, skip: usize) -> (F, F) {
    let (mut others, mut gap) = (CompensatedSum::default(), CompensatedSum::default());
    for (i, (tb, zb)) in t.chunks(SUM_BLOCK).zip(z.chunks(SUM_BLOCK)).enumerate() {
        let (block_sum, block_gap) = (k.target_sums)(tb, zb, max);
        let start = i * SUM_BLOCK;
        // The skipped target is taken out of its own block's sum, where it is of the same size.
        others.add(if (start..start + tb.len()).contains(&skip) { block_sum - tb[skip - start] } else { block_sum });
        gap.add(block_gap);
    }
    (others.value(), gap.value())
}

/// Loss of one row against a dense target row `y` (any real numbers), with weights and
/// smoothing: `t_j = w_j ((1-ε) y_j + ε/C)`, loss `Σ_{t_j≠0} t_j (lse - z_j)` (a zero target
/// on a -inf logit counts 0), gradient `scale (Σt · p - t)`. `scratch` holds `t`.
pub fn dense<F: Float>(
    k: &RowKernels<F>,
    z: &[F],
    s: &RowStats<F>,
    y: &[F],
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
    // Plain labels are the targets themselves; weights or smoothing make new ones.
    let targets = if t.weight.is_none() && t.smoothing == F::zero() {
        y
    } else {
        let keep = F::one() - t.smoothing;
        scratch.clear();
        match t.weight {
            None => scratch.extend(y.iter().map(|&yj| keep * yj + t.uniform)),
            Some(w) => scratch.extend(y.iter().zip(w).map(|(&yj, &wj)| wj * (keep * yj + t.uniform))),
        }
        &scratch[..]
    };
    let (others, gap) = target_sums(k, targets, z, s.max, s.argmax);
    let total = others + targets[s.argmax];
    let loss = gap + total * s.log_rest;
    if let Some(Grad { out, scale, .. }) = grad {
        let inv = F::from_f64(1.0 / (1.0 + s.rest));
        // (Not streamed: the row is read back at once.)
        exp_scaled(k, z, s.max, s.probability_scale(scale * total), out, false);
        for (o, &tj) in out.iter_mut().zip(targets) {
            *o = *o - scale * tj;
        }
        // At the maximum, `Σt p_k - t_k = (Σ_{j≠k} t_j - t_k rest) / (1 + rest)`: exact for
        // confident rows, where the direct form cancels.
        let tk = targets[s.argmax];
        out[s.argmax] = scale * (others - tk * F::from_f64(s.rest)) * inv;
    }
    loss
}
