//! Rows as the row math reads and writes them: in the compute type, one block at a time.
//!
//! A row that memory already holds contiguously in the compute type is a plain slice. Any
//! other row (a half type, a class stride, logits about to be overwritten) is widened into a
//! buffer: whole when short (`crate::ops` decides: it reads some rows of half types for their
//! statistics alone as stored, as if long), a block at a time when long; outputs are
//! rounded back a block at a time. So no long row is ever copied whole, and the scratch a
//! thread holds is bounded whatever the input.

use std::any::TypeId;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::kernels::{Ahead, Float};

/// Elements per block of a row read through a buffer. Also the block of the row sums
/// (`crate::rows`), so the sums come out the same however the row is read. Each block costs
/// a kernel call that adds up its vectors' lanes at the end: in blocks of 4096 instead of
/// 1024, sparse float32 8192×32768 took 15% less time (41.8 -> 35.4 ms, Zen 4); in blocks of
/// 16384 instead of 4096, 5% less on a Sapphire Rapids-class Xeon (47.7 -> 45.2 ms), where
/// blocks of 8192 had not mattered on the Zen 4. (A 64 KiB buffer of float32.)
pub const BLOCK: usize = 16384;

/// Elements per block of a row written through a buffer on the stack ([`BlockBuf`]). Outputs
/// are computed element by element, so this block need not be [`BLOCK`]; a smaller one keeps
/// the frames small (8 KiB of float64) on threads' stacks.
pub const WRITE_BLOCK: usize = 1024;

/// `range` cut at the multiples of [`BLOCK`].
pub fn block_ranges(range: Range<usize>) -> impl Iterator<Item = Range<usize>> {
    let Range { start, end } = range;
    let blocks = if start < end { start / BLOCK..end.div_ceil(BLOCK) } else { 0..0 };
    blocks.map(move |b| (b * BLOCK).max(start)..((b + 1) * BLOCK).min(end))
}

/// Reads stored rows.
pub trait Source<F>: Sync {
    /// Fills `dst` with the elements `from..from + dst.len()` of the row that starts at
    /// element offset `start`.
    ///
    /// # Safety
    /// `start` is the offset of one of the source's rows, and `from + dst.len()` at most its
    /// length.
    unsafe fn widen(&self, start: isize, from: usize, dst: &mut [F]);

    /// `(max, index in the range)` of the elements `range` of the row at `start`, read as
    /// stored, where the stored type has a kernel that widens as it loads (else `None`).
    ///
    /// # Safety
    /// As [`Source::widen`], for the range.
    unsafe fn max_argmax(&self, _start: isize, _range: Range<usize>) -> Option<(F, usize)> {
        None
    }

    /// `Σ exp(z_j - shift)` over the elements `range` but the `skip`th of them (counted from
    /// the range's start, as the kernels' `sum_exp`), as [`Source::max_argmax`], asking for
    /// `ahead` on the way.
    ///
    /// # Safety
    /// As [`Source::widen`], for the range.
    unsafe fn sum_exp(
        &self,
        _start: isize,
        _range: Range<usize>,
        _shift: F,
        _skip: usize,
        _ahead: Ahead,
    ) -> Option<f64> {
        None
    }

    /// `out_j = exp(z_j - shift) · scale` over the elements `range` of the row at `start`,
    /// read and written as stored, in one pass, where the stored type has a kernel for it and
    /// `out` holds that type; returns whether it did (else `out` is untouched). `stream`:
    /// stored past the caches.
    ///
    /// # Safety
    /// As [`Source::widen`], for the range; `out` is as long as the range.
    unsafe fn exp_scaled(
        &self,
        _start: isize,
        _range: Range<usize>,
        _shift: F,
        _scale: F,
        _out: StoredOut<'_>,
        _stream: bool,
    ) -> bool {
        false
    }
}

/// Output elements as stored, of a type named at run time: how a [`Sink`] hands its elements
/// to a [`Source`] of the same stored type (both are `dyn`, and know their own type only).
pub struct StoredOut<'a> {
    ptr: *mut (),
    len: usize,
    element: TypeId,
    _elements: PhantomData<&'a mut ()>,
}

impl<'a> StoredOut<'a> {
    /// The elements, with their type.
    pub fn new<T: 'static>(elements: &'a mut [T]) -> Self {
        StoredOut {
            ptr: elements.as_mut_ptr() as *mut (),
            len: elements.len(),
            element: TypeId::of::<T>(),
            _elements: PhantomData,
        }
    }

    /// The elements, if they are `T`s.
    pub fn get<T: 'static>(self) -> Option<&'a mut [T]> {
        // SAFETY: made by `new` from a `&'a mut [T]` of this very type.
        (self.element == TypeId::of::<T>())
            .then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, self.len) })
    }
}

