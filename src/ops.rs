//! Shapes, axes, broadcasting and the parallel driver: everything between an n-d view and
//! the row math of `crate::rows`.

use std::marker::PhantomData;

use ndarray::{ArrayD, ArrayView1, ArrayViewD, IxDyn};
use num_traits::{One, Zero};
use rayon::prelude::*;

use crate::element::{Element, Label};
use crate::error::{Error, Result};
use crate::kernels::Float;
use crate::rows::{self, Grad, RowStats, Targets};

/// How per-row losses are combined, as in `torch.nn.functional.cross_entropy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reduction {
    /// One loss per row (TensorFlow's behaviour).
    #[default]
    None,
    /// The sum of the row losses, accumulated in `f64`.
    Sum,
    /// The weighted mean: sparse divides by the summed weights of the counted rows, dense by
    /// the number of rows. Accumulated in `f64`.
    Mean,
}

/// Options beyond TensorFlow's. The default reproduces TensorFlow exactly.
#[derive(Debug, Clone, Default)]
pub struct Options<'w> {
    pub reduction: Reduction,
    /// ε in `[0, 1]`: targets become `(1 - ε) y + ε / C`.
    pub label_smoothing: f64,
    /// Per-class weights, shape `(C,)`, finite and ≥ 0.
    pub weight: Option<ArrayView1<'w, f64>>,
    /// Sparse losses only: rows with this label give 0 loss and 0 gradient and are not counted
    /// by `Mean`. Dense losses do not read it.
    pub ignore_index: Option<i64>,
}

/// Number of rows a rayon task takes at least, so each task reads ≥ 16 Ki elements.
fn min_rows_per_task(classes: usize) -> usize {
    ((1usize << 14) / classes.max(1)).max(1)
}

