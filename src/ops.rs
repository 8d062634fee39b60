//! Shapes, axes, broadcasting and the parallel driver: everything between an n-d view and
//! the row math of `crate::rows`.

use std::marker::PhantomData;
use std::ops::Range;

use ndarray::{ArrayD, ArrayView1, ArrayViewD, ArrayViewMutD, IxDyn};
use num_traits::Zero;

use crate::blocks::{Row, RowOut, Sink, Source, StoredOut};
use crate::element::{Element, Label};
use crate::error::{Error, Result};
use crate::kernels::lanes::LANES;
use crate::kernels::{Ahead, CompensatedSum, Float, StoredKernels};
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

/// Number of rows a thread takes at a time at least, so each run reads ≥ 16 Ki elements.
fn min_rows_per_task(classes: usize) -> usize {
    ((1usize << 14) / classes.max(1)).max(1)
}

/// The rows whose results [`for_rows_with`] stores together: whole groups (one at least), up
/// to 256 rows or 4 Ki elements, a quarter of the least a task reads.
fn rows_per_block(classes: usize, group: usize) -> usize {
    let rows = ((1usize << 12) / classes.max(1)).clamp(1, 256);
    (rows / group * group).max(group)
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
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

fn without(shape: &[usize], axis: usize) -> Vec<usize> {
    shape.iter().enumerate().filter(|&(d, _)| d != axis).map(|(_, &n)| n).collect()
}

/// Zero classes leave no valid label (and no defined softmax) for a non-empty batch.
fn check_classes(shape: &[usize], axis: usize) -> Result<()> {
    if shape[axis] == 0 && without(shape, axis).iter().product::<usize>() > 0 {
        return Err(Error::NoClasses { logits_shape: shape.to_vec(), axis });
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

/// Where the rows of a strided n-d array lie: row `r` (in row-major order over the batch
/// dimensions) starts at `offset(r)` and steps by `class_stride`.
#[derive(Clone)]
struct RowLayout {
    /// The batch dimensions, merged where their strides allow (a C-contiguous batch is one
    /// dimension), so that `offset` divides as little as possible.
    batch_shape: Vec<usize>,
    batch_strides: Vec<isize>,
    /// The product of `batch_shape`.
    rows: usize,
    classes: usize,
    class_stride: isize,
}

impl RowLayout {
    fn new(shape: &[usize], strides: &[isize], axis: usize) -> Self {
        let mut batch_shape: Vec<usize> = Vec::new();
        let mut batch_strides: Vec<isize> = Vec::new();
        for (_, (&n, &s)) in shape.iter().zip(strides).enumerate().filter(|&(d, _)| d != axis) {
            match (batch_shape.last_mut(), batch_strides.last_mut()) {
                (Some(prev_n), Some(prev_s)) if *prev_s == s * n as isize => {
                    *prev_n *= n;
                    *prev_s = s;
                }
                _ => {
                    batch_shape.push(n);
                    batch_strides.push(s);
                }
            }
        }
        let rows = batch_shape.iter().product();
        RowLayout { batch_shape, batch_strides, rows, classes: shape[axis], class_stride: strides[axis] }
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn elements(&self) -> usize {
        self.rows() * self.classes
    }

    fn offset(&self, mut r: usize) -> isize {
        let mut off = 0isize;
        // The outermost dimension takes what is left of `r` (`r < rows`): no division for
        // the common one batch dimension (narrow rows are millions of calls).
        if let Some((&s0, inner)) = self.batch_strides.split_first() {
            for (&n, &s) in self.batch_shape[1..].iter().zip(inner).rev() {
                off += (r % n) as isize * s;
                r /= n;
            }
            off += r as isize * s0;
        }
        off
    }
}

/// A row's maximum and the index of its first occurrence.
type MaxAt<T> = (<T as Element>::Compute, usize);

/// The narrowest half-type rows read for their statistics alone that are read as stored in
/// both passes rather than widened whole ([`RowView::row_and_max`]): a maximum on the stored
/// bits costs less than widening them, but a row read a block at a time costs more calls per
/// row, which narrow rows feel. Sparse forward passes, float16 / bfloat16, medians of 15
/// interleaved calls, widened whole against read as stored (float32 alongside): 4096×32768
/// 29.2 / 30.6 -> 26.5 / 28.2 ms and 26.1 / 26.2 -> 24.1 / 23.8 (float32 27.4, 26.0),
/// 65536×1000 22.5 / 22.9 -> 22.0 / 20.8 and 19.6 / 19.6 -> 19.0 / 17.1, 65536×768 18.0 /
/// 18.1 -> 16.7 / 16.5; 65536×640 and 65536×512 no better (14.4 / 14.4 -> 15.1 / 13.8, 11.5 /
/// 12.0 -> 13.3 / 11.5), 131072×256 5-8% slower. One threshold for both types, where both
/// gained (bfloat16 alone gained from 640). (Rows that keep their exps ran 5-10% slower read
/// as stored: their kept exps are widened block by block there.)
const STORED_STATS_MIN: usize = 768;

/// The kernels over rows of `T` as stored (half types).
type Stored<T> = &'static StoredKernels<T, <T as Element>::Compute>;

/// The rows of a strided n-d view along its class axis, read without copying where the
/// memory already holds the compute type contiguously (but for narrow rows, which
/// [`for_rows_with`] copies sixteen at a time unless they are at most `IN_PLACE_TILE_MAX`
/// wide and read for no outputs, or are a dense row's targets, which no output overlaps;
/// half-type sparse tiles read for no outputs are read as stored, see [`StoredTileFn`]).
struct RowView<'a, T: Element> {
    ptr: *const T,
    layout: RowLayout,
    /// Kernels over contiguous half-type rows as stored: a row widened whole and its maximum
    /// in one pass, and the statistics of rows read a block at a time (long rows, and rows
    /// read for their statistics alone: see [`RowView::row_and_max`]).
    stored: Option<Stored<T>>,
    /// Never borrow a row: the gradient is written over these logits.
    copy: bool,
    _view: PhantomData<&'a T>,
}

// SAFETY: a RowView only reads through `ptr`, like the `ArrayView` it was made from; when
// the same memory is written (in-place gradient), each row, or each block of a long row, is
// read before it is written, by the one task that owns it.
unsafe impl<T: Element> Send for RowView<'_, T> {}
unsafe impl<T: Element> Sync for RowView<'_, T> {}

impl<'a, T: Element> RowView<'a, T> {
    fn new(view: &ArrayViewD<'a, T>, axis: usize) -> Self {
        Self::with_copy(view.as_ptr(), RowLayout::new(view.shape(), view.strides(), axis), false)
    }

    fn with_copy(ptr: *const T, layout: RowLayout, copy: bool) -> Self {
        let stored = if layout.class_stride == 1 && !copy { T::stored_kernels() } else { None };
        RowView { ptr, layout, stored, copy, _view: PhantomData }
    }

    /// Rows `first..first + n` as they are stored, when they lie one after another in memory
    /// (and are not about to be overwritten).
    fn stored_rows(&self, first: usize, n: usize) -> Option<&'a [T]> {
        let l = &self.layout;
        let dense = n == 1 || (l.batch_strides.len() == 1 && l.batch_strides[0] == l.classes as isize);
        if self.copy || l.class_stride != 1 || !dense || first + n > l.rows() {
            return None;
        }
        // SAFETY: rows `first..first + n` are in the view, one after another.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.offset(l.offset(first)), n * l.classes) })
    }

    /// [`RowView::stored_rows`], when they are already in the compute type.
    fn contiguous_rows(&self, first: usize, n: usize) -> Option<&'a [T::Compute]> {
        self.stored_rows(first, n).and_then(T::as_compute)
    }

    /// Row `r` in the compute type: borrowed when possible; otherwise read a block at a time
    /// when long (`rows::SPLIT_MIN` or more: never copied whole), or widened whole into
    /// `scratch`.
    #[inline(always)] // (a `Row` returned through memory stalls on the stores just before)
    fn row<'s>(&'s self, r: usize, scratch: &'s mut Vec<T::Compute>) -> Row<'s, T::Compute> {
        let classes = self.layout.classes;
        if let (false, Some(c)) = (self.copy, self.contiguous_rows(r, 1)) {
            return Row::Slice(c);
        }
        if classes >= rows::SPLIT_MIN {
            assert!(r < self.layout.rows(), "a row of the view");
            return Row::Stored { start: self.layout.offset(r), len: classes, source: self };
        }
        // (Resized, not cleared: a scratch of the row's length already is written over, not
        // zeroed first.)
        scratch.resize(classes, T::Compute::zero());
        self.widen_row(r, scratch);
        Row::Slice(scratch)
    }

    /// [`RowView::row`], with the row's `max_argmax` where the row is widened whole by a
    /// kernel that takes it in the same pass (half-type rows): converted once, the row is then
    /// read by the compute type's kernels, not converted again. Half-type rows read for their
    /// statistics alone (`stats_only`, see [`Extras`]) and at least [`STORED_STATS_MIN`] long
    /// are read as stored in both passes instead, their maximum taken on the stored bits.
    #[inline(always)]
    fn row_and_max<'s>(
        &'s self,
        r: usize,
        scratch: &'s mut Vec<T::Compute>,
        stats_only: bool,
    ) -> (Row<'s, T::Compute>, Option<MaxAt<T>>) {
        let classes = self.layout.classes;
        match self.stored {
            Some(_) if stats_only && classes >= STORED_STATS_MIN => {
                assert!(r < self.layout.rows(), "a row of the view");
                (Row::Stored { start: self.layout.offset(r), len: classes, source: self }, None)
            }
            // The rows `row` widens whole, when they have stored kernels (and elements: the
            // kernel's maximum wants one).
            Some(k) if (1..rows::SPLIT_MIN).contains(&classes) => {
                assert!(r < self.layout.rows(), "a row of the view");
                scratch.resize(classes, T::Compute::zero());
                // SAFETY: row `r` is in the view, and contiguous (`stored` is only set then).
                let z = unsafe { self.elements(self.layout.offset(r), 0..classes) };
                let known = (k.widen_max_argmax)(z, scratch);
                (Row::Slice(scratch), Some(known))
            }
            _ => (self.row(r, scratch), None),
        }
    }

    /// The tile of rows `first..first + LANES`, one after another in the compute type: where
    /// they lie if `in_place` and they are stored so (the tile's columns are read straight
    /// from them), else widened into `scratch` in one go (its columns then read from L1;
    /// gathered a column at a time from the rows, they waited on L2). The rows of a tile a
    /// few ahead are asked for: they are read where the prefetcher has not looked yet.
    fn tile<'s>(&'s self, first: usize, scratch: &'s mut Vec<T::Compute>, in_place: bool) -> &'s [T::Compute] {
        if let Some(ahead) = self.stored_rows(first + TILES_AHEAD * LANES, LANES) {
            crate::kernels::prefetch(ahead);
        }
        match self.contiguous_rows(first, LANES).filter(|_| in_place) {
            Some(rows) => rows,
            None => {
                scratch.resize(LANES * self.layout.classes, T::Compute::zero());
                self.widen_rows(first, scratch);
                scratch
            }
        }
    }

    /// Rows `first..`, widened, one after another into `dst` (of whole rows).
    fn widen_rows(&self, first: usize, dst: &mut [T::Compute]) {
        let classes = self.layout.classes;
        match self.stored_rows(first, dst.len() / classes) {
            Some(stored) => T::widen_into(stored, dst),
            None => (first..).zip(dst.chunks_exact_mut(classes)).for_each(|(r, row)| self.widen_row(r, row)),
        }
    }

    /// Row `r`, widened, into `dst` (of the row's length).
    fn widen_row(&self, r: usize, dst: &mut [T::Compute]) {
        assert!(r < self.layout.rows() && dst.len() == self.layout.classes, "a row of the view");
        // SAFETY: row `r` is in the view, and has `classes` elements.
        unsafe { self.widen(self.layout.offset(r), 0, dst) };
    }

    /// Elements `range` of the row at `start`, as stored, where the rows are contiguous.
    ///
    /// # Safety
    /// As [`Source::widen`].
    unsafe fn elements(&self, start: isize, range: Range<usize>) -> &[T] {
        debug_assert_eq!(self.layout.class_stride, 1);
        std::slice::from_raw_parts(self.ptr.offset(start + range.start as isize), range.len())
    }
}