/// Writes stored rows, addressed like [`Source`].
pub trait Sink<F>: Sync {
    /// Elements `from..from + len` themselves, when they are stored contiguously in `F`.
    ///
    /// # Safety
    /// As [`Source::widen`] for the range; and no other live reference or thread touches
    /// those elements while the slice lives.
    #[allow(clippy::mut_from_ref)] // (the slice is carved from a raw pointer, not from `self`)
    unsafe fn direct(&self, start: isize, from: usize, len: usize) -> Option<&mut [F]>;

    /// Stores `src`, rounded to the stored type, as the elements `from..`.
    ///
    /// # Safety
    /// As [`Sink::direct`].
    unsafe fn narrow(&self, start: isize, from: usize, src: &[F]);

    /// Whether [`Sink::direct`] hands out slices.
    fn is_direct(&self) -> bool;

    /// Elements `from..from + len` as stored (exactly `len` of them), when the sink's rows are
    /// contiguous: whether it hands them out depends on the sink alone, not on the range.
    ///
    /// # Safety
    /// As [`Sink::direct`].
    unsafe fn stored_elements(&self, start: isize, from: usize, len: usize) -> Option<StoredOut<'_>>;

    /// Stores `exp(z_j - shift) · scale` of `z` (in the compute type) as the elements
    /// `from..`, rounded as stored, in one pass, where the stored type has a kernel for it;
    /// returns whether it did (else nothing was written).
    ///
    /// # Safety
    /// As [`Sink::direct`], for `z.len()` elements.
    unsafe fn exp_scaled(&self, _start: isize, _from: usize, _z: &[F], _shift: F, _scale: F, _stream: bool) -> bool {
        false
    }

    /// Stores `x_j · scale` (`x` in the compute type) as the elements `from..`, as
    /// [`Sink::exp_scaled`] does (`stream`: past the caches).
    ///
    /// # Safety
    /// As [`Sink::direct`], for `x.len()` elements.
    unsafe fn scaled(&self, _start: isize, _from: usize, _x: &[F], _scale: F, _stream: bool) -> bool {
        false
    }
}

/// One row of input in the compute type.
#[derive(Clone, Copy)]
pub enum Row<'a, F> {
    Slice(&'a [F]),
    /// Read through `source`, a block at a time: elements `0..len` of its row at `start`
    /// (which [`Source::widen`] must accept).
    Stored {
        start: isize,
        len: usize,
        source: &'a dyn Source<F>,
    },
}

impl<'a, F: Float> Row<'a, F> {
    pub fn len(&self) -> usize {
        match self {
            Row::Slice(s) => s.len(),
            Row::Stored { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `j`.
    pub fn get(&self, j: usize) -> F {
        match self {
            Row::Slice(s) => s[j],
            Row::Stored { start, len, source } => {
                assert!(j < *len, "a read past the row");
                let mut x = [F::zero()];
                // SAFETY: within the row (checked), as the variant promises.
                unsafe { source.widen(*start, j, &mut x) };
                x[0]
            }
        }
    }

    /// The longest piece a [`Reader`] hands over at once without a buffer of its size.
    pub fn piece(&self) -> usize {
        match self {
            Row::Slice(s) => s.len().max(1),
            Row::Stored { .. } => BLOCK,
        }
    }

    pub fn reader(&self) -> Reader<'a, F> {
        Reader { row: *self, buf: Vec::new() }
    }
}

/// Reads pieces of a [`Row`], reusing one buffer.
pub struct Reader<'a, F> {
    row: Row<'a, F>,
    buf: Vec<F>,
}

impl<'a, F: Float> Reader<'a, F> {
    /// The row's start and source, for a `range` checked to lie inside it (which makes the
    /// source's methods safe to call on it); `None` for a slice.
    fn source(&self, range: &Range<usize>) -> Option<(isize, &'a dyn Source<F>)> {
        match self.row {
            Row::Slice(_) => None,
            Row::Stored { start, len, source } => {
                assert!(range.start <= range.end && range.end <= len, "a read past the row");
                Some((start, source))
            }
        }
    }

    /// Elements `range` of the row: borrowed from a slice, else widened into the buffer (of
    /// `range.len()` elements: callers keep pieces to [`Row::piece`]).
    pub fn read(&mut self, range: Range<usize>) -> &[F] {
        if let Row::Slice(s) = self.row {
            return &s[range];
        }
        let (start, source) = self.source(&range).expect("a stored row");
        self.buf.resize(range.len(), F::zero());
        // SAFETY: within the row (checked by `source`).
        unsafe { source.widen(start, range.start, &mut self.buf) };
        &self.buf
    }