/// `axis` in `[-rank, rank)` to an index in `[0, rank)`.
pub fn class_axis(axis: isize, rank: usize) -> Result<usize> {
    if rank == 0 {
        return Err(Error::ScalarLogits);
    }
    let r = rank as isize;
    if axis < -r || axis >= r {
        return Err(Error::Axis { axis, rank });
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

fn without(shape: &[usize], axis: usize) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter(|&(d, _)| d != axis)
        .map(|(_, &n)| n)
        .collect()
}

/// Zero classes leave no valid label (and no defined softmax) for a non-empty batch.
fn check_classes(shape: &[usize], axis: usize) -> Result<()> {
    if shape[axis] == 0 && without(shape, axis).iter().product::<usize>() > 0 {
        return Err(Error::NoClasses {
            logits_shape: shape.to_vec(),
            axis,
        });
    }
    Ok(())
}

/// NumPy broadcasting of two shapes.
fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], d: usize| {
        if d + s.len() < rank {
            1
        } else {
            s[d + s.len() - rank]
        }
    };
    (0..rank)
        .map(|d| match (dim(a, d), dim(b, d)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

/// The rows of a strided n-d view along its class axis, read without copying where the
/// memory already holds the compute type contiguously.
struct RowView<'a, T> {
    ptr: *const T,
    batch_shape: Vec<usize>,
    batch_strides: Vec<isize>,
    classes: usize,
    class_stride: isize,
    _view: PhantomData<&'a T>,
}

// SAFETY: a RowView only reads through `ptr`, like the `ArrayView` it was made from.
unsafe impl<T: Sync> Send for RowView<'_, T> {}
unsafe impl<T: Sync> Sync for RowView<'_, T> {}

impl<'a, T: Element> RowView<'a, T> {
    fn new(view: &ArrayViewD<'a, T>, axis: usize) -> Self {
        RowView {
            ptr: view.as_ptr(),
            batch_shape: without(view.shape(), axis),
            batch_strides: without_strides(view.strides(), axis),
            classes: view.shape()[axis],
            class_stride: view.strides()[axis],
            _view: PhantomData,
        }
    }

    fn rows(&self) -> usize {
        self.batch_shape.iter().product()
    }

    fn offset(&self, mut r: usize) -> isize {
        let mut off = 0isize;
        for (&n, &s) in self.batch_shape.iter().zip(&self.batch_strides).rev() {
            off += (r % n) as isize * s;
            r /= n;
        }
        off
    }

    /// Row `r` in the compute type: borrowed when possible, otherwise widened into `scratch`.
    fn row<'s>(&'s self, r: usize, scratch: &'s mut Vec<T::Compute>) -> &'s [T::Compute] {
        debug_assert!(r < self.rows());
        // SAFETY: `r < rows()`, so the offsets stay inside the view this was made from.
        unsafe {
            let p = self.ptr.offset(self.offset(r));
            scratch.clear();
            if self.class_stride == 1 {
                let s = std::slice::from_raw_parts(p, self.classes);
                if let Some(c) = T::as_compute(s) {
                    return c;
                }
                scratch.extend(s.iter().map(|x| x.widen()));
            } else {
                let step = self.class_stride;
                scratch.extend((0..self.classes as isize).map(|i| (*p.offset(i * step)).widen()));
            }
        }
        scratch
    }
}

fn without_strides(strides: &[isize], axis: usize) -> Vec<isize> {
    strides
        .iter()
        .enumerate()
        .filter(|&(d, _)| d != axis)
        .map(|(_, &s)| s)
        .collect()
}

/// Per-thread buffers, reused across the rows a task handles.
struct Scratch<F> {
    logits: Vec<F>,
    labels: Vec<F>,
    targets: Vec<F>,
}

impl<F> Default for Scratch<F> {
    fn default() -> Self {
        Scratch {
            logits: Vec::new(),
            labels: Vec::new(),
            targets: Vec::new(),
        }
    }
}

/// Runs `f(row, scratch, out_row)` over every row in parallel and collects what it returns,
/// in row order. With `out` (`rows × classes`, row-major), each call gets its output row in
/// the compute type; half-type outputs are rounded once, at the end of the row.
fn for_rows<T, R, Fun>(rows: usize, classes: usize, out: Option<&mut [T]>, f: Fun) -> Vec<R>
where
    T: Element,
    R: Send,
    Fun: Fn(usize, &mut Scratch<T::Compute>, Option<&mut [T::Compute]>) -> R + Sync,
{
    let min_len = min_rows_per_task(classes);
    match out {
        Some(out) if rows > 0 => out
            .par_chunks_mut(classes)
            .enumerate()
            .with_min_len(min_len)
            .map_init(
                || (Scratch::default(), Vec::new()),
                |(scratch, buf), (r, o)| match T::as_compute_mut(o) {
                    Some(direct) => f(r, scratch, Some(direct)),
                    None => {
                        buf.resize(classes, T::Compute::zero());
                        let result = f(r, scratch, Some(buf));
                        for (d, &x) in o.iter_mut().zip(buf.iter()) {
                            *d = T::narrow(x);
                        }
                        result
                    }
                },
            )
            .collect(),
        _ => (0..rows)
            .into_par_iter()
            .with_min_len(min_len)
            .map_init(Scratch::default, |scratch, r| f(r, scratch, None))
            .collect(),
    }
}

/// An array of shape `batch_shape + [classes]` (row-major) seen with the class axis back at
/// `axis`: the logits' shape, with each row contiguous.
fn rows_to_array<T>(data: Vec<T>, batch_shape: &[usize], classes: usize, axis: usize) -> ArrayD<T> {
    let mut shape = batch_shape.to_vec();
    shape.push(classes);
    let last = batch_shape.len();
    let perm: Vec<usize> = (0..=last)
        .map(|d| match d {
            d if d < axis => d,
            d if d == axis => last,
            d => d - 1,
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .expect("data holds rows × classes elements")
        .permuted_axes(perm)
}

fn batch_array<T: Element>(losses: Vec<T::Compute>, batch_shape: &[usize]) -> ArrayD<T> {
    let data = losses.into_iter().map(T::narrow).collect();
    ArrayD::from_shape_vec(IxDyn(batch_shape), data).expect("one loss per row")
}

/// Pairwise sum in `f64`: accurate, and the same bits whatever the thread count.
fn sum_f64(xs: &[f64]) -> f64 {
    if xs.len() <= 256 {
        return xs.iter().sum();
    }
    let (a, b) = xs.split_at(xs.len() / 2);
    sum_f64(a) + sum_f64(b)
}

/// Applies the reduction to per-row losses; `divisor` is the `Mean` denominator.
fn reduce<T: Element>(
    losses: Vec<T::Compute>,
    batch_shape: &[usize],
    reduction: Reduction,
    divisor: f64,
) -> ArrayD<T> {
    let total = || sum_f64(&losses.iter().map(|x| x.to_f64()).collect::<Vec<_>>());
    let scalar = |x: f64| ArrayD::from_elem(IxDyn(&[]), T::narrow(T::Compute::from_f64(x)));
    match reduction {
        Reduction::None => batch_array(losses, batch_shape),
        Reduction::Sum => scalar(total()),
        Reduction::Mean => scalar(total() / divisor),
    }
}

/// Checks the options and converts the weights to the compute type.
fn class_weights<F: Float>(options: &Options, classes: usize) -> Result<Option<Vec<F>>> {
    let eps = options.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::LabelSmoothing(eps));
    }
    let Some(w) = &options.weight else {
        return Ok(None);
    };
    if w.len() != classes {
        return Err(Error::WeightShape {
            found: w.shape().to_vec(),
            classes,
        });
    }
    if let Some((index, &value)) = w
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(Error::WeightValue { index, value });
    }
    Ok(Some(w.iter().map(|&x| F::from_f64(x)).collect()))
}

