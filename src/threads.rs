//! The thread pool the work runs on: rayon's global pool (sized by `RAYON_NUM_THREADS`), or
//! one of a size set at run time with [`set_num_threads`].

use std::sync::{Arc, RwLock};

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

/// Runs `f` inside the pool in use.
pub(crate) fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