    /// [`Source::max_argmax`] of `range`, for a row read through a source.
    pub fn stored_max_argmax(&self, range: Range<usize>) -> Option<(F, usize)> {
        let (start, source) = self.source(&range)?;
        // SAFETY: within the row (checked by `source`).
        unsafe { source.max_argmax(start, range) }
    }

    /// [`Source::sum_exp`] of `range`, for a row read through a source.
    pub fn stored_sum_exp(&self, range: Range<usize>, shift: F, skip: usize, ahead: Ahead) -> Option<f64> {
        let (start, source) = self.source(&range)?;
        // SAFETY: within the row (checked by `source`).
        unsafe { source.sum_exp(start, range, shift, skip, ahead) }
    }

    /// [`Source::exp_scaled`] of `range` into `out`, for a row read through a source whose
    /// stored type `out` holds (`stream`: stored past the caches).
    pub fn stored_exp_scaled(
        &self,
        range: Range<usize>,
        shift: F,
        scale: F,
        out: &mut RowOut<F>,
        stream: bool,
    ) -> bool {
        let Some((start, source)) = self.source(&range) else { return false };
        assert_eq!(range.len(), out.len(), "as many outputs as inputs");
        let Some(stored) = out.stored_elements() else { return false };
        // SAFETY: within the row (checked by `source`), and `stored` is as long as the range.
        unsafe { source.exp_scaled(start, range, shift, scale, stored, stream) }
    }

    /// Calls `f(from, block)` for the blocks of `range` ([`block_ranges`]).
    pub fn blocks(&mut self, range: Range<usize>, mut f: impl FnMut(usize, &[F])) {
        for block in block_ranges(range) {
            f(block.start, self.read(block));
        }
    }
}

/// One row of output in the compute type.
pub enum RowOut<'a, F> {
    Slice(&'a mut [F]),
    /// Elements `from..from + len` of the stored row at `start`, written through `sink`
    /// (which must accept them, and which nothing else touches while this lives).
    Stored {
        start: isize,
        from: usize,
        len: usize,
        sink: &'a dyn Sink<F>,
    },
}

impl<F: Float> RowOut<'_, F> {
    pub fn len(&self) -> usize {
        match self {
            RowOut::Slice(s) => s.len(),
            RowOut::Stored { len, .. } => *len,
        }
    }

    /// Whether [`RowOut::write`] hands out the elements themselves (never a buffer).
    pub fn is_direct(&self) -> bool {
        match self {
            RowOut::Slice(_) => true,
            RowOut::Stored { sink, .. } => sink.is_direct(),
        }
    }

    /// The longest piece [`RowOut::write`] takes without a buffer of its size.
    pub fn piece(&self) -> usize {
        if self.is_direct() {
            self.len().max(1)
        } else {
            WRITE_BLOCK
        }
    }

    /// Calls `f` with elements `range` to fill (in the compute type; what they held before
    /// is unspecified) and stores them. `buf` holds them when they are stored otherwise
    /// (so `range` is at most [`RowOut::piece`] long).
    pub fn write<R>(&mut self, range: Range<usize>, buf: &mut BlockBuf<F>, f: impl FnOnce(&mut [F]) -> R) -> R {
        match self {
            RowOut::Slice(s) => f(&mut s[range]),
            RowOut::Stored { start, from, len, sink } => {
                assert!(range.start <= range.end && range.end <= *len, "a write past the row");
                let at = *from + range.start;
                // SAFETY: within the row (checked); this `RowOut` is the only handle on its
                // elements (see `parts`), and the slice lives only for this call.
                if let Some(direct) = unsafe { sink.direct(*start, at, range.len()) } {
                    return f(direct);
                }
                let buf = buf.take(range.len());
                let result = f(buf);
                // SAFETY: as above.
                unsafe { sink.narrow(*start, at, buf) };
                result
            }
        }
    }