fn unravel(mut r: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &n) in index.iter_mut().zip(shape).rev() {
        *i = r % n;
        r /= n;
    }
    index
}

/// Marks a row whose label is `ignore_index`.
const IGNORED: usize = usize::MAX;

/// Sparse labels as class indices in row order (`IGNORED` for ignored rows); the first label
/// out of range is an error naming its position.
fn class_indices<L: Label>(
    labels: &ArrayViewD<L>,
    classes: usize,
    ignore: Option<i64>,
) -> Result<Vec<usize>> {
    let ignore = ignore.map(i128::from);
    labels
        .iter()
        .enumerate()
        .map(|(r, &l)| {
            let v = l.to_i128();
            if Some(v) == ignore {
                Ok(IGNORED)
            } else if (0..classes as i128).contains(&v) {
                Ok(v as usize)
            } else {
                Err(Error::LabelOutOfRange {
                    index: unravel(r, labels.shape()),
                    value: v,
                    classes,
                })
            }
        })
        .collect()
}

/// Runs `f` on the pool fastxent was told to use (`set_num_threads`), or rayon's global one.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    crate::threads::run(f)
}

/// Shared driver of the four sparse entry points.
fn sparse_impl<T: Element, L: Label>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
    with_grad: bool,
) -> Result<(ArrayD<T>, Option<ArrayD<T>>)> {
    let axis = class_axis(axis, logits.ndim())?;
    let expected = without(logits.shape(), axis);
    if labels.shape() != expected.as_slice() {
        return Err(Error::SparseLabelsShape {
            labels: labels.shape().to_vec(),
            expected,
            logits: logits.shape().to_vec(),
            axis,
        });
    }
    check_classes(logits.shape(), axis)?;
    let classes = logits.shape()[axis];
    let weight = class_weights::<T::Compute>(options, classes)?;
    in_pool(|| {
        let indices = class_indices(&labels, classes, options.ignore_index)?;
        let divisor: f64 = match &weight {
            Some(w) => indices
                .iter()
                .filter(|&&y| y != IGNORED)
                .map(|&y| w[y].to_f64())
                .sum(),
            None => indices.iter().filter(|&&y| y != IGNORED).count() as f64,
        };
        let scale = match options.reduction {
            Reduction::Mean => T::Compute::from_f64(1.0 / divisor),
            _ => T::Compute::one(),
        };
        let eps = T::Compute::from_f64(options.label_smoothing);
        let targets = Targets::new(weight.as_deref(), eps, classes);
        let view = RowView::new(&logits, axis);
        let k = T::Compute::kernels();
        let mut grad =
            with_grad.then(|| vec![T::narrow(T::Compute::zero()); indices.len() * classes]);
        let losses =
            for_rows::<T, _, _>(indices.len(), classes, grad.as_deref_mut(), |r, s, out| {
                let label = indices[r];
                if label == IGNORED {
                    if let Some(o) = out {
                        o.fill(T::Compute::zero());
                    }
                    return T::Compute::zero();
                }
                let z = view.row(r, &mut s.logits);
                rows::sparse(k, z, label, &targets, out.map(|out| Grad { out, scale }))
            });
        let loss = reduce::<T>(losses, &expected, options.reduction, divisor);
        let grad = grad.map(|g| rows_to_array(g, &expected, classes, axis));
        Ok((loss, grad))
    })
}

