//! Throughput of the public API, in GB/s of logits read (`cargo bench`), next to the
//! machine's memory read bandwidth measured the same way (`memory/read_sum`): a parallel sum
//! over 1 GiB, the floor of any forward pass.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastxent::kernels::{Ahead, NO_SKIP};
use fastxent::{bf16, f16, Element, Options};
use ndarray::{Array1, Array2, ArrayD};
use rayon::prelude::*;

/// Deterministic pseudo-random logits in [-4, 4) (no RNG dependency needed).
fn logits<T: Element>(rows: usize, classes: usize) -> Array2<T> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    Array2::from_shape_fn((rows, classes), |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        T::narrow(num_traits::cast((state >> 40) as f64 / (1u64 << 24) as f64 * 8.0 - 4.0).unwrap())
    })
}

fn labels(rows: usize, classes: usize) -> ArrayD<i64> {
    Array1::from_shape_fn(rows, |i| (i * 7919 % classes) as i64).into_dyn()
}

const SHAPES: [(usize, usize); 4] = [(1024, 32768), (16384, 1000), (262144, 10), (4, 262144)];

fn sparse<T: Element>(c: &mut Criterion, name: &str) {
    let mut group = c.benchmark_group(format!("sparse_{name}"));
    let opts = Options::default();
    for &(rows, classes) in &SHAPES {
        let (z, y) = (logits::<T>(rows, classes), labels(rows, classes));
        let z = z.view().into_dyn();
        group.throughput(Throughput::Bytes((rows * classes * std::mem::size_of::<T>()) as u64));
        let id = format!("{rows}x{classes}");
        group.bench_with_input(BenchmarkId::new("forward", &id), &(), |b, _| {
            b.iter(|| fastxent::sparse_softmax_cross_entropy(z.clone(), y.view(), -1, &opts).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("forward_grad", &id), &(), |b, _| {
            b.iter(|| fastxent::sparse_softmax_cross_entropy_with_grad(z.clone(), y.view(), -1, &opts).unwrap())
        });
    }
    group.finish();
}

fn dense_and_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_f32");
    let opts = Options::default();
    for &(rows, classes) in &SHAPES[..2] {
        let z = logits::<f32>(rows, classes);
        let p = logits::<f32>(rows, classes).mapv(|x| (x + 4.0) / (8.0 * classes as f32));
        group.throughput(Throughput::Bytes((rows * classes * 4) as u64));
        let id = format!("{rows}x{classes}");
        let (z, p) = (z.view().into_dyn(), p.view().into_dyn());
        group.bench_with_input(BenchmarkId::new("forward", &id), &(), |b, _| {
            b.iter(|| fastxent::softmax_cross_entropy(z.clone(), p.clone(), -1, &opts).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("log_softmax", &id), &(), |b, _| {
            b.iter(|| fastxent::log_softmax(z.clone(), -1).unwrap())
        });
    }
    group.finish();
}

/// The exp kernels alone, on a row in L1 (`FASTXENT_SIMD` picks the tier): the compute ceiling
/// under the memory-bound figures above, in elements per second.
fn row_kernels<F: fastxent::kernels::Float>(c: &mut Criterion, name: &str) {
    let k = F::kernels();
    let mut group = c.benchmark_group(format!("row_kernels_{name}_{}", k.tier.name()));
    let z: Vec<F> = logits::<f32>(1, 8192).iter().map(|&x| F::from_f64(x as f64)).collect();
    let (shift, mut out) = (F::from_f64(4.0), vec![F::zero(); z.len()]);
    group.throughput(Throughput::Elements(z.len() as u64));
    group.bench_function("max_argmax", |b| b.iter(|| (k.max_argmax)(&z)));
    group.bench_function("sum_exp", |b| b.iter(|| (k.sum_exp)(&z, shift, NO_SKIP, Ahead::NONE)));
    group.bench_function("exp_scaled", |b| b.iter(|| (k.exp_scaled)(&z, shift, F::from_f64(0.5), &mut out)));
    // A dense row's pass: the exps' sum and the targets' sums together.
    let t = vec![F::from_f64(1.0 / z.len() as f64); z.len()];
    group.bench_function("target_sums", |b| b.iter(|| (k.target_sums)(&t, &z, shift)));
    group.bench_function("sum_exp_targets", |b| {
        b.iter(|| (k.sum_exp_targets)(&z, shift, NO_SKIP, &t, None, Ahead::NONE))
    });
    // The same elements in calls of 32 and 1000, each keeping one term out of its sum as a row's
    // statistics do (the maximum's): what a call costs beyond its elements.
    for len in [32, 1000] {
        let calls = z.len() / len;
        group.throughput(Throughput::Elements((calls * len) as u64));
        group.bench_function(format!("sum_exp_calls_of_{len}"), |b| {
            b.iter(|| z.chunks_exact(len).map(|c| (k.sum_exp)(c, shift, len / 2, Ahead::NONE)).sum::<f64>())
        });
    }
    group.finish();
}

/// The narrow-row kernel alone: the statistics of sixteen rows of 10 classes (in L1), with and
/// without their exps kept, and with the sums of dense targets, in elements per second.
fn tile_kernels(c: &mut Criterion) {
    use fastxent::kernels::lanes::{tile_stats, TileStats, LANES, MAX_CLASSES};
    let classes = 10;
    let z: Vec<f32> = logits::<f32>(LANES, classes).into_iter().collect();
    let targets = vec![1.0 / classes as f32; z.len()];
    let (mut stats, mut exps) = (TileStats::default(), [[0.0f32; LANES]; MAX_CLASSES]);
    let mut group = c.benchmark_group(format!("tile_kernels_{}", fastxent::simd_tier().name()));
    group.throughput(Throughput::Elements(z.len() as u64));
    group.bench_function("stats_16x10", |b| b.iter(|| tile_stats(&z, classes, &mut stats, None, None)));
    group.bench_function("stats_exps_16x10", |b| {
        b.iter(|| tile_stats(&z, classes, &mut stats, Some(&mut exps[..classes]), None))
    });
    group.bench_function("stats_targets_16x10", |b| {
        b.iter(|| tile_stats(&z, classes, &mut stats, None, Some(&targets)))
    });
    group.finish();
}

/// The same for rows stored as a half type (`T`), where the tier reads and writes them as
/// stored; and the widening and rounding passes the other paths make.
fn stored_kernels<T: Element<Compute = f32>>(c: &mut Criterion, name: &str) {
    let Some(k) = T::stored_kernels() else { return };
    let tier = fastxent::simd_tier().name();
    let mut group = c.benchmark_group(format!("stored_kernels_{name}_{tier}"));
    let z: Vec<T> = logits::<T>(1, 8192).into_iter().collect();
    let (mut out, mut wide) = (z.clone(), vec![0.0f32; z.len()]);
    group.throughput(Throughput::Elements(z.len() as u64));
    group.bench_function("max_argmax", |b| b.iter(|| (k.max_argmax)(&z)));
    group.bench_function("sum_exp", |b| b.iter(|| (k.sum_exp)(&z, 4.0, NO_SKIP, Ahead::NONE)));
    group.bench_function("exp_scaled", |b| b.iter(|| (k.exp_scaled)(&z, 4.0, 0.5, &mut out)));
    group.bench_function("widen", |b| b.iter(|| (k.widen)(&z, &mut wide)));
    group.bench_function("narrow", |b| b.iter(|| (k.narrow)(&wide, &mut out)));
    group.finish();
}

fn memory(c: &mut Criterion) {
    // Integer adds vectorise (float sums would not, and would measure the adder instead).
    // 1 GiB: past the last-level cache of most servers (a 16-core Xeon here had 300 MiB).
    let len = 256 << 20;
    let mut data = Vec::<u32>::with_capacity(len);
    huge_pages(data.spare_capacity_mut());
    data.resize(len, 1);
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Bytes((data.len() * 4) as u64));
    group.bench_function("read_sum", |b| {
        b.iter(|| {
            data.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u32, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0, u32::wrapping_add)
        })
    });
    group.finish();
}

/// Asks Linux to back `buffer` (not touched yet) with huge pages, as NumPy does for its large
/// arrays: the arrays this bench stands for. On 4 KiB pages one core of a Zen 4 VM read a
/// third slower (21.6 against 35.0 GB/s, a C probe; TLB misses, presumably: not isolated).
fn huge_pages<T>(buffer: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (buffer.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (buffer.as_ptr() as usize + std::mem::size_of_val(buffer)) / HUGE * HUGE;
        if start < end {
            // SAFETY: advice on whole pages inside the buffer; it never changes their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

fn all(c: &mut Criterion) {
    memory(c);
    row_kernels::<f32>(c, "f32");
    row_kernels::<f64>(c, "f64");
    tile_kernels(c);
    stored_kernels::<f16>(c, "f16");
    stored_kernels::<bf16>(c, "bf16");
    sparse::<f32>(c, "f32");
    sparse::<f64>(c, "f64");
    sparse::<bf16>(c, "bf16");
    sparse::<f16>(c, "f16");
    dense_and_rows(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = all
}
criterion_main!(benches);
