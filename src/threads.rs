//! The threads the work runs on: the calling thread, helped by rayon's global pool (sized by
//! `RAYON_NUM_THREADS`) or by a pool of a size set at run time with [`set_num_threads`].
//!
//! The calling thread works from the start, and pool threads join as they wake, taking runs
//! of the work from a shared counter. A pool thread takes tens of microseconds to wake on a
//! virtual machine (35-55 µs on the development VM, and its caller as long again to wake once
//! the work is done), where a call of 8×262144 float32 takes ~0.3 ms: handed to the pool
//! whole, as `rayon::ThreadPool::install` does, that call waited on two wake-ups.

use std::any::Any;
use std::cell::Cell;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// Uses `n` threads from now on; `0` goes back to rayon's global pool.
pub fn set_num_threads(n: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    let pool = match n {
        0 => None,
        n => Some(Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).build()?)),
    };
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// The number of threads the work runs on.
pub fn num_threads() -> usize {
    current().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
}

fn current() -> Option<Arc<rayon::ThreadPool>> {
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

thread_local! {
    /// Whether this thread works in a region: a region opened inside one runs on this thread
    /// alone (the other threads have their own share of the outer one).
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// Calls `f(state, chunk index, chunk)` on every chunk of `chunk` elements of `data` (the
/// last may be shorter), across the threads in runs of at least `min_chunks` chunks, with a
/// `state` made by `init` for each thread that takes any.
pub(crate) fn for_each_chunk<T: Send, S>(
    data: &mut [T],
    chunk: usize,
    min_chunks: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync,
) {
    let (len, n) = (data.len(), data.len().div_ceil(chunk.max(1)));
    let base = SendPtr(data.as_mut_ptr());
    for_each_run(n, min_chunks, init, |state, run| {
        for i in run {
            let from = i * chunk;
            // SAFETY: each chunk index is handed out once (see `for_each_run`), so the chunks
            // taken are disjoint parts of `data`, which outlives the call.
            let c = unsafe { std::slice::from_raw_parts_mut(base.get().add(from), chunk.min(len - from)) };
            f(state, i, c);
        }
    });
}

/// `f(i)` for every `i` in `0..n`, across the threads, in order.
pub(crate) fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for_each_chunk(&mut slots, 1, 1, || (), |_, i, slot| slot[0] = Some(f(i)));
    slots.into_iter().map(|s| s.expect("every index is run")).collect()
}

/// Calls `f(state, run)` on runs of `0..n` that together take each index once, across the
/// threads: the calling thread, and up to `num_threads() - 1` pool threads as they wake. A
/// run is at least `min_run` long, and about a `2 × threads`-th of what is left when taken:
/// long runs keep a thread's work contiguous (a row asks for the next one ahead), the short
/// last ones even out the threads' finish. Inside another region, or with one thread or one
/// run, it all runs on the calling thread.
pub(crate) fn for_each_run<S>(
    n: usize,
    min_run: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, Range<usize>) + Sync,
) {
    let min_run = min_run.max(1);
    let pool = current();
    let threads = pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
    let helpers = if IN_REGION.get() { 0 } else { (threads - 1).min(n.div_ceil(min_run).saturating_sub(1)) };
    if helpers == 0 {
        if n > 0 {
            f(&mut init(), 0..n);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let _inside = Inside(IN_REGION.replace(true));
        let mut state = None;
        while let Some(run) = claim(&next, n, min_run, threads) {
            f(state.get_or_insert_with(&init), run);
        }
    };
    let work: &(dyn Fn() + Sync) = &work;
    // SAFETY: only the lifetime is erased; `Region`'s protocol keeps `work` from being called
    // after this function returns (see `Region::help`, `Region::close`).
    let work: *const (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(work) };
    let region = Arc::new(Region { state: AtomicUsize::new(0), work, panic: Mutex::new(None) });
    for _ in 0..helpers {
        let region = region.clone();
        match &pool {
            Some(pool) => pool.spawn(move || region.help()),
            None => rayon::spawn(move || region.help()),
        }
    }
    {
        // Closed on the way out, unwinding included.
        let _closing = Closing(&region);
        // SAFETY: `work` lives until the end of this function.
        unsafe { (*region.work)() };
    }
    let panicked = region.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = panicked {
        panic::resume_unwind(payload);
    }
}

/// The next run of `0..n` not yet taken, if any.
fn claim(next: &AtomicUsize, n: usize, min_run: usize, threads: usize) -> Option<Range<usize>> {
    let mut start = next.load(Ordering::Relaxed);
    loop {
        if start >= n {
            return None;
        }
        let len = ((n - start) / (2 * threads)).max(min_run).min(n - start);
        match next.compare_exchange_weak(start, start + len, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(start..start + len),
            Err(now) => start = now,
        }
    }
}

/// What the threads of one call share: `state` counts the pool threads inside (by twos) and
/// holds `CLOSED` once the calling thread has run out of work.
struct Region {
    state: AtomicUsize,
    work: *const (dyn Fn() + Sync + 'static),
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

const CLOSED: usize = 1;

// SAFETY: `work` is `Sync`, and called only while the calling thread keeps it alive.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// A pool thread's part: the work, unless the region closed before it got here (then
    /// `work` may be gone, and is not touched).
    fn help(&self) {
        if self.state.fetch_add(2, Ordering::Acquire) & CLOSED == 0 {
            // SAFETY: the region was open when this thread entered, so the calling thread
            // waits in `close` until it leaves, and `work` lives until then.
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*self.work)() })) {
                *self.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(payload);
            }
        }
        self.state.fetch_sub(2, Ordering::Release);
    }

    /// Lets no more pool threads in and waits for those inside, which are finishing their last
    /// run.
    fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) != CLOSED {
            if spins < 1 << 10 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Puts back a thread's `IN_REGION` as it was, unwinding included.
struct Inside(bool);

impl Drop for Inside {
    fn drop(&mut self) {
        IN_REGION.set(self.0);
    }
}

struct Closing<'a>(&'a Region);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A pointer that may cross threads: [`for_each_chunk`] hands each thread disjoint chunks.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: used only as `for_each_chunk` says, for `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// (A method, so closures capture the `Sync` wrapper, not the raw pointer.)
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn with_threads(n: usize) {
        *POOL.write().unwrap() = Some(Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()));
    }

    #[test]
    fn every_chunk_once_whole_on_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            with_threads(threads);
            for (len, chunk, min) in [(0, 3, 1), (1, 1, 1), (1000, 7, 1), (1000, 7, 30), (64, 1, 1), (5, 10, 1)] {
                let mut data = vec![0usize; len];
                for_each_chunk(
                    &mut data,
                    chunk,
                    min,
                    || (),
                    |_, i, c| {
                        assert_eq!(c.len(), chunk.min(len - i * chunk), "chunk {i} of {len}");
                        c.iter_mut().enumerate().for_each(|(j, x)| *x += i * chunk + j + 1);
                    },
                );
                assert!(
                    data.iter().enumerate().all(|(j, &x)| x == j + 1),
                    "{threads} threads, {len}/{chunk}: {data:?}"
                );
            }
            assert_eq!(map(100, |i| i * i), (0..100).map(|i| i * i).collect::<Vec<_>>());
        }
        *POOL.write().unwrap() = None;
    }

    #[test]
    fn a_helper_panic_reaches_the_caller() {
        with_threads(2);
        let on_pool = AtomicBool::new(false);
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            for_each_run(
                100,
                1,
                || (),
                |_, _| {
                    if rayon::current_thread_index().is_some() {
                        on_pool.store(true, Ordering::Relaxed);
                        panic!("helper");
                    }
                    std::thread::sleep(std::time::Duration::from_micros(100));
                },
            )
        }));
        *POOL.write().unwrap() = None;
        assert_eq!(caught.is_err(), on_pool.load(Ordering::Relaxed));
    }
}
