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
use std::thread::Thread;

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
    threads_of(&current())
}

fn threads_of(pool: &Option<Arc<rayon::ThreadPool>>) -> usize {
    pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
}

fn current() -> Option<Arc<rayon::ThreadPool>> {
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

thread_local! {
    /// How many pool threads a region opened on this thread may ask to help: outside any
    /// region (`None`) all but one; inside one, its share of the threads that region left
    /// idle (8 rows of 262144 on 16 threads: a thread for each row, and one more to split it).
    static SPARE: Cell<Option<usize>> = const { Cell::new(None) };
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
    assert!(chunk > 0, "chunks of no elements");
    let (len, n) = (data.len(), data.len().div_ceil(chunk));
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

/// `f(i, &mut items[i])` for every item, across the threads.
pub(crate) fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    for_each_chunk(items, 1, 1, || (), |_, i, item| f(i, &mut item[0]));
}

/// `f(i)` for every `i` in `0..n`, across the threads; the results in index order.
pub(crate) fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for_each_mut(&mut slots, |i, slot| *slot = Some(f(i)));
    slots.into_iter().map(|s| s.expect("every index is run")).collect()
}

/// Calls `f(state, run)` on runs of `0..n` that together take each index once, across the
/// threads: the calling thread, and up to `num_threads() - 1` pool threads as they wake (per
/// call: calls from several threads at once each bring their own; inside another region, only
/// the threads that one left idle, see `SPARE`). A run is about a `2 × t`-th of what is left
/// when taken, `t` the region's threads, and `min_run` long at least (but the last): long runs
/// keep a thread's work contiguous (a row asks for the next one ahead), the short last ones
/// even out the threads' finish. A panic stops the handing out of runs, and reaches the caller
/// once every thread has left.
fn for_each_run<S>(n: usize, min_run: usize, init: impl Fn() -> S + Sync, f: impl Fn(&mut S, Range<usize>) + Sync) {
    let min_run = min_run.max(1);
    let pool = current();
    let may_ask = SPARE.get().unwrap_or(threads_of(&pool) - 1);
    let helpers = may_ask.min(n.div_ceil(min_run).saturating_sub(1));
    if helpers == 0 {
        if n > 0 {
            f(&mut init(), 0..n);
        }
        return;
    }
    // The threads this region leaves idle, shared among its own.
    let spare = (may_ask - helpers) / (helpers + 1);
    let next = AtomicUsize::new(0);
    let work = || {
        let _inside = Inside { was: SPARE.replace(Some(spare)), next: &next, n };
        let mut state = None;
        while let Some(run) = claim(&next, n, min_run, helpers + 1) {
            f(state.get_or_insert_with(&init), run);
        }
    };
    let work: *const (dyn Fn() + Sync + '_) = &work;
    // SAFETY: only the lifetime is erased; `Region`'s protocol keeps `work` from being called
    // after this function returns (see `Region::help`, `Region::close`).
    let work =
        unsafe { std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(work) };
    let region =
        Arc::new(Region { state: AtomicUsize::new(0), work, panic: Mutex::new(None), caller: std::thread::current() });
    {
        // Closed on the way out, unwinding included.
        let _closing = Closing(&region);
        for _ in 0..helpers {
            let region = region.clone();
            match &pool {
                Some(pool) => pool.spawn(move || region.help()),
                None => rayon::spawn(move || region.help()),
            }
        }
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

/// What the threads of one call share: `state` counts the pool threads inside, by twos
/// (its low bit is `CLOSED`, set once the calling thread has run out of work); `panic` holds
/// the first helper's panic; `caller` is woken by the last helper to leave a closed region.
struct Region {
    state: AtomicUsize,
    work: *const (dyn Fn() + Sync + 'static),
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    caller: Thread,
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
                let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(payload);
                }
            }
        }
        if self.state.fetch_sub(2, Ordering::Release) == CLOSED + 2 {
            self.caller.unpark();
        }
    }

    /// Lets no more pool threads in and waits for those inside to finish their last run:
    /// awake for up to a millisecond (a last run is mostly shorter, and a thread put to sleep
    /// takes tens of microseconds to wake on a VM: parked at once, the caller of 8×262144 took
    /// 0.39 ms against 0.29), then asleep until the last one leaves.
    fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) != CLOSED {
            if spins < 1 << 10 {
                std::hint::spin_loop();
                spins += 1;
            } else if start.elapsed() < std::time::Duration::from_millis(1) {
                std::thread::yield_now();
            } else {
                // (A wake-up may be left over from another region: the loop checks again.)
                std::thread::park();
            }
        }
    }
}