    /// The elements as stored, where they are contiguous ([`Sink::stored_elements`]).
    fn stored_elements(&mut self) -> Option<StoredOut<'_>> {
        match self {
            RowOut::Slice(_) => None,
            // SAFETY: the elements of this `RowOut`, the only handle on them (see `parts`),
            // borrowed for as long as it is.
            RowOut::Stored { start, from, len, sink } => unsafe { sink.stored_elements(*start, *from, *len) },
        }
    }

    /// [`Sink::exp_scaled`] of `z` (as long as this row) into the elements, where they are
    /// stored in a type with a kernel for it; returns whether it did.
    pub fn stored_exp_scaled(&mut self, z: &[F], shift: F, scale: F, stream: bool) -> bool {
        match self {
            RowOut::Slice(_) => false,
            RowOut::Stored { start, from, len, sink } => {
                assert_eq!(z.len(), *len, "as many outputs as inputs");
                // SAFETY: the elements of this `RowOut`, the only handle on them (see `parts`).
                unsafe { sink.exp_scaled(*start, *from, z, shift, scale, stream) }
            }
        }
    }

    /// [`Sink::scaled`] of `x` (as long as this row) into the elements, as
    /// [`RowOut::stored_exp_scaled`].
    pub fn stored_scaled(&mut self, x: &[F], scale: F, stream: bool) -> bool {
        match self {
            RowOut::Slice(_) => false,
            RowOut::Stored { start, from, len, sink } => {
                assert_eq!(x.len(), *len, "as many outputs as inputs");
                // SAFETY: the elements of this `RowOut`, the only handle on them (see `parts`).
                unsafe { sink.scaled(*start, *from, x, scale, stream) }
            }
        }
    }

    /// Sets element `j`.
    #[inline]
    pub fn set(&mut self, j: usize, x: F) {
        match self {
            RowOut::Slice(s) => s[j] = x,
            _ => self.write(j..j + 1, &mut BlockBuf::default(), |o| o[0] = x),
        }
    }

    /// Calls `f(range, elements)` to fill the whole row, in pieces [`RowOut::write`] takes.
    fn write_all(&mut self, mut f: impl FnMut(Range<usize>, &mut [F])) {
        let (len, piece, mut buf) = (self.len(), self.piece(), BlockBuf::default());
        for from in (0..len).step_by(piece) {
            let range = from..(from + piece).min(len);
            self.write(range.clone(), &mut buf, |o| f(range, o));
        }
    }

    /// Sets the elements to `src` (of the same length).
    pub fn copy_from(&mut self, src: &[F]) {
        assert_eq!(src.len(), self.len(), "a whole row");
        self.write_all(|range, o| o.copy_from_slice(&src[range]));
    }

    /// Sets every element to `x`.
    pub fn fill(&mut self, x: F) {
        self.write_all(|_, o| o.fill(x));
    }

    /// The row cut into parts of `n` elements (the last may be shorter), each writable on
    /// its own thread.
    pub fn parts(&mut self, n: usize) -> Vec<RowOut<'_, F>> {
        match self {
            RowOut::Slice(s) => s.chunks_mut(n).map(RowOut::Slice).collect(),
            RowOut::Stored { start, from, len, sink } => (0..*len)
                .step_by(n)
                .map(|at| RowOut::Stored { start: *start, from: *from + at, len: n.min(*len - at), sink: *sink })
                .collect(),
        }
    }
}

/// Room for one written block on the stack, initialised only as far as it is used (a row of
/// ten classes should not pay for zeroing a thousand), and only once.
pub struct BlockBuf<F> {
    elements: [MaybeUninit<F>; WRITE_BLOCK],
    /// How many of `elements`, from the first, are initialised.
    initialised: usize,
}

impl<F: Float> Default for BlockBuf<F> {
    fn default() -> Self {
        BlockBuf { elements: [const { MaybeUninit::uninit() }; WRITE_BLOCK], initialised: 0 }
    }
}

impl<F: Float> BlockBuf<F> {
    /// The first `n` elements (at most [`WRITE_BLOCK`]; their values are unspecified).
    fn take(&mut self, n: usize) -> &mut [F] {
        if n > self.initialised {
            self.elements[self.initialised..n].fill(MaybeUninit::new(F::zero()));
            self.initialised = n;
        }
        let part = &mut self.elements[..n];
        // SAFETY: the first `initialised >= n` elements are initialised.
        unsafe { &mut *(part as *mut [MaybeUninit<F>] as *mut [F]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_cut_at_multiples_of_the_block() {
        let cut = |r: Range<usize>| block_ranges(r).collect::<Vec<_>>();
        assert_eq!(cut(0..0), vec![]);
        assert_eq!(cut(5..5), vec![]);
        assert_eq!(cut(0..10), vec![0..10]);
        assert_eq!(cut(0..BLOCK), vec![0..BLOCK]);
        assert_eq!(cut(0..BLOCK + 1), vec![0..BLOCK, BLOCK..BLOCK + 1]);
        assert_eq!(cut(10..2 * BLOCK + 3), vec![10..BLOCK, BLOCK..2 * BLOCK, 2 * BLOCK..2 * BLOCK + 3]);
    }
}
