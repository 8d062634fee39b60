//! Integration tests of the pure-Rust API: values against a naive f64 reference, shapes,
//! axes, broadcasting, options and errors.

use fastxent::{
    log_softmax, logsumexp, softmax, softmax_cross_entropy, softmax_cross_entropy_with_grad,
    sparse_softmax_cross_entropy, sparse_softmax_cross_entropy_with_grad, Error, Options, Reduction,
};
use ndarray::{array, Array, ArrayD, Axis, Dimension, IxDyn, ShapeBuilder};

/// Deterministic pseudo-random logits in [-4, 4).
fn logits(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Array::from_shape_fn(IxDyn(shape), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0
    })
}

/// Naive f64 reference: log-softmax of one row.
fn ref_log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    z.iter().map(|x| x - lse).collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn sparse_matches_reference_on_every_axis() {
    let z = logits(&[3, 4, 5], 1);
    for axis in 0..3 {
        let classes = z.shape()[axis];
        let batch: Vec<usize> = (0..3).filter(|&d| d != axis).map(|d| z.shape()[d]).collect();
        let labels = Array::from_shape_fn(IxDyn(&batch), |i| ((i[0] * 7 + i[1] * 3) % classes) as i32);
        for signed_axis in [axis as isize, axis as isize - 3] {
            let loss = sparse_softmax_cross_entropy(z.view(), labels.view(), signed_axis, &Options::default()).unwrap();
            assert_eq!(loss.shape(), batch.as_slice());
            for (idx, &l) in loss.indexed_iter() {
                let mut full: Vec<usize> = (0..idx.ndim()).map(|d| idx[d]).collect();
                full.insert(axis, 0);
                let row: Vec<f64> = (0..classes)
                    .map(|c| {
                        full[axis] = c;
                        z[IxDyn(&full)]
                    })
                    .collect();
                let want = -ref_log_softmax(&row)[labels[&idx] as usize];
                assert!(close(l, want, 1e-13), "axis {axis}: {l} vs {want}");
            }
        }
    }
}

#[test]
fn dense_broadcasts_labels_and_matches_reference() {
    let z = logits(&[4, 6], 2);
    let y = logits(&[6], 3).mapv(f64::abs); // one label row for every logits row
    let loss = softmax_cross_entropy(z.view(), y.view(), -1, &Options::default()).unwrap();
    assert_eq!(loss.shape(), &[4]);
    for (r, row) in z.outer_iter().enumerate() {
        let lp = ref_log_softmax(row.as_slice().unwrap());
        let want: f64 = -y.iter().zip(&lp).map(|(a, b)| a * b).sum::<f64>();
        assert!(close(loss[r], want, 1e-13));
    }
}

#[test]
fn row_ops_match_reference_on_strided_views() {
    let z = logits(&[5, 8], 4);
    let t = z.t(); // class axis 0 of the transpose is strided
    let ls = log_softmax(t.view(), 0).unwrap();
    let sm = softmax(t.view(), 0).unwrap();
    let lse = logsumexp(t.view(), 0).unwrap();
    for (r, row) in z.outer_iter().enumerate() {
        let lp = ref_log_softmax(row.as_slice().unwrap());
        for c in 0..8 {
            assert!(close(ls[[c, r]], lp[c], 1e-13));
            assert!(close(sm[[c, r]], lp[c].exp(), 1e-13));
        }
        assert!(close(lse[[r]], row[0] - lp[0], 1e-13));
    }
}

#[test]
fn f32_and_half_types_agree_with_f64() {
    let z64 = logits(&[7, 33], 5);
    let z32 = z64.mapv(|x| x as f32);
    let zh = z64.mapv(fastxent::bf16::from_f64);
    let labels = Array::from_shape_fn(IxDyn(&[7]), |i| (i[0] * 5 % 33) as u8);
    let opts = Options::default();
    let want = sparse_softmax_cross_entropy(z32.mapv(|x| x as f64).view(), labels.view(), -1, &opts).unwrap();
    let got = sparse_softmax_cross_entropy(z32.view(), labels.view(), -1, &opts).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(close(*g as f64, *w, 2e-6));
    }
    let wanth = sparse_softmax_cross_entropy(zh.mapv(|x| x.to_f64()).view(), labels.view(), -1, &opts).unwrap();
    let goth = sparse_softmax_cross_entropy(zh.view(), labels.view(), -1, &opts).unwrap();
    for (g, w) in goth.iter().zip(&wanth) {
        assert_eq!(*g, fastxent::bf16::from_f64(*w), "bf16 result is the rounded f64 result");
    }
}