impl<T: Element> Source<T::Compute> for RowView<'_, T> {
    unsafe fn max_argmax(&self, start: isize, range: Range<usize>) -> Option<(T::Compute, usize)> {
        self.stored.map(|k| (k.max_argmax)(self.elements(start, range)))
    }

    unsafe fn sum_exp(
        &self,
        start: isize,
        range: Range<usize>,
        shift: T::Compute,
        skip: usize,
        ahead: Ahead,
    ) -> Option<f64> {
        self.stored.map(|k| (k.sum_exp)(self.elements(start, range), shift, skip, ahead))
    }

    unsafe fn exp_scaled(
        &self,
        start: isize,
        range: Range<usize>,
        shift: T::Compute,
        scale: T::Compute,
        out: StoredOut<'_>,
        stream: bool,
    ) -> bool {
        // Never over logits the output overwrites: the stored input and output would alias.
        if self.copy {
            return false;
        }
        let (Some(k), Some(out)) = (self.stored, out.get::<T>()) else { return false };
        (if stream { k.exp_scaled_stream } else { k.exp_scaled })(self.elements(start, range), shift, scale, out);
        true
    }

    unsafe fn widen(&self, start: isize, from: usize, dst: &mut [T::Compute]) {
        let stride = self.layout.class_stride;
        // SAFETY (of the offsets): the caller keeps them inside a row of the view.
        let p = self.ptr.offset(start + from as isize * stride);
        if stride == 1 {
            T::widen_into(std::slice::from_raw_parts(p, dst.len()), dst);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = (*p.offset(i as isize * stride)).widen();
            }
        }
    }
}

/// Per-thread buffers for the row math, reused across the rows a task handles.
#[derive(Default)]
struct Scratch<F> {
    labels: Vec<F>,
    targets: Vec<F>,
}

/// Per-thread buffers of the driver itself.
struct DriverScratch<F> {
    row: Vec<F>,
    tile: Vec<F>,
    /// A tile's outputs, where they are not written in place.
    out: Vec<F>,
    stats: Vec<RowStats<F>>,
    /// A tile's `exp(z_j - max)`, row by row, or a row's.
    exps: Vec<F>,
    /// A tile's targets (see [`Extras`]), row by row.
    targets: Vec<F>,
}

impl<F: Float> Default for DriverScratch<F> {
    fn default() -> Self {
        DriverScratch {
            row: Vec::new(),
            tile: Vec::new(),
            out: Vec::new(),
            stats: vec![RowStats::default(); LANES],
            exps: Vec::new(),
            targets: Vec::new(),
        }
    }
}

/// Where output rows go: any strided destination whose rows do not overlap (a fresh array,
/// the caller's `grad_out`, or the logits themselves for an in-place gradient).
struct RowSink<'a, T> {
    ptr: *mut T,
    layout: RowLayout,
    /// Rows written once may be stored past the caches (see [`RowSink::streaming`]).
    stream: bool,
    /// The rows are also read, block by block, as they are written (see
    /// [`RowSink::in_place`]).
    read_back: bool,
    /// The outputs are built from the rows' exps (a softmax, a gradient), which the
    /// statistics then keep (see [`for_rows`]).
    from_exps: bool,
    _view: PhantomData<&'a mut T>,
}

// SAFETY: each row is written by the one task that handles it, and rows do not overlap (an
// `ArrayViewMut` never aliases itself).
unsafe impl<T: Send> Send for RowSink<'_, T> {}
unsafe impl<T: Send> Sync for RowSink<'_, T> {}

impl<'a, T: Element> RowSink<'a, T> {
    fn new(view: &mut ArrayViewMutD<'a, T>, axis: usize) -> Self {
        RowSink {
            ptr: view.as_mut_ptr(),
            layout: RowLayout::new(view.shape(), view.strides(), axis),
            stream: false,
            read_back: false,
            from_exps: true,
            _view: PhantomData,
        }
    }

    /// Rows stored past the caches where that pays: they are contiguous, of the compute type
    /// or of a half type with kernels that store it, far outnumber what the caches hold (so a
    /// line read before it is written would be a wasted read), and are long. A streamed row
    /// ends with a fence, and a sparse gradient's label entry, written after the row, reads
    /// its line back from memory: per row, that costs more than streaming saves below a few
    /// thousand classes (sparse float32 gradient into `grad_out`, 128 MiB: 128 classes 109 ->
    /// 39 ms, 256 classes 67 -> 32 ms, unstreamed; 1000 and 2048 classes alike; 4096 classes
    /// 17 -> 24 ms).
    fn streaming(mut self) -> Self {
        const STREAM_MIN_BYTES: usize = 64 << 20;
        const STREAM_MIN_CLASSES: usize = 2048;
        // (Tiles of narrow rows write their outputs with plain stores: never streamed.)
        const _: () = assert!(crate::kernels::lanes::MAX_CLASSES < STREAM_MIN_CLASSES);
        let l = &self.layout;
        let bytes = l.rows() * l.classes * std::mem::size_of::<T>();
        let storable = self.is_direct() || (l.class_stride == 1 && T::stored_kernels().is_some());
        self.stream = storable && bytes >= STREAM_MIN_BYTES && l.classes >= STREAM_MIN_CLASSES;
        self
    }