/// A thread's time in a region: on the way out, `SPARE` as it was, and on a panic, no more
/// runs for anyone (the rest is not needed).
struct Inside<'a> {
    was: Option<usize>,
    next: &'a AtomicUsize,
    n: usize,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        SPARE.set(self.was);
        if std::thread::panicking() {
            self.next.fetch_max(self.n, Ordering::Relaxed);
        }
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
    use std::time::{Duration, Instant};

    /// The tests set the process's pool: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn with_threads(n: usize, test: impl FnOnce()) {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        set_num_threads(n).unwrap();
        let result = panic::catch_unwind(AssertUnwindSafe(test));
        set_num_threads(0).unwrap();
        result.unwrap();
    }

    /// Waits up to a second for `flag`.
    fn wait_for(flag: &AtomicBool) {
        let start = Instant::now();
        while !flag.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    #[test]
    fn every_chunk_once_whole_and_done_on_return() {
        for threads in [1, 2, 3, 8] {
            with_threads(threads, || {
                for (len, chunk, min) in [(0, 3, 1), (1, 1, 1), (1000, 7, 1), (1000, 7, 30), (64, 1, 1), (5, 10, 1)] {
                    let mut data = vec![0usize; len];
                    let helped = AtomicBool::new(false);
                    let helpers = threads > 1 && len.div_ceil(chunk) > min;
                    for_each_chunk(
                        &mut data,
                        chunk,
                        min,
                        || (),
                        |_, i, c| {
                            assert_eq!(c.len(), chunk.min(len - i * chunk), "chunk {i} of {len}");
                            if rayon::current_thread_index().is_some() {
                                // Still writing when the caller runs out of chunks.
                                helped.store(true, Ordering::Release);
                                std::thread::sleep(Duration::from_millis(2));
                            } else if helpers {
                                wait_for(&helped);
                            }
                            c.iter_mut().enumerate().for_each(|(j, x)| *x += i * chunk + j + 1);
                        },
                    );
                    assert!(
                        data.iter().enumerate().all(|(j, &x)| x == j + 1),
                        "{threads} threads, {len}/{chunk}: {data:?}"
                    );
                    assert_eq!(helped.load(Ordering::Relaxed), helpers, "{threads} threads, {len}/{chunk}");
                }
                assert_eq!(map(100, |i| i * i), (0..100).map(|i| i * i).collect::<Vec<_>>());
            });
        }
    }

    /// Whether a region inside one of `outer` runs on `threads` threads (once a pool thread
    /// has joined the outer one) had any of its runs on another thread.
    fn nested_left_their_thread(threads: usize, outer: usize) -> bool {
        let (helped, elsewhere) = (AtomicBool::new(false), AtomicBool::new(false));
        with_threads(threads, || {
            for_each_run(
                outer,
                1,
                || (),
                |_, _| {
                    if rayon::current_thread_index().is_some() {
                        helped.store(true, Ordering::Release);
                    } else {
                        wait_for(&helped);
                    }
                    let me = std::thread::current().id();
                    for_each_run(
                        8,
                        1,
                        || (),
                        |_, _| {
                            // (Long enough for an idle pool thread to wake and take a run.)
                            std::thread::sleep(Duration::from_micros(300));
                            if std::thread::current().id() != me {
                                elsewhere.store(true, Ordering::Relaxed);
                            }
                        },
                    );
                },
            );
            assert_eq!(SPARE.get(), None, "the caller still marked as in a region");
        });
        assert!(helped.load(Ordering::Relaxed), "no pool thread joined in a second");
        elsewhere.into_inner()
    }

    #[test]
    fn nested_regions_take_only_the_threads_left_idle() {
        assert!(!nested_left_their_thread(2, 64), "2 threads, both in the outer region");
        assert!(nested_left_their_thread(4, 2), "4 threads, 2 in the outer region");
    }

    #[test]
    fn a_helper_panic_reaches_the_caller() {
        with_threads(2, || {
            let helped = AtomicBool::new(false);
            let caught = panic::catch_unwind(AssertUnwindSafe(|| {
                for_each_run(
                    1000,
                    1,
                    || (),
                    |_, _| {
                        if rayon::current_thread_index().is_some() {
                            helped.store(true, Ordering::Release);
                            panic!("helper");
                        }
                        wait_for(&helped);
                    },
                )
            }));
            assert!(helped.load(Ordering::Relaxed), "no pool thread joined in a second");
            assert_eq!(caught.unwrap_err().downcast_ref::<&str>(), Some(&"helper"));
        });
    }

    #[test]
    fn a_panic_in_a_region_ends_the_runs_and_restores_the_mark() {
        let next = AtomicUsize::new(3);
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            let _inside = Inside { was: SPARE.replace(Some(0)), next: &next, n: 10 };
            panic!("in a run");
        }));
        assert_eq!(next.load(Ordering::Relaxed), 10);
        assert_eq!(SPARE.get(), None);
    }
}