#[test]
fn confident_rows_keep_their_tiny_loss() {
    // The label leads by 40: loss = log1p(exp(-40) + exp(-41)) ≈ 5.83e-18; `lse - z` gives 0.
    let z = array![[40.0f32, 0.0, -1.0]].into_dyn();
    let labels = array![0i64].into_dyn();
    let (loss, grad) =
        sparse_softmax_cross_entropy_with_grad(z.view(), labels.view(), -1, &Options::default()).unwrap();
    let want = ((-40.0f64).exp() + (-41.0f64).exp()).ln_1p();
    assert!(close(loss[[0]] as f64, want, 4e-7), "{} vs {want}", loss[[0]]);
    assert!(close(grad[[0, 0]] as f64, -want, 4e-7), "p_y - 1 is minus the others' mass");
}

/// A confident row's loss is its tiny rest, `log1p(Σ_{j≠k} exp(z_j - z_k))`, wherever the
/// maximum `k` falls: in the first block of a row or a later one, at a block's edge, in a row
/// read as stored (a half type past 512 classes) and in one split across threads.
#[test]
fn confident_long_rows_leave_out_their_maximum_in_every_block() {
    fn check<T: fastxent::Element>(name: &str, from: impl Fn(f64) -> T, to: impl Fn(T) -> f64, tol: f64) {
        for classes in [1500, 6000, 70000] {
            for k in [0, 4095, 4096, 4097, 5000, classes - 1].into_iter().filter(|&k| k < classes) {
                let mut z = logits(&[1, classes], classes as u64).mapv(|x| from(x / 4.0));
                z[[0, k]] = from(30.0);
                let rest: f64 = (0..classes).filter(|&j| j != k).map(|j| (to(z[[0, j]]) - 30.0).exp()).sum();
                let want = rest.ln_1p();
                let labels = array![k as i64].into_dyn();
                let opts = Options::default();
                let loss = sparse_softmax_cross_entropy(z.view(), labels.view(), -1, &opts).unwrap();
                let (loss_g, _) = sparse_softmax_cross_entropy_with_grad(z.view(), labels.view(), -1, &opts).unwrap();
                for (what, got) in [("loss", loss[[0]]), ("loss with grad", loss_g[[0]])] {
                    let got = to(got);
                    assert!(
                        (got - want).abs() <= tol * want,
                        "{name} {what}, {classes} classes, max at {k}: {got} vs {want}"
                    );
                }
            }
        }
    }
    check("f64", |x| x, |x| x, 1e-12);
    check("f32", |x| x as f32, |x| x as f64, 1e-5);
    check("bf16", fastxent::bf16::from_f64, |x| x.to_f64(), 1e-2);
}

#[test]
fn special_values() {
    let inf = f64::INFINITY;
    let z = array![[0.0, -inf, 1.0], [f64::NAN, 0.0, 1.0], [inf, 0.0, 1.0], [-inf, -inf, -inf]].into_dyn();
    let y = array![[0.5, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]].into_dyn();
    let loss = softmax_cross_entropy(z.view(), y.view(), -1, &Options::default()).unwrap();
    let lp = ref_log_softmax(&[0.0, -inf, 1.0]);
    assert!(close(loss[[0]], -0.5 * (lp[0] + lp[2]), 1e-14), "0 × -inf counts 0");
    assert!(loss[[1]].is_nan() && loss[[2]].is_nan() && loss[[3]].is_nan());
    let lse = logsumexp(z.view(), -1).unwrap();
    assert!(lse[[1]].is_nan());
    assert_eq!(lse[[2]], inf);
    assert_eq!(lse[[3]], -inf);
    let mass_on_minus_inf = array![[0.0, 1.0, 0.0]].into_dyn();
    let l =
        softmax_cross_entropy(z.slice_axis(Axis(0), (0..1).into()), mass_on_minus_inf.view(), -1, &Options::default())
            .unwrap();
    assert_eq!(l[[0]], inf);
}