    /// The sink and a reader of the same rows, for logits the gradient overwrites: the
    /// reader never borrows a row; short rows are copied into scratch before they are
    /// written, long ones read a block at a time just before each block is written.
    fn in_place(mut self) -> (RowView<'a, T>, Self) {
        self.read_back = true;
        (RowView::with_copy(self.ptr, self.layout.clone(), true), self)
    }

    /// Rows `first..first + n` themselves, when they are one block of the compute type.
    ///
    /// # Safety
    /// No other thread accesses those rows meanwhile, nor anything else reads or writes them
    /// while the slice lives.
    unsafe fn rows_mut(&self, first: usize, n: usize) -> Option<&'a mut [T::Compute]> {
        self.stored_rows_mut(first, n).and_then(T::as_compute_mut)
    }

    /// Rows `first..first + n` as they are stored, when they are one block.
    ///
    /// # Safety
    /// As [`RowSink::rows_mut`].
    unsafe fn stored_rows_mut(&self, first: usize, n: usize) -> Option<&'a mut [T]> {
        let l = &self.layout;
        let dense = n == 1 || (l.batch_strides.len() == 1 && l.batch_strides[0] == l.classes as isize);
        if l.class_stride != 1 || !dense || first + n > l.rows() {
            return None;
        }
        Some(std::slice::from_raw_parts_mut(self.ptr.offset(l.offset(first)), n * l.classes))
    }

    /// Calls `fill` with row `r`: the destination itself when it is contiguous and of the
    /// compute type (and not read while written), else written a block at a time.
    ///
    /// # Safety
    /// `r < rows`, and no other thread accesses row `r` meanwhile.
    #[inline(always)] // (as `RowView::row`)
    unsafe fn write_row<R>(&self, r: usize, fill: impl FnOnce(RowOut<T::Compute>) -> R) -> R {
        let classes = self.layout.classes;
        let start = self.layout.offset(r);
        let read_while_written = self.read_back && classes >= rows::SPLIT_MIN;
        if !read_while_written {
            if let Some(row) = self.direct(start, 0, classes) {
                return fill(RowOut::Slice(row));
            }
        }
        fill(RowOut::Stored { start, from: 0, len: classes, sink: self })
    }
}

impl<T: Element> Sink<T::Compute> for RowSink<'_, T> {
    #[allow(clippy::mut_from_ref)] // (see the trait)
    unsafe fn direct(&self, start: isize, from: usize, len: usize) -> Option<&mut [T::Compute]> {
        if self.layout.class_stride != 1 {
            return None;
        }
        T::as_compute_mut(std::slice::from_raw_parts_mut(self.ptr.offset(start + from as isize), len))
    }

    unsafe fn narrow(&self, start: isize, from: usize, src: &[T::Compute]) {
        let stride = self.layout.class_stride;
        let p = self.ptr.offset(start + from as isize * stride);
        if stride == 1 {
            T::narrow_slice(src, std::slice::from_raw_parts_mut(p, src.len()));
        } else {
            for (i, &x) in src.iter().enumerate() {
                *p.offset(i as isize * stride) = T::narrow(x);
            }
        }
    }

    fn is_direct(&self) -> bool {
        self.layout.class_stride == 1 && T::as_compute_mut(&mut []).is_some()
    }

    unsafe fn stored_elements(&self, start: isize, from: usize, len: usize) -> Option<StoredOut<'_>> {
        if self.layout.class_stride != 1 {
            return None;
        }
        Some(StoredOut::new(std::slice::from_raw_parts_mut(self.ptr.offset(start + from as isize), len)))
    }

    unsafe fn exp_scaled(
        &self,
        start: isize,
        from: usize,
        z: &[T::Compute],
        shift: T::Compute,
        scale: T::Compute,
        stream: bool,
    ) -> bool {
        let Some((k, out)) = self.with_stored_kernels(start, from, z.len()) else { return false };
        (if stream { k.exp_scaled_narrow_stream } else { k.exp_scaled_narrow })(z, shift, scale, out);
        true
    }

    unsafe fn scaled(&self, start: isize, from: usize, x: &[T::Compute], scale: T::Compute, stream: bool) -> bool {
        let Some((k, out)) = self.with_stored_kernels(start, from, x.len()) else { return false };
        (if stream { k.scale_narrow_stream } else { k.scale_narrow })(x, scale, out);
        true
    }
}

impl<T: Element> RowSink<'_, T> {
    /// The stored type's kernels and the elements `from..from + len` of the row at `start` as
    /// stored, where the rows are contiguous and the type has such kernels (half types).
    ///
    /// # Safety
    /// As [`Sink::direct`].
    #[allow(clippy::mut_from_ref)] // (the slice is carved from a raw pointer, not from `self`)
    unsafe fn with_stored_kernels(&self, start: isize, from: usize, len: usize) -> Option<(Stored<T>, &mut [T])> {
        let (1, Some(k)) = (self.layout.class_stride, T::stored_kernels()) else { return None };
        Some((k, std::slice::from_raw_parts_mut(self.ptr.offset(start + from as isize), len)))
    }
}

/// Calls on at most this many elements run on the calling thread alone: no pool thread is
/// woken to help (see `crate::threads`).
const SEQUENTIAL_MAX: usize = 1 << 15;

/// The widest rows whose tiles take the sums of their targets (see [`Extras`]) with their
/// statistics (a row at a time, the `target_sums` kernel and its horizontal sums cost more
/// than the rest of a narrow row). Dense, one thread, fastest of 15, builds alternated three
/// times, float32 (float16 with float16 labels):
/// - 1,000,000×10: forward 25.2-25.3 -> 16.8-17.0 ms (48.1-48.5 -> 17.8-18.0), the gradient
///   into `grad_out` 50.1-51.2 -> 51.9-52.3 (72.3-73.5 -> 64.9-66.4);
/// - 600,000×16: forward 17.0-17.7 -> 13.1-13.5 (25.8-26.1 -> 13.7-14.2), gradient 32.4-32.7
///   -> 33.2-34.1 (39.4-39.9 -> 37.1-37.6);
/// - 32 classes: forward 22.7-22.9 -> 18.4-19.0, but gradient 38.0-38.3 -> 43.2-44.6; 64
///   and 128 classes: both slower (64: forward 23.0-23.1 -> 29.4-30.1).
const TILE_TARGETS_MAX: usize = 16;

/// The shortest dense rows whose plain targets are summed with their exps
/// (`RowKernels::sum_exp_targets`), not in a pass of their own over the row; only where the
/// maximum is taken in a pass of its own (not with the widened row). Dense forward, one
/// thread, fastest of 15 to 21 calls, the builds' calls interleaved, against the pass of their
/// own: float32 4096×32768 -9%, 65536×1000 and 16384×1000 -8% to -16%, 32768×256 -11%,
/// 16384×512 -1%, 65536×150 +4%; float64 16384×1000 -5%, 80000×128 +5%, 300000×32 +4%,
/// 1,000,000×10 +7% and +8% (-5% in a third run: a few percent is within these runs' swing).
/// float16 logits with float32 labels (the maximum comes with the widened row): 4096×32768
/// +39% while the labels were asked for during the maximum's pass; since they are asked for a
/// row ahead (3471208), 25.2 -> 23.1-24.2 ms, but 65536×1000 17.3 -> 17.6 (2 threads, medians
/// of 21): not taken.
const FUSED_TARGETS_MIN: usize = 256;

/// How far ahead of the tile in hand the next tiles' rows are prefetched.
const TILES_AHEAD: usize = 4;
/// The widest float32 rows whose tiles of logits are read in place, in every call without
/// outputs (see `for_rows_with`; a dense row's targets, at most `TILE_TARGETS_MAX` wide,
/// always are). Measured on the sparse forward pass, one thread, fastest of 15, copied
/// against in place: 1,000,000×10 13.3-13.6 -> 12.6-13.2 ms (two threads 7.0-7.1 ->
/// 6.3-6.7), 524288×32 15.3 -> 13.6-14.0, 262144×64 15.3-18.4 -> 13.3-16.8, but 262144×128
/// 31.8-32.8 -> 34.3-39.3.
const IN_PLACE_TILE_MAX: usize = 64;