/// Shared driver of the four dense entry points.
fn dense_impl<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
    with_grad: bool,
) -> Result<(ArrayD<T>, Option<ArrayD<T>>)> {
    let logits_axis = class_axis(axis, logits.ndim())?;
    let mismatch = || Error::DenseLabelsShape {
        labels: labels.shape().to_vec(),
        logits: logits.shape().to_vec(),
    };
    let shape = broadcast_shapes(logits.shape(), labels.shape()).ok_or_else(mismatch)?;
    if with_grad && shape != logits.shape() {
        return Err(Error::GradBroadcast {
            logits: logits.shape().to_vec(),
            broadcast: shape,
        });
    }
    let axis = logits_axis + (shape.len() - logits.ndim());
    check_classes(&shape, axis)?;
    let classes = shape[axis];
    let batch_shape = without(&shape, axis);
    let weight = class_weights::<T::Compute>(options, classes)?;
    let logits = logits.broadcast(IxDyn(&shape)).ok_or_else(mismatch)?;
    let labels = labels.broadcast(IxDyn(&shape)).ok_or_else(mismatch)?;
    in_pool(|| {
        let rows: usize = batch_shape.iter().product();
        let divisor = rows as f64;
        let scale = match options.reduction {
            Reduction::Mean => T::Compute::from_f64(1.0 / divisor),
            _ => T::Compute::one(),
        };
        let eps = T::Compute::from_f64(options.label_smoothing);
        let targets = Targets::new(weight.as_deref(), eps, classes);
        let (z_rows, y_rows) = (RowView::new(&logits, axis), RowView::new(&labels, axis));
        let k = T::Compute::kernels();
        let mut grad = with_grad.then(|| vec![T::narrow(T::Compute::zero()); rows * classes]);
        let losses = for_rows::<T, _, _>(rows, classes, grad.as_deref_mut(), |r, s, out| {
            let z = z_rows.row(r, &mut s.logits);
            let y = y_rows.row(r, &mut s.labels);
            rows::dense(
                k,
                z,
                y,
                &targets,
                &mut s.targets,
                out.map(|out| Grad { out, scale }),
            )
        });
        let loss = reduce::<T>(losses, &batch_shape, options.reduction, divisor);
        let grad = grad.map(|g| rows_to_array(g, &batch_shape, classes, axis));
        Ok((loss, grad))
    })
}