#[test]
fn options_follow_pytorch() {
    let z = logits(&[6, 4], 6);
    let labels = array![0i64, 1, 2, 3, -100, 1].into_dyn();
    let w = array![1.0, 2.0, 0.5, 3.0];
    let opts =
        Options { reduction: Reduction::Mean, weight: Some(w.view()), ignore_index: Some(-100), label_smoothing: 0.0 };
    let loss = sparse_softmax_cross_entropy(z.view(), labels.view(), -1, &opts).unwrap();
    let (mut num, mut den) = (0.0, 0.0);
    for (r, row) in z.outer_iter().enumerate() {
        if labels[r] < 0 {
            continue;
        }
        let y = labels[r] as usize;
        num += -w[y] * ref_log_softmax(row.as_slice().unwrap())[y];
        den += w[y];
    }
    assert!(close(loss[[]], num / den, 1e-14));

    // Gradient of the mean: central differences on the f64 loss.
    let (_, grad) = sparse_softmax_cross_entropy_with_grad(z.view(), labels.view(), -1, &opts).unwrap();
    let h = 1e-6;
    for idx in [[0usize, 0usize], [2, 1], [4, 3], [5, 1]] {
        let (mut up, mut down) = (z.clone(), z.clone());
        up[IxDyn(&idx)] += h;
        down[IxDyn(&idx)] -= h;
        let f = |a: &ArrayD<f64>| sparse_softmax_cross_entropy(a.view(), labels.view(), -1, &opts).unwrap()[[]];
        let fd = (f(&up) - f(&down)) / (2.0 * h);
        assert!((grad[IxDyn(&idx)] - fd).abs() < 1e-8, "{idx:?}: {} vs {fd}", grad[IxDyn(&idx)]);
    }
}

#[test]
fn dense_gradient_is_the_true_derivative() {
    let z = logits(&[3, 5], 7);
    let y = logits(&[3, 5], 8).mapv(f64::abs); // not normalised: TF's softmax - y would be wrong
    let opts = Options { label_smoothing: 0.1, ..Default::default() };
    let (_, grad) = softmax_cross_entropy_with_grad(z.view(), y.view(), -1, &opts).unwrap();
    let h = 1e-6;
    for r in 0..3 {
        for c in 0..5 {
            let (mut up, mut down) = (z.clone(), z.clone());
            up[[r, c]] += h;
            down[[r, c]] -= h;
            let f = |a: &ArrayD<f64>| softmax_cross_entropy(a.view(), y.view(), -1, &opts).unwrap().sum();
            let fd = (f(&up) - f(&down)) / (2.0 * h);
            assert!((grad[[r, c]] - fd).abs() < 1e-8);
        }
    }
}