/// Runs `f(r, z, stats, scratch, out)` for every row `r` of `view` in parallel, with the
/// row `z` in the compute type and its statistics, and puts what it returns in `results[r]`.
/// With a `sink`, `out` is the row's output in the compute type (half types are rounded once,
/// as each block is stored). Narrow rows are read sixteen at a time and their statistics
/// computed across rows (`kernels::lanes`).
fn for_rows<T, R, Fun>(view: &RowView<T>, sink: Option<&RowSink<T>>, results: &mut [R], f: Fun)
where
    T: Element,
    R: Copy + Default + Send,
    Fun: RowFn<T::Compute, R>,
{
    for_rows_with(view, sink, results, in_place, f, Extras::NONE)
}

/// Has a block of results computed by the function it is given and puts them in their place
/// (the slice), using the buffer (of the task) if it needs one.
type Store<R, S> = fn(&mut [S], &mut Vec<R>, &mut dyn FnMut(&mut [R]));

/// The [`Store`] of results computed where they belong.
fn in_place<R>(results: &mut [R], _: &mut Vec<R>, compute: &mut dyn FnMut(&mut [R])) {
    compute(results);
}

/// The [`Store`] of results computed in the compute type and rounded to `T`, a block at a
/// time, so by the threads that compute them (no pass of their own), and from a buffer
/// written a while before (read back right after each tile or row was written, one number
/// at a time, they waited on the stores: store-to-load forwarding fails across several).
fn rounded<T: Element>(results: &mut [T], buffer: &mut Vec<T::Compute>, compute: &mut dyn FnMut(&mut [T::Compute])) {
    if buffer.len() < results.len() {
        buffer.resize(results.len(), T::Compute::zero()); // (once a task: each result is set)
    }
    let computed = &mut buffer[..results.len()];
    compute(computed);
    T::narrow_slice(computed, results);
}

/// The function [`for_rows`] calls on each row: `(r, z, stats, exps, scratch, out)`, `exps`
/// the row's `exp(z_j - max)` where already computed.
trait RowFn<F, R>:
    Fn(usize, &Row<F>, &RowStats<F>, Option<&[F]>, &mut Scratch<F>, Option<&mut RowOut<F>>) -> R + Sync
{
}
impl<F, R, G> RowFn<F, R> for G where
    G: Fn(usize, &Row<F>, &RowStats<F>, Option<&[F]>, &mut Scratch<F>, Option<&mut RowOut<F>>) -> R + Sync
{
}

/// Takes a whole tile of narrow rows of a call without outputs: `(first row, the tile's rows
/// one after another, their targets (see [`Extras`]), their results)`; returns false to
/// leave the tile to the row function.
type TileFn<'a, F, R> = &'a (dyn Fn(usize, &[F], Option<&[F]>, &mut [R]) -> bool + Sync);

/// A [`TileFn`] that reads the rows as stored, not widened (half types): `(first row, their
/// results)`; false where it cannot, or leaves the tile to the row function: the tile then
/// goes the usual way (a tile with a row that is not plain, which is rare, then has its
/// statistics taken again).
type StoredTileFn<'a, R> = &'a (dyn Fn(usize, &mut [R]) -> bool + Sync);

/// What the row function reads from memory for row `r` besides its logits (at most one
/// region, the next row's logits being the other: a dense row's labels, which the pass that
/// sums its exps reads instead where it sums them, see `FUSED_TARGETS_MIN`), to ask for while
/// the exps of the row before are summed (of the row itself, where the row function reads
/// them after). Narrow rows, taken sixteen at a time, do not ask, and rows split across
/// threads ask for their own next parts, and only the last part for a part's worth of this
/// (`rows::split_stats`).
type RowAhead<'a> = &'a (dyn Fn(usize) -> Ahead<'a> + Sync);

/// A call's rows of targets, whose sums the statistics take (see `RowStats::target_sums`): a
/// tile at a time (see [`RowView::tile`]), or a row where it lies in memory in the compute
/// type (`None`: the row function takes its sums itself).
trait TargetRows<F>: Sync {
    fn tile<'s>(&'s self, first: usize, scratch: &'s mut Vec<F>, in_place: bool) -> &'s [F];
    fn row(&self, r: usize) -> Option<&[F]>;
}

/// The targets of a dense call with class weights or smoothing, a tile at a time: its labels'
/// tile mapped by [`Targets`] (a row at a time, `rows::dense` maps and sums them itself).
struct MappedTargets<'a, 'v, T: Element> {
    labels: &'a RowView<'v, T>,
    targets: &'a Targets<'a, T::Compute>,
}

impl<T: Element> TargetRows<T::Compute> for MappedTargets<'_, '_, T> {
    fn tile<'s>(&'s self, first: usize, scratch: &'s mut Vec<T::Compute>, _: bool) -> &'s [T::Compute] {
        let classes = self.labels.layout.classes;
        scratch.resize(LANES * classes, T::Compute::zero());
        self.labels.widen_rows(first, scratch);
        scratch.chunks_exact_mut(classes).for_each(|row| self.targets.map_labels(row));
        scratch
    }

    fn row(&self, _: usize) -> Option<&[T::Compute]> {
        None
    }
}

/// The targets of a sparse call's smoothing, the same for every row: its class weights (ones
/// without), whose gap (see `rows::sparse`) a tile's statistics then take with the rest.
struct RepeatedTargets<F> {
    tile: Vec<F>,
}

impl<F: Float> TargetRows<F> for RepeatedTargets<F> {
    fn tile<'s>(&'s self, _: usize, _: &'s mut Vec<F>, _: bool) -> &'s [F] {
        &self.tile
    }

    fn row(&self, _: usize) -> Option<&[F]> {
        None
    }
}

impl<T: Element> TargetRows<T::Compute> for RowView<'_, T> {
    fn tile<'s>(&'s self, first: usize, scratch: &'s mut Vec<T::Compute>, in_place: bool) -> &'s [T::Compute] {
        RowView::tile(self, first, scratch, in_place)
    }

    fn row(&self, r: usize) -> Option<&[T::Compute]> {
        self.contiguous_rows(r, 1)
    }
}

/// What a caller may give [`for_rows_with`] besides the row function.
struct Extras<'a, F, R> {
    /// A function that does a whole tile of narrow rows at once (where the work per row is so
    /// small that calling the row function costs more than it).
    tile: Option<TileFn<'a, F, R>>,
    /// The same, tried first, reading the rows as stored.
    stored_tile: Option<StoredTileFn<'a, R>>,
    /// What the row function reads besides the logits.
    ahead: RowAhead<'a>,
    /// The rows of targets (a dense call's labels, mapped where weights or smoothing make them
    /// differ; a sparse call's smoothing targets), whose sums the statistics then take (see
    /// `RowStats::target_sums`): a tile's (rows of up to `TILE_TARGETS_MAX`), or a row's where
    /// its targets lie in memory in the compute type (rows shorter than `rows::SPLIT_MIN`).
    targets: Option<&'a dyn TargetRows<F>>,
    /// The row function reads nothing of a row but its statistics and single elements, and
    /// writes no output: long half-type rows are then read as stored (see
    /// [`RowView::row_and_max`]).
    stats_only: bool,
}

impl<F, R> Extras<'_, F, R> {
    const NONE: Self =
        Extras { tile: None, stored_tile: None, ahead: &|_| Ahead::NONE, targets: None, stats_only: false };
}