/// Sparse softmax cross-entropy (TensorFlow's `sparse_softmax_cross_entropy_with_logits`):
/// `labels` holds class indices and has the logits' shape without the class axis.
pub fn sparse_softmax_cross_entropy<T: Element, L: Label>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
) -> Result<ArrayD<T>> {
    Ok(sparse_impl(logits, labels, axis, options, false)?.0)
}

/// [`sparse_softmax_cross_entropy`] and the gradient of the summed returned loss with respect
/// to the logits, in one pass per row. The gradient has the logits' shape.
pub fn sparse_softmax_cross_entropy_with_grad<T: Element, L: Label>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
) -> Result<(ArrayD<T>, ArrayD<T>)> {
    let (loss, grad) = sparse_impl(logits, labels, axis, options, true)?;
    Ok((loss, grad.expect("requested")))
}

/// Dense softmax cross-entropy (TensorFlow's `softmax_cross_entropy_with_logits`): `labels`
/// broadcasts against `logits`; the loss has the broadcast shape without the class axis.
pub fn softmax_cross_entropy<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
) -> Result<ArrayD<T>> {
    Ok(dense_impl(logits, labels, axis, options, false)?.0)
}

/// [`softmax_cross_entropy`] and the gradient of the summed returned loss with respect to the
/// logits (`Σy · softmax - y` per row, the true derivative). The logits must have the full
/// broadcast shape.
pub fn softmax_cross_entropy_with_grad<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
) -> Result<(ArrayD<T>, ArrayD<T>)> {
    let (loss, grad) = dense_impl(logits, labels, axis, options, true)?;
    Ok((loss, grad.expect("requested")))
}

/// Runs a row-to-row operation (`log_softmax`, `softmax`) over every row.
fn map_rows<T: Element>(
    logits: ArrayViewD<T>,
    axis: isize,
    op: fn(&crate::kernels::RowKernels<T::Compute>, &[T::Compute], &mut [T::Compute]),
) -> Result<ArrayD<T>> {
    let axis = class_axis(axis, logits.ndim())?;
    let view = RowView::new(&logits, axis);
    let (rows, classes) = (view.rows(), view.classes);
    let k = T::Compute::kernels();
    let mut out = vec![T::narrow(T::Compute::zero()); rows * classes];
    if out.is_empty() {
        return Ok(rows_to_array(out, &view.batch_shape, classes, axis));
    }
    in_pool(|| {
        for_rows::<T, _, _>(rows, classes, Some(&mut out), |r, s, o| {
            op(
                k,
                view.row(r, &mut s.logits),
                o.expect("output rows requested"),
            )
        })
    });
    Ok(rows_to_array(out, &view.batch_shape, classes, axis))
}

/// `z - logsumexp(z)` along `axis`. Rows with NaN or +inf, and rows of -inf, give NaN.
pub fn log_softmax<T: Element>(logits: ArrayViewD<T>, axis: isize) -> Result<ArrayD<T>> {
    map_rows(logits, axis, rows::log_softmax)
}

/// `exp(z - logsumexp(z))` along `axis`. Rows with NaN or +inf, and rows of -inf, give NaN.
pub fn softmax<T: Element>(logits: ArrayViewD<T>, axis: isize) -> Result<ArrayD<T>> {
    map_rows(logits, axis, rows::softmax)
}

/// `log Σ exp(z)` along `axis`; the result has the logits' shape without `axis`. A row of
/// -inf gives -inf, a row with +inf gives +inf, a row with NaN gives NaN.
pub fn logsumexp<T: Element>(logits: ArrayViewD<T>, axis: isize) -> Result<ArrayD<T>> {
    let axis = class_axis(axis, logits.ndim())?;
    let view = RowView::new(&logits, axis);
    let k = T::Compute::kernels();
    let sums = in_pool(|| {
        for_rows::<T, _, _>(view.rows(), view.classes, None, |r, s, _| {
            RowStats::of(k, view.row(r, &mut s.logits)).logsumexp()
        })
    });
    Ok(batch_array(sums, &view.batch_shape))
}
