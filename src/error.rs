//! The crate's one error type. Every message names the argument, what was found and what
//! was expected, so a user can act on it without reading the source.

use std::fmt;

/// Everything that can be wrong with a call. The Python layer maps each one to `ValueError`.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// `axis` outside `[-rank, rank)`.
    Axis { axis: isize, rank: usize },
    /// Logits of rank 0: there is no class axis.
    ScalarLogits,
    /// A class axis of length 0 with a non-empty batch: no label can be valid.
    NoClasses { logits_shape: Vec<usize>, axis: usize },
    /// Sparse labels whose shape is not the logits' shape without the class axis.
    SparseLabelsShape { labels: Vec<usize>, expected: Vec<usize>, logits: Vec<usize>, axis: usize },
    /// Dense labels that do not broadcast against the logits.
    DenseLabelsShape { labels: Vec<usize>, logits: Vec<usize> },
    /// A gradient was asked for logits that broadcast up to the labels' shape.
    GradBroadcast { logits: Vec<usize>, broadcast: Vec<usize> },
    /// A sparse label outside `[0, classes)` that is not `ignore_index`.
    LabelOutOfRange { index: Vec<usize>, value: i128, classes: usize },
    /// `label_smoothing` outside `[0, 1]` or NaN.
    LabelSmoothing(f64),
    /// `weight` of the wrong length.
    WeightShape { found: Vec<usize>, classes: usize },
    /// A negative or non-finite class weight.
    WeightValue { index: usize, value: f64 },
    /// An output buffer of the wrong shape.
    OutShape { name: &'static str, found: Vec<usize>, expected: Vec<usize> },
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

fn shape(s: &[usize]) -> String {
    match s {
        [one] => format!("({one},)"),
        _ => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

fn index(i: &[usize]) -> String {
    format!("[{}]", i.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Axis { axis, rank } => {
                let r = *rank as isize;
                write!(f, "axis {axis} is out of range for logits of rank {rank}: expected an axis in [{}, {})", -r, r)
            }
            Error::ScalarLogits => {
                write!(f, "logits must have at least one dimension (the class axis); got a 0-d array")
            }
            Error::NoClasses { logits_shape, axis } => write!(
                f,
                "logits of shape {} have 0 classes along axis {axis} but a non-empty batch: \
                 expected at least one class",
                shape(logits_shape)
            ),
            Error::SparseLabelsShape { labels, expected, logits, axis } => write!(
                f,
                "labels shape {} does not match logits shape {} without the class axis {axis}: \
                 expected labels of shape {}",
                shape(labels),
                shape(logits),
                shape(expected)
            ),
            Error::DenseLabelsShape { labels, logits } => write!(
                f,
                "labels shape {} does not broadcast against logits shape {}: expected shapes \
                 compatible under NumPy broadcasting rules",
                shape(labels),
                shape(logits)
            ),
            Error::GradBroadcast { logits, broadcast } => write!(
                f,
                "logits of shape {} broadcast to the labels' shape {}: the gradient needs logits \
                 of the full broadcast shape",
                shape(logits),
                shape(broadcast)
            ),
            Error::LabelOutOfRange { index: i, value, classes } => {
                write!(f, "labels{} = {value} is out of range: expected a class index in [0, {classes})", index(i))
            }
            Error::LabelSmoothing(e) => {
                write!(f, "label_smoothing = {e} is invalid: expected a number in [0, 1]")
            }
            Error::WeightShape { found, classes } => {
                write!(f, "weight has shape {}: expected one weight per class, shape ({classes},)", shape(found))
            }
            Error::WeightValue { index: i, value } => {
                write!(f, "weight[{i}] = {value} is invalid: expected finite, non-negative class weights")
            }
            Error::OutShape { name, found, expected } => {
                write!(f, "{name} has shape {}: expected shape {}", shape(found), shape(expected))
            }
        }
    }
}

impl std::error::Error for Error {}