/// [`for_rows`], with [`Extras`], and results put in place by `store` ([`in_place`], or
/// [`rounded`] to the logits' type).
fn for_rows_with<T, R, S, Fun>(
    view: &RowView<T>,
    sink: Option<&RowSink<T>>,
    results: &mut [S],
    store: Store<R, S>,
    f: Fun,
    extras: Extras<T::Compute, R>,
) where
    T: Element,
    R: Copy + Default + Send,
    S: Send,
    Fun: RowFn<T::Compute, R>,
{
    let (rows, classes) = (view.layout.rows(), view.layout.classes);
    let k = T::Compute::kernels();
    let tiled = T::Compute::tiles(classes);
    let group = if tiled { LANES } else { 1 };
    let call = |r: usize,
                z: &Row<T::Compute>,
                stats: &RowStats<T::Compute>,
                exps: Option<&[T::Compute]>,
                s: &mut Scratch<T::Compute>| {
        let (refined, exps) = stats.refined_with(z, exps);
        match sink {
            // SAFETY: `r < rows`, and this task is the only one handling row `r`.
            Some(sink) => unsafe { sink.write_row(r, |mut o| f(r, z, &refined, exps, s, Some(&mut o))) },
            None => f(r, z, &refined, exps, s, None),
        }
    };
    assert_eq!(results.len(), rows, "one result per row");
    // Where the outputs are built from exps, a row's statistics keep theirs (a row of scratch,
    // read back from cache): the outputs need no others where the scale allows.
    let keep_exps = sink.is_some_and(|s| s.from_exps) && classes < rows::SPLIT_MIN;
    let init = || ((Scratch::default(), DriverScratch::default()), Vec::new());
    let fill_group =
        |(s, d): &mut (Scratch<T::Compute>, DriverScratch<T::Compute>), first: usize, results: &mut [R]| {
            if tiled && results.len() == LANES {
                if sink.is_none() && extras.stored_tile.is_some_and(|tf| tf(first, results)) {
                    return;
                }
                // Float32 rows up to `IN_PLACE_TILE_MAX` wide and read for no outputs are
                // transposed where they are, a vector per row at a time: no copy (written
                // outputs need one, they may be the logits).
                let in_place = sink.is_none() && classes <= IN_PLACE_TILE_MAX;
                let tile = view.tile(first, &mut d.tile, in_place);
                // The rows' targets, where the statistics take their sums (read where they
                // are even for outputs: no output overlaps them).
                let targets = (extras.targets)
                    .filter(|_| classes <= TILE_TARGETS_MAX)
                    .map(|rows| rows.tile(first, &mut d.targets, true));
                let Some(sink) = sink else {
                    if extras.tile.is_some_and(|tf| tf(first, tile, targets, results)) {
                        return;
                    }
                    T::Compute::tile_stats(tile, classes, &mut d.stats, None, targets);
                    for (i, (res, (z, stats))) in
                        results.iter_mut().zip(tile.chunks_exact(classes).zip(&d.stats)).enumerate()
                    {
                        let z = Row::Slice(z);
                        *res = f(first + i, &z, &stats.refined(&z), None, s, None);
                    }
                    return;
                };
                // With outputs, the exps of the statistics are kept: the outputs need no others.
                d.exps.resize(LANES * classes, T::Compute::zero());
                T::Compute::tile_stats(tile, classes, &mut d.stats, Some(&mut d.exps), targets);
                let rows_in = tile.chunks_exact(classes).zip(&d.stats).zip(d.exps.chunks_exact(classes));
                // The tile's outputs, one slice: the destination itself where its rows are one
                // block of the compute type, else a buffer stored row by row afterwards.
                // SAFETY: this task is the only one handling these rows, and their logits were
                // read (into `tile`) before they are written.
                let direct = unsafe { sink.rows_mut(first, LANES) };
                let buffered = direct.is_none();
                let out = direct.unwrap_or_else(|| {
                    d.out.resize(LANES * classes, T::Compute::zero());
                    &mut d.out
                });
                for (i, ((res, ((z, stats), exps)), o)) in
                    results.iter_mut().zip(rows_in).zip(out.chunks_exact_mut(classes)).enumerate()
                {
                    let z = Row::Slice(z);
                    let (stats, exps) = stats.refined_with(&z, Some(exps));
                    *res = f(first + i, &z, &stats, exps, s, Some(&mut RowOut::Slice(o)));
                }
                if buffered {
                    // SAFETY: as above.
                    match unsafe { sink.stored_rows_mut(first, LANES) } {
                        // Half types: the sixteen rows rounded in one go.
                        Some(rows) => T::narrow_slice(&d.out, rows),
                        None => {
                            for (i, o) in d.out.chunks_exact(classes).enumerate() {
                                // SAFETY: as above; `first + i < rows`.
                                unsafe { sink.write_row(first + i, |mut row| row.copy_from(o)) };
                            }
                        }
                    }
                }
            } else {
                for (i, res) in results.iter_mut().enumerate() {
                    let r = first + i;
                    let (z, known) = view.row_and_max(r, &mut d.row, extras.stats_only && sink.is_none());
                    let fused = known.is_none() && (FUSED_TARGETS_MIN..rows::SPLIT_MIN).contains(&classes);
                    let targets = extras.targets.filter(|_| fused).and_then(|t| t.row(r));
                    // What comes next from memory, asked for while this row's exps are summed:
                    // the next row, and the other region `f` reads (its labels): the next row's
                    // where this pass sums them, else this row's. (Asked for while the maximum
                    // was taken, a short pass from cache, they came late and the pass that sums
                    // the exps waited on them: dense 4096×32768 took 26-41% longer.)
                    let next = view.stored_rows(r + 1, 1).map_or(Ahead::NONE, |next| Ahead::NONE.and(next));
                    let ahead = next.with((extras.ahead)(if targets.is_some() { r + 1 } else { r }));
                    if keep_exps {
                        d.exps.resize(classes, T::Compute::zero());
                        let stats = RowStats::of_before(k, &z, known, ahead, Some(&mut d.exps), targets);
                        *res = call(r, &z, &stats, stats.is_regular().then_some(&d.exps[..]), s);
                    } else {
                        *res = call(r, &z, &RowStats::of_before(k, &z, known, ahead, None, targets), None, s);
                    }
                }
            }
        };
    let block = rows_per_block(classes, group);
    let block_rows = |(scratch, buffer): &mut (_, Vec<R>), (b, results): (usize, &mut [S])| {
        store(results, buffer, &mut |results| {
            for (g, group_results) in results.chunks_mut(group).enumerate() {
                fill_group(scratch, b * block + g * group, group_results);
            }
        });
    };
    // Small calls run on the calling thread (waking another costs more than the work), and
    // so do long rows where taking them one at a time, each split across the threads, ends
    // sooner than sharing them out whole (in row-times; on a tie whole rows, whose parts
    // then ask for the next in order: 8×262144 on 2 threads 0.30-0.36 against 0.42-0.47 ms).
    let one_at_a_time = classes >= rows::SPLIT_MIN && {
        let (threads, parts) = (crate::threads::num_threads(), classes.div_ceil(rows::SPLIT_BLOCK));
        rows * parts.div_ceil(threads) < rows.div_ceil(threads) * parts
    };
    if view.layout.elements() <= SEQUENTIAL_MAX || one_at_a_time {
        let mut state = init();
        results.chunks_mut(block).enumerate().for_each(|item| block_rows(&mut state, item));
    } else {
        let min_blocks = (min_rows_per_task(classes) / block).max(1);
        crate::threads::for_each_chunk(results, block, min_blocks, init, |state, b, chunk| {
            block_rows(state, (b, chunk))
        });
    }
}

/// A zeroed array of the logits' shape whose rows (along `axis`) are contiguous: shape
/// `batch_shape + [classes]` in row-major order, seen with the class axis back at `axis`.
fn row_major_like<T: Element>(batch_shape: &[usize], classes: usize, axis: usize) -> ArrayD<T> {
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
    let data = zeroed_output::<T>(shape.iter().product());
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("one element per index").permuted_axes(perm)
}