#[test]
fn errors_name_the_problem() {
    let z = logits(&[2, 3], 9);
    let opts = Options::default();
    let bad = array![0i64, 3].into_dyn();
    let e = sparse_softmax_cross_entropy(z.view(), bad.view(), -1, &opts).unwrap_err();
    assert_eq!(e, Error::LabelOutOfRange { index: vec![1], value: 3, classes: 3 });
    assert_eq!(e.to_string(), "labels[1] = 3 is out of range: expected a class index in [0, 3)");
    let ok = array![0i64, 1].into_dyn();
    assert_eq!(
        sparse_softmax_cross_entropy(z.view(), ok.view(), 2, &opts).unwrap_err(),
        Error::Axis { axis: 2, rank: 2 }
    );
    assert!(matches!(
        sparse_softmax_cross_entropy(z.view(), ok.view(), 0, &opts).unwrap_err(),
        Error::SparseLabelsShape { .. }
    ));
    let y = logits(&[2, 4], 1);
    assert!(matches!(
        softmax_cross_entropy(z.view(), y.view(), -1, &opts).unwrap_err(),
        Error::DenseLabelsShape { .. }
    ));
    let empty = ArrayD::<f64>::zeros(IxDyn(&[2, 0]));
    let none = ArrayD::<i64>::zeros(IxDyn(&[2]));
    assert!(matches!(
        sparse_softmax_cross_entropy(empty.view(), none.view(), -1, &opts).unwrap_err(),
        Error::NoClasses { .. }
    ));
    let w = array![1.0, -1.0, 1.0];
    let bad_w = Options { weight: Some(w.view()), ..Default::default() };
    assert_eq!(
        sparse_softmax_cross_entropy(z.view(), ok.view(), -1, &bad_w).unwrap_err(),
        Error::WeightValue { index: 1, value: -1.0 }
    );
    let eps = Options { label_smoothing: f64::NAN, ..Default::default() };
    assert!(matches!(
        sparse_softmax_cross_entropy(z.view(), ok.view(), -1, &eps).unwrap_err(),
        Error::LabelSmoothing(_)
    ));
    let scalar = ArrayD::<f64>::zeros(IxDyn(&[]));
    assert_eq!(log_softmax(scalar.view(), -1).unwrap_err(), Error::ScalarLogits);
}

#[test]
fn empty_batches_give_empty_results() {
    let z = ArrayD::<f32>::zeros(IxDyn(&[0, 5]));
    let labels = ArrayD::<i64>::zeros(IxDyn(&[0]));
    let (loss, grad) =
        sparse_softmax_cross_entropy_with_grad(z.view(), labels.view(), -1, &Options::default()).unwrap();
    assert_eq!((loss.shape(), grad.shape()), (&[0usize][..], &[0usize, 5][..]));
    let mean = Options { reduction: Reduction::Mean, ..Default::default() };
    assert!(sparse_softmax_cross_entropy(z.view(), labels.view(), -1, &mean).unwrap()[[]].is_nan());
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let z = logits(&[3000, 37], 10).mapv(|x| x as f32);
    let labels = Array::from_shape_fn(IxDyn(&[3000]), |i| (i[0] % 37) as i64);
    let opts = Options { reduction: Reduction::Sum, ..Default::default() };
    fastxent::set_num_threads(1).unwrap();
    let one = sparse_softmax_cross_entropy(z.view(), labels.view(), -1, &opts).unwrap();
    fastxent::set_num_threads(3).unwrap();
    let three = sparse_softmax_cross_entropy(z.view(), labels.view(), -1, &opts).unwrap();
    fastxent::set_num_threads(0).unwrap();
    assert_eq!(one[[]].to_bits(), three[[]].to_bits());
}

/// Rows of no classes whose class stride is 1 (a slice of a wider array), in every stored type:
/// logsumexp is -inf and the row-wise outputs are empty, without reading a row element.
#[test]
fn empty_rows_with_a_class_stride_of_one() {
    fn check<T: fastxent::Element>(zero: T) {
        let data = vec![zero; 15];
        let z = ndarray::ArrayView::from_shape(IxDyn(&[3, 0]).strides(IxDyn(&[5, 1])), &data).unwrap();
        let lse = logsumexp(z.view(), -1).unwrap();
        assert_eq!(lse.shape(), &[3]);
        let neg_inf = |x: &T| fastxent::kernels::Float::to_f64(x.widen()) == f64::NEG_INFINITY;
        assert!(lse.iter().all(neg_inf), "logsumexp of no classes");
        assert_eq!(softmax(z.view(), -1).unwrap().shape(), &[3, 0]);
        assert_eq!(log_softmax(z.view(), -1).unwrap().shape(), &[3, 0]);
    }
    check(fastxent::f16::ZERO);
    check(fastxent::bf16::ZERO);
    check(0.0f32);
    check(0.0f64);
}
