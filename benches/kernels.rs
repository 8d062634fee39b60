//! Throughput of the public API, in GB/s of logits read: `cargo bench`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2};

fn logits(rows: usize, classes: usize) -> Array2<f32> {
    // A cheap deterministic pseudo-random fill (no RNG dependency needed).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    Array2::from_shape_fn((rows, classes), |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sparse_f32");
    for &(rows, classes) in &[(1024usize, 32768usize), (16384, 1000), (262144, 10)] {
        let z = logits(rows, classes);
        let labels = Array1::from_shape_fn(rows, |i| (i * 7919 % classes) as i64);
        group.throughput(Throughput::Bytes((rows * classes * 4) as u64));
        let id = format!("{rows}x{classes}");
        group.bench_with_input(BenchmarkId::new("forward", &id), &(), |b, _| {
            b.iter(|| {
                fastxent::sparse_softmax_cross_entropy(
                    z.view().into_dyn(),
                    labels.view().into_dyn(),
                    -1,
                    &Default::default(),
                )
                .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("forward_grad", &id), &(), |b, _| {
            b.iter(|| {
                fastxent::sparse_softmax_cross_entropy_with_grad(
                    z.view().into_dyn(),
                    labels.view().into_dyn(),
                    -1,
                    &Default::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