/// A zeroed vector for a large output. Fresh memory costs a page fault per page touched, more
/// than the kernels themselves for a gradient of hundreds of MiB; on Linux, asking for huge
/// pages before the first touch makes that 512 times fewer faults.
fn zeroed_output<T: Element>(len: usize) -> Vec<T> {
    let data = T::zeros(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, bytes) = (data.as_ptr() as usize, len * std::mem::size_of::<T>());
        let aligned = start.next_multiple_of(HUGE);
        if bytes >= 4 * HUGE && aligned < start + bytes {
            // SAFETY: a hint about pages inside `data`'s allocation; it changes no contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    (start + bytes - aligned) & !(HUGE - 1),
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
    data
}

/// Compensated sum in `f64`: within about an ulp of the exact sum however many terms (a
/// pairwise sum adds a rounding per level: 4.08 ulp measured on 193 float64 losses of ~1.5
/// ulp each), and the same bits whatever the thread count. Eight sums in turn, so that the
/// additions do not wait on each other. (An empty sum is +0.)
fn sum_f64(xs: impl Iterator<Item = f64>) -> f64 {
    let mut lanes = [CompensatedSum::<f64>::default(); 8];
    for (i, x) in xs.enumerate() {
        lanes[i % 8].add(x);
    }
    let mut total = CompensatedSum::default();
    lanes.iter().for_each(|lane| total.add(lane.value()));
    total.value()
}

/// The shape the loss has: the batch shape, or 0-d with a reduction.
fn loss_shape(batch_shape: &[usize], reduction: Reduction) -> Vec<usize> {
    match reduction {
        Reduction::None => batch_shape.to_vec(),
        _ => Vec::new(),
    }
}

/// One result per row (row order, a loss or a sum): in the compute type, or in the logits'
/// type (half types, rounded a block of rows at a time as they are computed: [`rounded`]).
enum PerRow<'a, T: Element> {
    Compute(&'a mut [T::Compute]),
    Stored(&'a mut [T]),
}

impl<'a, T: Element> PerRow<'a, T> {
    /// `results` in the compute type where that is their type.
    fn of(results: &'a mut [T]) -> Self {
        // (Asked twice: a borrow returned from one arm of a match would hold the other's.)
        if T::as_compute_mut(results).is_none() {
            return Self::Stored(results);
        }
        Self::Compute(T::as_compute_mut(results).expect("the compute type"))
    }
}

/// Runs `run` on a buffer of per-row losses and puts them into `out`, reduced as asked
/// (`divisor` is the `Mean` denominator). Without a reduction, `run` writes into `out` itself
/// where it is contiguous. `out` has the shape of [`loss_shape`].
fn fill_losses<T: Element>(
    out: &mut ArrayViewMutD<T>,
    rows: usize,
    reduction: Reduction,
    divisor: f64,
    run: impl FnOnce(PerRow<T>),
) {
    if reduction == Reduction::None {
        if let Some(flat) = out.as_slice_mut() {
            return run(PerRow::of(flat));
        }
    }
    let mut losses = vec![T::Compute::zero(); rows];
    run(PerRow::Compute(&mut losses));
    write_losses(losses, out, reduction, divisor);
}

/// [`for_rows_with`] into `results`.
fn for_rows_into<T, Fun>(
    view: &RowView<T>,
    sink: Option<&RowSink<T>>,
    results: PerRow<T>,
    f: Fun,
    extras: Extras<T::Compute, T::Compute>,
) where
    T: Element,
    Fun: RowFn<T::Compute, T::Compute>,
{
    match results {
        PerRow::Compute(results) => for_rows_with(view, sink, results, in_place, f, extras),
        PerRow::Stored(results) => for_rows_with(view, sink, results, rounded::<T>, f, extras),
    }
}

/// Writes per-row losses (row order) into `out`, reduced as asked; `divisor` is the `Mean`
/// denominator. `out` has the shape of [`loss_shape`].
fn write_losses<T: Element>(losses: Vec<T::Compute>, out: &mut ArrayViewMutD<T>, reduction: Reduction, divisor: f64) {
    let total = || sum_f64(losses.iter().map(|x| x.to_f64()));
    let scalar = |x: f64| T::narrow(T::Compute::from_f64(x));
    match reduction {
        Reduction::None => match out.as_slice_mut() {
            Some(flat) => T::narrow_slice(&losses, flat),
            None => out.iter_mut().zip(&losses).for_each(|(o, &l)| *o = T::narrow(l)),
        },
        Reduction::Sum => out.fill(scalar(total())),
        Reduction::Mean => out.fill(scalar(mean(total(), divisor))),
    }
}

/// The caller's loss buffer (checked against `shape`), or a new one kept in `fresh`.
fn loss_buffer<'o, T: Element>(
    given: Option<ArrayViewMutD<'o, T>>,
    shape: &[usize],
    fresh: &'o mut Option<ArrayD<T>>,
) -> Result<ArrayViewMutD<'o, T>> {
    match given {
        Some(l) => check_out("out", l.shape(), shape).map(|_| l),
        None => {
            let zeros = ArrayD::from_shape_vec(IxDyn(shape), T::zeros(shape.iter().product())).expect("one per index");
            Ok(fresh.insert(zeros).view_mut())
        }
    }
}

/// The factor the reduction puts on every gradient: `1 / divisor` for `Mean`, else 1.
fn gradient_scale<F: Float>(reduction: Reduction, divisor: f64) -> F {
    match reduction {
        Reduction::Mean => F::from_f64(mean(1.0, divisor)),
        _ => F::one(),
    }
}

/// `total / divisor`, NaN when nothing is counted (an empty batch, every row ignored or of
/// weight 0), as PyTorch: not the inf of a smoothed loss over a zero divisor.
fn mean(total: f64, divisor: f64) -> f64 {
    if divisor == 0.0 {
        f64::NAN
    } else {
        total / divisor
    }
}

/// Checks that a caller's output buffer has the expected shape.
fn check_out(name: &'static str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::OutShape { name, found: found.to_vec(), expected: expected.to_vec() });
    }
    Ok(())
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
        return Err(Error::WeightShape { found: w.shape().to_vec(), classes });
    }
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x >= 0.0)) {
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

/// Sparse labels as class indices in row order (`IGNORED` for ignored rows), checked once:
/// read where they lie when they are contiguous, else gathered into a vector.
enum ClassIndices<'a, L> {
    Flat { labels: &'a [L], ignore: Option<i128> },
    Gathered(Vec<usize>),
}

impl<L: Label> ClassIndices<'_, L> {
    #[inline]
    fn get(&self, r: usize) -> usize {
        match self {
            ClassIndices::Flat { labels, ignore } => {
                let v = labels[r].to_i128();
                if Some(v) == *ignore {
                    IGNORED
                } else {
                    v as usize
                }
            }
            ClassIndices::Gathered(v) => v[r],
        }
    }
}

/// The labels' class indices; the first label (in row order) neither in `[0, classes)` nor
/// `ignore` is an error.
fn class_indices<'a, L: Label>(
    labels: &ArrayViewD<'a, L>,
    classes: usize,
    ignore: Option<i64>,
) -> Result<ClassIndices<'a, L>> {
    let ignore = ignore.map(i128::from);
    let valid = |l: L| {
        let v = l.to_i128();
        Some(v) == ignore || (0..classes as i128).contains(&v)
    };
    // Class indices alone, checked without a branch per label (1,000,000 labels: 1.2 ms on
    // one thread label by label); the exact test where that finds anything else.
    let indices_only = |flat: &[L]| flat.iter().fold(true, |ok, &l| ok & (l.to_u64_wrapping() < classes as u64));
    let all_valid = match labels.as_slice() {
        Some(flat) if flat.len() > SEQUENTIAL_MAX => {
            const CHUNK: usize = 1 << 14;
            let chunk_valid = |i: usize| {
                let c = &flat[i * CHUNK..flat.len().min((i + 1) * CHUNK)];
                indices_only(c) || c.iter().all(|&l| valid(l))
            };
            crate::threads::map(flat.len().div_ceil(CHUNK), chunk_valid).into_iter().all(|ok| ok)
        }
        Some(flat) => indices_only(flat) || flat.iter().all(|&l| valid(l)),
        None => labels.iter().all(|&l| valid(l)),
    };
    if !all_valid {
        // Found serially, so the error names the first bad label whatever the thread count.
        let (r, &l) = labels.iter().enumerate().find(|&(_, &l)| !valid(l)).expect("a label is out of range");
        return Err(Error::LabelOutOfRange { index: unravel(r, labels.shape()), value: l.to_i128(), classes });
    }
    let index = |l: L| if Some(l.to_i128()) == ignore { IGNORED } else { l.to_i128() as usize };
    Ok(match labels.to_slice() {
        Some(labels) => ClassIndices::Flat { labels, ignore },
        None => ClassIndices::Gathered(labels.iter().map(|&l| index(l)).collect()),
    })
}

/// The logits a loss reads, and where its gradient goes.
enum LossIo<'a, 'g, T> {
    /// Loss only.
    Forward(ArrayViewD<'a, T>),
    /// Gradient written to a separate buffer of the logits' shape.
    Grad(ArrayViewD<'a, T>, ArrayViewMutD<'g, T>),
    /// Gradient written to a new zeroed buffer, whose pages nothing has touched yet (ordinary
    /// stores fill them fastest: the kernel hands them over zeroed and in cache).
    FreshGrad(ArrayViewD<'a, T>, ArrayViewMutD<'g, T>),
    /// Gradient written over the logits.
    InPlace(ArrayViewMutD<'g, T>),
}

impl<T: Element> LossIo<'_, '_, T> {
    fn logits_shape(&self) -> &[usize] {
        match self {
            LossIo::Forward(z) | LossIo::Grad(z, _) | LossIo::FreshGrad(z, _) => z.shape(),
            LossIo::InPlace(z) => z.shape(),
        }
    }

    fn check_grad_shape(&self) -> Result<()> {
        match self {
            LossIo::Grad(z, g) | LossIo::FreshGrad(z, g) => check_out("grad_out", g.shape(), z.shape()),
            _ => Ok(()),
        }
    }

    /// The row reader (over `shape`, the logits broadcast to it) and the gradient sink.
    fn rows<'s>(&'s mut self, shape: &[usize], axis: usize) -> Result<(RowView<'s, T>, Option<RowSink<'s, T>>)> {
        Ok(match self {
            LossIo::Forward(z) => (RowView::new(&broadcast(z, shape)?, axis), None),
            LossIo::Grad(z, g) => {
                (RowView::new(&z.view(), axis), Some(RowSink::new(&mut g.view_mut(), axis).streaming()))
            }
            LossIo::FreshGrad(z, g) => (RowView::new(&z.view(), axis), Some(RowSink::new(&mut g.view_mut(), axis))),
            LossIo::InPlace(z) => {
                let (view, sink) = RowSink::new(&mut z.view_mut(), axis).streaming().in_place();
                (view, Some(sink))
            }
        })
    }
}

fn broadcast<'a, T>(z: &'a ArrayViewD<'_, T>, shape: &[usize]) -> Result<ArrayViewD<'a, T>> {
    z.broadcast(IxDyn(shape))
        .ok_or_else(|| Error::DenseLabelsShape { labels: shape.to_vec(), logits: z.shape().to_vec() })
}

/// Shared driver of every sparse entry point. Returns the loss when `loss` (the caller's
/// buffer) is `None`.
fn sparse_run<T: Element, L: Label>(
    mut io: LossIo<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
    loss: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    let logits_shape = io.logits_shape().to_vec();
    let axis = class_axis(axis, logits_shape.len())?;
    let batch_shape = without(&logits_shape, axis);
    if labels.shape() != batch_shape.as_slice() {
        return Err(Error::SparseLabelsShape {
            labels: labels.shape().to_vec(),
            expected: batch_shape,
            logits: logits_shape,
            axis,
        });
    }
    check_classes(&logits_shape, axis)?;
    io.check_grad_shape()?;
    let classes = logits_shape[axis];
    let weight = class_weights::<T::Compute>(options, classes)?;
    let mut fresh = None;
    let mut loss = loss_buffer(loss, &loss_shape(&batch_shape, options.reduction), &mut fresh)?;
    let indices = class_indices(&labels, classes, options.ignore_index)?;
    let rows = labels.len();
    let divisor: f64 = match (&weight, options.reduction) {
        (_, Reduction::None) => 1.0, // (no divisor, and the gradient takes none)
        (Some(w), _) => sum_f64((0..rows).map(|r| indices.get(r)).filter(|&y| y != IGNORED).map(|y| w[y].to_f64())),
        (None, _) if options.ignore_index.is_none() => rows as f64,
        (None, _) => (0..rows).filter(|&r| indices.get(r) != IGNORED).count() as f64,
    };
    let scale = gradient_scale::<T::Compute>(options.reduction, divisor);
    let targets = Targets::new(weight.as_deref(), T::Compute::from_f64(options.label_smoothing), classes);
    let k = T::Compute::kernels();
    let (view, sink) = io.rows(&logits_shape, axis)?;
    let stream = sink.as_ref().is_some_and(|s| s.stream);
    // Without smoothing or a gradient, a tile's losses come straight from its statistics where
    // every counted row is plain (a row with NaN or inf, or one so confident that its
    // statistics need refining, is left to the row function with the rest of its tile),
    // times the label's class weight as `rows::sparse` takes it (0 where that is 0).
    let from_stats = sink.is_none() && options.label_smoothing == 0.0;
    let tile_labels = |first: usize| {
        let mut labels = [0; LANES];
        for (i, l) in labels.iter_mut().enumerate() {
            *l = indices.get(first + i); // (IGNORED is not below `classes`.)
        }
        labels
    };
    // The losses of a tile whose rows were all plain (`tiled`), times their class weights.
    let times_weights = |labels: &[usize; LANES], tiled: bool, out: &mut [T::Compute]| {
        if let (true, Some(w)) = (tiled, weight.as_deref()) {
            for (o, &label) in out.iter_mut().zip(labels).filter(|&(_, &label)| label < classes) {
                *o = if w[label] == T::Compute::zero() { T::Compute::zero() } else { w[label] * *o };
            }
        }
        tiled
    };
    let tile_losses = |first: usize, tile: &[T::Compute], _: Option<&[_]>, out: &mut [T::Compute]| {
        let labels = tile_labels(first);
        let tiled = T::Compute::tile_sparse_losses(tile, classes, &labels, out);
        times_weights(&labels, tiled, out)
    };
    // Half-type rows read as stored, where the tier can and they would be read in place if
    // they were float32 (see `IN_PLACE_TILE_MAX`): no widened copy of the tile.
    let stored = view.stored.filter(|_| from_stats && classes <= IN_PLACE_TILE_MAX);
    let stored_tile = |first: usize, out: &mut [T::Compute]| match (stored, view.stored_rows(first, LANES)) {
        (Some(k), Some(z)) => {
            let labels = tile_labels(first);
            let tiled = (k.tile_sparse_losses)(z, classes, &labels, out);
            times_weights(&labels, tiled, out)
        }
        _ => false,
    };
    let row = |r,
               z: &Row<T::Compute>,
               stats: &RowStats<T::Compute>,
               exps: Option<&[_]>,
               _: &mut Scratch<_>,
               out: Option<&mut RowOut<_>>| {
        let label = indices.get(r);
        if label == IGNORED {
            if let Some(o) = out {
                o.fill(T::Compute::zero());
            }
            return T::Compute::zero();
        }
        rows::sparse(k, z, stats, label, &targets, out.map(|out| Grad { out, scale, stream, exps }))
    };
    // With smoothing, the tiles' statistics take each row's gap with the rest.
    let smoothed = (options.label_smoothing != 0.0 && T::Compute::tiles(classes) && classes <= TILE_TARGETS_MAX)
        .then(|| RepeatedTargets { tile: (0..LANES).flat_map(|_| (0..classes).map(|j| targets.weight(j))).collect() });
    fill_losses(&mut loss, rows, options.reduction, divisor, |losses| {
        let tile = from_stats.then_some(&tile_losses as TileFn<_, _>);
        let stored_tile = stored.is_some().then_some(&stored_tile as StoredTileFn<_>);
        let targets = smoothed.as_ref().map(|t| t as &dyn TargetRows<_>);
        let extras = Extras { tile, stored_tile, targets, stats_only: from_stats, ..Extras::NONE };
        for_rows_into(&view, sink.as_ref(), losses, row, extras)
    });
    Ok(fresh)
}

/// Shared driver of every dense entry point, returning like [`sparse_run`].
fn dense_run<T: Element, Y: Element<Compute = T::Compute>>(
    mut io: LossIo<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
    loss: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    let logits_shape = io.logits_shape().to_vec();
    let logits_axis = class_axis(axis, logits_shape.len())?;
    let mismatch = || Error::DenseLabelsShape { labels: labels.shape().to_vec(), logits: logits_shape.clone() };
    let shape = broadcast_shapes(&logits_shape, labels.shape()).ok_or_else(mismatch)?;
    if !matches!(io, LossIo::Forward(_)) && shape != logits_shape {
        return Err(Error::GradBroadcast { logits: logits_shape, broadcast: shape });
    }
    io.check_grad_shape()?;
    let axis = logits_axis + (shape.len() - logits_shape.len());
    check_classes(&shape, axis)?;
    let classes = shape[axis];
    let batch_shape = without(&shape, axis);
    let weight = class_weights::<T::Compute>(options, classes)?;
    let mut fresh = None;
    let mut loss = loss_buffer(loss, &loss_shape(&batch_shape, options.reduction), &mut fresh)?;
    let labels = labels.broadcast(IxDyn(&shape)).ok_or_else(mismatch)?;
    let rows: usize = batch_shape.iter().product();
    let divisor = rows as f64;
    let scale = gradient_scale::<T::Compute>(options.reduction, divisor);
    let targets = Targets::new(weight.as_deref(), T::Compute::from_f64(options.label_smoothing), classes);
    let k = T::Compute::kernels();
    let (z_rows, sink) = io.rows(&shape, axis)?;
    let y_rows = RowView::new(&labels, axis);
    fill_losses(&mut loss, rows, options.reduction, divisor, |losses| {
        let row = |r,
                   z: &Row<_>,
                   stats: &RowStats<_>,
                   exps: Option<&[_]>,
                   s: &mut Scratch<_>,
                   out: Option<&mut RowOut<_>>| {
            let y = y_rows.row(r, &mut s.labels);
            let grad = out.map(|out| Grad { out, scale, stream: false, exps });
            rows::dense(k, z, stats, &y, &targets, &mut s.targets, grad)
        };
        let labels_ahead = |r| y_rows.stored_rows(r, 1).map_or(Ahead::NONE, |y| Ahead::NONE.and(y));
        // A tile's statistics take the sums of its targets (its labels where they are plain,
        // else the labels mapped), and without outputs its losses come straight from them
        // where every regular row is plain (the fused loss takes the same sums: the same bits).
        let tile_losses = |_, tile: &[_], targets: Option<&[_]>, out: &mut [_]| {
            T::Compute::tile_dense_losses(tile, classes, targets.expect("a tile's targets"), out)
        };
        let mapped = MappedTargets { labels: &y_rows, targets: &targets };
        let extras = Extras {
            tile: (classes <= TILE_TARGETS_MAX).then_some(&tile_losses as TileFn<_, _>),
            ahead: &labels_ahead,
            targets: Some(if targets.plain() { &y_rows as &dyn TargetRows<_> } else { &mapped }),
            ..Extras::NONE
        };
        for_rows_into(&z_rows, sink.as_ref(), losses, row, extras)
    });
    Ok(fresh)
}

/// The shape of the sparse loss for these logits: the logits' shape without the class axis,
/// or 0-d with a reduction (for callers that allocate `out`).
pub fn sparse_loss_shape(logits_shape: &[usize], axis: isize, reduction: Reduction) -> Result<Vec<usize>> {
    let axis = class_axis(axis, logits_shape.len())?;
    Ok(loss_shape(&without(logits_shape, axis), reduction))
}

/// The shape of the dense loss: the broadcast shape without the class axis, or 0-d with a
/// reduction.
pub fn dense_loss_shape(
    logits_shape: &[usize],
    labels_shape: &[usize],
    axis: isize,
    reduction: Reduction,
) -> Result<Vec<usize>> {
    let axis = class_axis(axis, logits_shape.len())?;
    let shape = broadcast_shapes(logits_shape, labels_shape)
        .ok_or_else(|| Error::DenseLabelsShape { labels: labels_shape.to_vec(), logits: logits_shape.to_vec() })?;
    let axis = axis + (shape.len() - logits_shape.len());
    Ok(loss_shape(&without(&shape, axis), reduction))
}

/// The gradient of the loss for a given `logits` shape and class axis, freshly allocated with
/// contiguous rows (checks come later, in the driver, so this tolerates any axis).
fn fresh_grad<T: Element>(shape: &[usize], axis: isize) -> ArrayD<T> {
    match class_axis(axis, shape.len()) {
        Ok(axis) => row_major_like(&without(shape, axis), shape[axis], axis),
        Err(_) => ArrayD::from_elem(IxDyn(shape), T::narrow(T::Compute::zero())),
    }
}

/// Sparse softmax cross-entropy (TensorFlow's `sparse_softmax_cross_entropy_with_logits`):
/// `labels` holds class indices and has the logits' shape without the class axis.
pub fn sparse_softmax_cross_entropy<T: Element, L: Label>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
) -> Result<ArrayD<T>> {
    Ok(sparse_run(LossIo::Forward(logits), labels, axis, options, None)?.expect("allocated"))
}

/// [`sparse_softmax_cross_entropy`] and the gradient of the summed returned loss with respect
/// to the logits, in one pass per row. The gradient has the logits' shape.
pub fn sparse_softmax_cross_entropy_with_grad<T: Element, L: Label>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
) -> Result<(ArrayD<T>, ArrayD<T>)> {
    let mut grad = fresh_grad(logits.shape(), axis);
    let loss = sparse_run(LossIo::FreshGrad(logits, grad.view_mut()), labels, axis, options, None)?;
    Ok((loss.expect("allocated"), grad))
}

/// [`sparse_softmax_cross_entropy`] into caller buffers: the loss into `out` (its shape, or
/// 0-d with a reduction) and, if given, the gradient into `grad_out` (the logits' shape).
pub fn sparse_softmax_cross_entropy_into<T: Element, L: Label>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
    out: ArrayViewMutD<T>,
    grad_out: Option<ArrayViewMutD<T>>,
) -> Result<()> {
    let io = match grad_out {
        Some(g) => LossIo::Grad(logits, g),
        None => LossIo::Forward(logits),
    };
    sparse_run(io, labels, axis, options, Some(out)).map(drop)
}

/// The sparse loss into `out`, and its gradient written over `logits` (half the memory of a
/// separate gradient).
pub fn sparse_softmax_cross_entropy_grad_in_place<T: Element, L: Label>(
    logits: ArrayViewMutD<T>,
    labels: ArrayViewD<L>,
    axis: isize,
    options: &Options,
    out: ArrayViewMutD<T>,
) -> Result<()> {
    sparse_run(LossIo::InPlace(logits), labels, axis, options, Some(out)).map(drop)
}

/// Dense softmax cross-entropy (TensorFlow's `softmax_cross_entropy_with_logits`): `labels`
/// broadcasts against `logits`; the loss has the broadcast shape without the class axis.
pub fn softmax_cross_entropy<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
) -> Result<ArrayD<T>> {
    Ok(dense_run(LossIo::Forward(logits), labels, axis, options, None)?.expect("allocated"))
}

/// [`softmax_cross_entropy`] and the gradient of the summed returned loss with respect to the
/// logits (`Σt · softmax - t` per row, the true derivative). The logits must have the full
/// broadcast shape.
pub fn softmax_cross_entropy_with_grad<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
) -> Result<(ArrayD<T>, ArrayD<T>)> {
    let mut grad = fresh_grad(logits.shape(), axis);
    let loss = dense_run(LossIo::FreshGrad(logits, grad.view_mut()), labels, axis, options, None)?;
    Ok((loss.expect("allocated"), grad))
}

/// [`softmax_cross_entropy`] into caller buffers, like [`sparse_softmax_cross_entropy_into`].
pub fn softmax_cross_entropy_into<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
    out: ArrayViewMutD<T>,
    grad_out: Option<ArrayViewMutD<T>>,
) -> Result<()> {
    let io = match grad_out {
        Some(g) => LossIo::Grad(logits, g),
        None => LossIo::Forward(logits),
    };
    dense_run(io, labels, axis, options, Some(out)).map(drop)
}

/// The dense loss into `out`, and its gradient written over `logits`.
pub fn softmax_cross_entropy_grad_in_place<T: Element, Y: Element<Compute = T::Compute>>(
    logits: ArrayViewMutD<T>,
    labels: ArrayViewD<Y>,
    axis: isize,
    options: &Options,
    out: ArrayViewMutD<T>,
) -> Result<()> {
    dense_run(LossIo::InPlace(logits), labels, axis, options, Some(out)).map(drop)
}

/// A row-to-row operation: `rows::log_softmax` or `rows::softmax`.
type RowOp<F> = fn(&crate::kernels::RowKernels<F>, &Row<F>, &RowStats<F>, Option<&[F]>, &mut RowOut<F>);

/// Runs a row-to-row operation (`log_softmax`, `softmax`) over every row.
fn map_rows<T: Element>(
    logits: ArrayViewD<T>,
    axis: isize,
    op: RowOp<T::Compute>,
    from_exps: bool,
) -> Result<ArrayD<T>> {
    let axis = class_axis(axis, logits.ndim())?;
    let view = RowView::new(&logits, axis);
    let mut out = row_major_like(&without(logits.shape(), axis), view.layout.classes, axis);
    let sink = RowSink { from_exps, ..RowSink::new(&mut out.view_mut(), axis) };
    let k = T::Compute::kernels();
    let mut done = vec![(); view.layout.rows()];
    for_rows(&view, Some(&sink), &mut done, |_, z, stats, exps, _, o| {
        op(k, z, stats, exps, o.expect("output rows requested"))
    });
    Ok(out)
}

/// `z - logsumexp(z)` along `axis`. Rows with NaN or +inf, and rows of -inf, give NaN.
pub fn log_softmax<T: Element>(logits: ArrayViewD<T>, axis: isize) -> Result<ArrayD<T>> {
    map_rows(logits, axis, rows::log_softmax, false)
}

/// `exp(z - logsumexp(z))` along `axis`. Rows with NaN or +inf, and rows of -inf, give NaN.
pub fn softmax<T: Element>(logits: ArrayViewD<T>, axis: isize) -> Result<ArrayD<T>> {
    map_rows(logits, axis, rows::softmax, true)
}

/// `log Σ exp(z)` along `axis`; the result has the logits' shape without `axis`. A row of
/// -inf gives -inf, a row with +inf gives +inf, a row with NaN gives NaN.
pub fn logsumexp<T: Element>(logits: ArrayViewD<T>, axis: isize) -> Result<ArrayD<T>> {
    let axis = class_axis(axis, logits.ndim())?;
    let view = RowView::new(&logits, axis);
    let mut data = T::zeros(view.layout.rows());
    let sums = PerRow::of(&mut data);
    let extras = Extras { stats_only: true, ..Extras::NONE };
    for_rows_into(&view, None, sums, |_, _, stats, _, _, _| stats.logsumexp(), extras);
    Ok(ArrayD::from_shape_vec(IxDyn(&without(logits.shape(), axis)), data).expect("one value per row"))
}
