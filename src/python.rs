//! The Python module `fastxent._core`: converts and validates NumPy arrays, releases the GIL,
//! calls the crate, and maps every error to `ValueError`. Keyword rules and array-like
//! conversion live in `python/fastxent/__init__.py`.

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Ix1};
use numpy::{
    Element as NpElement, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::{Element, Error, Options, Reduction};

fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        value_error(e.to_string())
    }
}

/// The floating types logits (and dense labels) may have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloatKind {
    F16,
    Bf16,
    F32,
    F64,
}

/// The integer types sparse labels may have.
#[derive(Clone, Copy)]
enum IntKind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

fn dtype_name(a: &Bound<PyUntypedArray>) -> String {
    a.dtype().to_string()
}

fn float_kind(a: &Bound<PyUntypedArray>) -> Option<FloatKind> {
    let d = a.dtype();
    match (d.kind(), d.itemsize()) {
        (b'f', 2) => Some(FloatKind::F16),
        (b'f', 4) => Some(FloatKind::F32),
        (b'f', 8) => Some(FloatKind::F64),
        (b'V', 2) if dtype_name(a) == "bfloat16" => Some(FloatKind::Bf16),
        _ => None,
    }
}

fn int_kind(a: &Bound<PyUntypedArray>) -> Option<IntKind> {
    let d = a.dtype();
    Some(match (d.kind(), d.itemsize()) {
        (b'i', 1) => IntKind::I8,
        (b'i', 2) => IntKind::I16,
        (b'i', 4) => IntKind::I32,
        (b'i', 8) => IntKind::I64,
        (b'u', 1) => IntKind::U8,
        (b'u', 2) => IntKind::U16,
        (b'u', 4) => IntKind::U32,
        (b'u', 8) => IntKind::U64,
        _ => return None,
    })
}

fn as_ndarray<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>()
        .cloned()
        .map_err(|_| value_error(format!("{name} must be a numpy.ndarray; got {}", type_name(obj))))
}

fn type_name(obj: &Bound<PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown type".into())
}

/// The checks rust-numpy leaves to its caller before a view is made: byte order, rank,
/// alignment of the data and of every stride.
fn check_layout<T>(a: &Bound<PyUntypedArray>, name: &str) -> PyResult<()> {
    let size = std::mem::size_of::<T>();
    if a.dtype().is_native_byteorder() == Some(false) {
        return Err(value_error(format!("{name} has non-native byte order ({}): expected native", dtype_name(a))));
    }
    if a.ndim() > 32 {
        return Err(value_error(format!("{name} has {} dimensions: expected at most 32", a.ndim())));
    }
    // SAFETY: `a` is a live ndarray (we hold a reference to it).
    let data = unsafe { (*a.as_array_ptr()).data } as usize;
    // A stride along an axis of length 0 or 1 is never stepped: any value is harmless there.
    let strides_ok = a.strides().iter().zip(a.shape()).all(|(s, &n)| n <= 1 || s % size as isize == 0);
    let aligned = data.is_multiple_of(std::mem::align_of::<T>()) && strides_ok;
    if !aligned {
        return Err(value_error(format!(
            "{name} is not aligned to its {size}-byte elements (data or strides): expected an aligned array"
        )));
    }
    Ok(())
}

fn typed<'py, T: NpElement>(a: &Bound<'py, PyUntypedArray>, name: &str) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    a.cast::<PyArrayDyn<T>>()
        .cloned()
        .map_err(|_| value_error(format!("{name} has dtype {}: expected {}", dtype_name(a), T::get_dtype(a.py()))))
}

/// A read-only view of `a` as `T`, after [`check_layout`].
fn view<'py, T: NpElement>(a: &Bound<'py, PyUntypedArray>, name: &str) -> PyResult<numpy::PyReadonlyArrayDyn<'py, T>> {
    let typed = typed::<T>(a, name)?;
    check_layout::<T>(a, name)?;
    typed.try_readonly().map_err(|e| value_error(format!("{name} cannot be read: {e}")))
}

/// Whether some element of an array of this shape and strides (in bytes) is reachable by two
/// indices. Conservative: sorts the axes by stride and asks each to step past the extent of
/// the smaller ones.
fn self_overlapping(shape: &[usize], strides: &[isize], itemsize: usize) -> bool {
    if shape.contains(&0) {
        return false;
    }
    let mut axes: Vec<(usize, usize)> =
        shape.iter().zip(strides).filter(|(&n, _)| n > 1).map(|(&n, &s)| (s.unsigned_abs(), n)).collect();
    axes.sort_unstable();
    let mut extent = itemsize;
    for (stride, n) in axes {
        if stride < extent {
            return true;
        }
        extent += stride * (n - 1);
    }
    false
}

/// A writable view of `a` as `T`: a caller's output buffer.
fn view_mut<'py, T: NpElement>(
    a: &Bound<'py, PyUntypedArray>,
    name: &str,
) -> PyResult<numpy::PyReadwriteArrayDyn<'py, T>> {
    let typed = typed::<T>(a, name)?;
    check_layout::<T>(a, name)?;
    if self_overlapping(a.shape(), a.strides(), std::mem::size_of::<T>()) {
        return Err(value_error(format!(
            "{name} has strides under which elements overlap: expected an array whose elements are distinct"
        )));
    }
    typed.try_readwrite().map_err(|e| {
        value_error(format!(
            "{name} cannot be written ({e}): expected a writeable array that no other argument overlaps"
        ))
    })
}

fn to_py<'py, T: NpElement>(py: Python<'py>, a: ArrayD<T>) -> Bound<'py, PyAny> {
    PyArrayDyn::from_owned_array(py, a).into_any()
}

fn extract<'py, T: FromPyObjectOwned<'py>>(obj: &Bound<'py, PyAny>, name: &str, expected: &str) -> PyResult<T> {
    obj.extract::<T>().map_err(|_| value_error(format!("{name} = {} is invalid: expected {expected}", repr(obj))))
}

/// A short description of a user value: its repr, or its type when that is long or fails.
fn repr(obj: &Bound<PyAny>) -> String {
    match obj.repr() {
        Ok(r) if r.to_string().chars().count() <= 60 => r.to_string(),
        _ => format!("<{}>", type_name(obj)),
    }
}

/// Everything the options keywords say, checked, with the weights viewed as `f64`.
struct PyOptions<'py> {
    reduction: Reduction,
    label_smoothing: f64,
    weight: Option<numpy::PyReadonlyArrayDyn<'py, f64>>,
    ignore_index: Option<i64>,
}

impl<'py> PyOptions<'py> {
    fn new(
        reduction: &Bound<'py, PyAny>,
        label_smoothing: &Bound<'py, PyAny>,
        weight: &Bound<'py, PyAny>,
        ignore_index: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        let expected_reduction = "one of 'none', 'sum', 'mean'";
        let reduction = match extract::<String>(reduction, "reduction", expected_reduction)?.as_str() {
            "none" => Reduction::None,
            "sum" => Reduction::Sum,
            "mean" => Reduction::Mean,
            _ => {
                return Err(value_error(format!(
                    "reduction = {} is invalid: expected {expected_reduction}",
                    repr(reduction)
                )))
            }
        };
        let label_smoothing = extract::<f64>(label_smoothing, "label_smoothing", "a number in [0, 1]")?;
        let weight = if weight.is_none() {
            None
        } else {
            let w = as_ndarray(weight, "weight")?;
            if w.dtype().kind() != b'f' || w.dtype().itemsize() != 8 {
                return Err(value_error(format!("weight has dtype {}: expected float64", dtype_name(&w))));
            }
            Some(view::<f64>(&w, "weight")?)
        };
        let ignore_index = if ignore_index.is_none() {
            None
        } else {
            Some(extract::<i64>(ignore_index, "ignore_index", "None or an integer in the int64 range")?)
        };
        Ok(PyOptions { reduction, label_smoothing, weight, ignore_index })
    }

    fn options(&self) -> PyResult<Options<'_>> {
        let weight = match &self.weight {
            None => None,
            Some(w) => Some(w.as_array().into_dimensionality::<Ix1>().map_err(|_| {
                let shape: Vec<String> = w.shape().iter().map(|n| n.to_string()).collect();
                value_error(format!(
                    "weight has shape ({}): expected one weight per class, a 1-d array",
                    shape.join(", ")
                ))
            })?),
        };
        Ok(Options {
            reduction: self.reduction,
            label_smoothing: self.label_smoothing,
            weight,
            ignore_index: self.ignore_index,
        })
    }
}

fn axis_arg(axis: &Bound<PyAny>) -> PyResult<isize> {
    extract::<isize>(axis, "axis", "an integer")
}

/// A loss, or a `(loss, grad)` pair, as Python objects.
fn loss_result<'py, T: NpElement>(py: Python<'py>, r: (ArrayD<T>, Option<ArrayD<T>>)) -> PyResult<Bound<'py, PyAny>> {
    let loss = to_py(py, r.0);
    match r.1 {
        None => Ok(loss),
        Some(g) => Ok(PyTuple::new(py, [loss, to_py(py, g)])?.into_any()),
    }
}

macro_rules! with_float {
    ($kind:expr, $T:ident => $body:expr) => {
        match $kind {
            FloatKind::F16 => {
                type $T = f16;
                $body
            }
            FloatKind::Bf16 => {
                type $T = bf16;
                $body
            }
            FloatKind::F32 => {
                type $T = f32;
                $body
            }
            FloatKind::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

macro_rules! with_int {
    ($kind:expr, $L:ident => $body:expr) => {
        match $kind {
            IntKind::I8 => {
                type $L = i8;
                $body
            }
            IntKind::I16 => {
                type $L = i16;
                $body
            }
            IntKind::I32 => {
                type $L = i32;
                $body
            }
            IntKind::I64 => {
                type $L = i64;
                $body
            }
            IntKind::U8 => {
                type $L = u8;
                $body
            }
            IntKind::U16 => {
                type $L = u16;
                $body
            }
            IntKind::U32 => {
                type $L = u32;
                $body
            }
            IntKind::U64 => {
                type $L = u64;
                $body
            }
        }
    };
}

const FLOATS: &str = "float16, bfloat16, float32 or float64";

fn logits_kind(logits: &Bound<PyUntypedArray>) -> PyResult<FloatKind> {
    float_kind(logits).ok_or_else(|| value_error(format!("logits has dtype {}: expected {FLOATS}", dtype_name(logits))))
}

/// The caller's output buffers (`out=`, `grad_out=`), already checked to be ndarrays.
struct Outputs<'py> {
    loss: Option<Bound<'py, PyUntypedArray>>,
    grad: Option<Bound<'py, PyUntypedArray>>,
    /// `grad_out` is the logits array: the gradient overwrites it.
    in_place: bool,
}

impl<'py> Outputs<'py> {
    fn new(
        logits: &Bound<'py, PyUntypedArray>,
        out: &Bound<'py, PyAny>,
        grad_out: &Bound<'py, PyAny>,
        with_grad: bool,
    ) -> PyResult<Self> {
        let array = |x: &Bound<'py, PyAny>, name| {
            if x.is_none() {
                Ok(None)
            } else {
                as_ndarray(x, name).map(Some)
            }
        };
        let grad = array(grad_out, "grad_out")?;
        if grad.is_some() && !with_grad {
            return Err(value_error("grad_out is only accepted by the *_and_grad functions"));
        }
        let in_place = grad.as_ref().is_some_and(|g| g.is(logits));
        Ok(Outputs { loss: array(out, "out")?, grad, in_place })
    }

    fn given(&self) -> bool {
        self.loss.is_some() || self.grad.is_some()
    }

    /// The caller's `out`, or a new array of `shape`.
    fn loss<T: NpElement>(&self, py: Python<'py>, shape: &[usize]) -> Bound<'py, PyUntypedArray> {
        self.loss.clone().unwrap_or_else(|| PyArrayDyn::<T>::zeros(py, shape, false).as_untyped().clone())
    }

    /// The caller's `grad_out`, or a new array of `shape`.
    fn grad<T: NpElement>(&self, py: Python<'py>, shape: &[usize]) -> Bound<'py, PyUntypedArray> {
        self.grad.clone().unwrap_or_else(|| PyArrayDyn::<T>::zeros(py, shape, false).as_untyped().clone())
    }
}

/// The entry points of one loss (sparse or dense) with its labels bound: what the shared
/// driver [`run_loss`] calls.
trait Loss<T>: Sync {
    fn forward(&self, z: ArrayViewD<T>, o: &Options) -> crate::Result<ArrayD<T>>;
    fn with_grad(&self, z: ArrayViewD<T>, o: &Options) -> crate::Result<(ArrayD<T>, ArrayD<T>)>;
    fn into(
        &self,
        z: ArrayViewD<T>,
        o: &Options,
        out: ArrayViewMutD<T>,
        grad: Option<ArrayViewMutD<T>>,
    ) -> crate::Result<()>;
    fn in_place(&self, z: ArrayViewMutD<T>, o: &Options, out: ArrayViewMutD<T>) -> crate::Result<()>;
    fn loss_shape(&self, logits_shape: &[usize], reduction: Reduction) -> crate::Result<Vec<usize>>;
}

struct Sparse<'a, L> {
    labels: ArrayViewD<'a, L>,
    axis: isize,
}

impl<T: Element, L: crate::Label> Loss<T> for Sparse<'_, L> {
    fn forward(&self, z: ArrayViewD<T>, o: &Options) -> crate::Result<ArrayD<T>> {
        crate::sparse_softmax_cross_entropy(z, self.labels.view(), self.axis, o)
    }
    fn with_grad(&self, z: ArrayViewD<T>, o: &Options) -> crate::Result<(ArrayD<T>, ArrayD<T>)> {
        crate::sparse_softmax_cross_entropy_with_grad(z, self.labels.view(), self.axis, o)
    }
    fn into(
        &self,
        z: ArrayViewD<T>,
        o: &Options,
        out: ArrayViewMutD<T>,
        grad: Option<ArrayViewMutD<T>>,
    ) -> crate::Result<()> {
        crate::sparse_softmax_cross_entropy_into(z, self.labels.view(), self.axis, o, out, grad)
    }
    fn in_place(&self, z: ArrayViewMutD<T>, o: &Options, out: ArrayViewMutD<T>) -> crate::Result<()> {
        crate::sparse_softmax_cross_entropy_grad_in_place(z, self.labels.view(), self.axis, o, out)
    }
    fn loss_shape(&self, logits_shape: &[usize], reduction: Reduction) -> crate::Result<Vec<usize>> {
        crate::sparse_loss_shape(logits_shape, self.axis, reduction)
    }
}

struct Dense<'a, Y> {
    labels: ArrayViewD<'a, Y>,
    axis: isize,
}

impl<T: Element, Y: Element<Compute = T::Compute>> Loss<T> for Dense<'_, Y> {
    fn forward(&self, z: ArrayViewD<T>, o: &Options) -> crate::Result<ArrayD<T>> {
        crate::softmax_cross_entropy(z, self.labels.view(), self.axis, o)
    }
    fn with_grad(&self, z: ArrayViewD<T>, o: &Options) -> crate::Result<(ArrayD<T>, ArrayD<T>)> {
        crate::softmax_cross_entropy_with_grad(z, self.labels.view(), self.axis, o)
    }
    fn into(
        &self,
        z: ArrayViewD<T>,
        o: &Options,
        out: ArrayViewMutD<T>,
        grad: Option<ArrayViewMutD<T>>,
    ) -> crate::Result<()> {
        crate::softmax_cross_entropy_into(z, self.labels.view(), self.axis, o, out, grad)
    }
    fn in_place(&self, z: ArrayViewMutD<T>, o: &Options, out: ArrayViewMutD<T>) -> crate::Result<()> {
        crate::softmax_cross_entropy_grad_in_place(z, self.labels.view(), self.axis, o, out)
    }
    fn loss_shape(&self, logits_shape: &[usize], reduction: Reduction) -> crate::Result<Vec<usize>> {
        crate::dense_loss_shape(logits_shape, self.labels.shape(), self.axis, reduction)
    }
}

/// Runs a loss with the GIL released: into fresh arrays, into the caller's buffers, or with
/// the gradient over the logits.
fn run_loss<'py, T: Element + NpElement>(
    py: Python<'py>,
    logits: &Bound<'py, PyUntypedArray>,
    loss: &impl Loss<T>,
    options: &PyOptions<'py>,
    with_grad: bool,
    outs: &Outputs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = options.options()?;
    if !outs.given() {
        let z = view::<T>(logits, "logits")?;
        let z = z.as_array();
        let result = py.detach(|| {
            if with_grad {
                loss.with_grad(z, &options).map(|(l, g)| (l, Some(g)))
            } else {
                loss.forward(z, &options).map(|l| (l, None))
            }
        })?;
        return loss_result(py, result);
    }
    let out = outs.loss::<T>(py, &loss.loss_shape(logits.shape(), options.reduction)?);
    let mut out_view = view_mut::<T>(&out, "out")?;
    let out_mut = out_view.as_array_mut();
    if outs.in_place {
        let mut z = view_mut::<T>(logits, "grad_out")?;
        let z = z.as_array_mut();
        py.detach(|| loss.in_place(z, &options, out_mut))?;
        return buffers_result(py, out, Some(logits.clone()));
    }
    let z = view::<T>(logits, "logits")?;
    let grad = with_grad.then(|| outs.grad::<T>(py, logits.shape()));
    let mut grad_view = grad.as_ref().map(|g| view_mut::<T>(g, "grad_out")).transpose()?;
    let grad_mut = grad_view.as_mut().map(|g| g.as_array_mut());
    let z = z.as_array();
    py.detach(|| loss.into(z, &options, out_mut, grad_mut))?;
    buffers_result(py, out, grad)
}

fn sparse_impl<'py, T: Element + NpElement, L: crate::Label + NpElement>(
    py: Python<'py>,
    logits: &Bound<'py, PyUntypedArray>,
    labels: &Bound<'py, PyUntypedArray>,
    axis: isize,
    options: &PyOptions<'py>,
    with_grad: bool,
    outs: &Outputs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let y = view::<L>(labels, "labels")?;
    run_loss::<T>(py, logits, &Sparse { labels: y.as_array(), axis }, options, with_grad, outs)
}

/// The loss, or `(loss, grad)`, when they were written into buffers.
fn buffers_result<'py>(
    py: Python<'py>,
    loss: Bound<'py, PyUntypedArray>,
    grad: Option<Bound<'py, PyUntypedArray>>,
) -> PyResult<Bound<'py, PyAny>> {
    match grad {
        None => Ok(loss.into_any()),
        Some(g) => Ok(PyTuple::new(py, [loss.into_any(), g.into_any()])?.into_any()),
    }
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn sparse<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    axis: &Bound<'py, PyAny>,
    reduction: &Bound<'py, PyAny>,
    label_smoothing: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    ignore_index: &Bound<'py, PyAny>,
    with_grad: bool,
    out: &Bound<'py, PyAny>,
    grad_out: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (logits, labels) = (as_ndarray(logits, "logits")?, as_ndarray(labels, "labels")?);
    let outs = Outputs::new(&logits, out, grad_out, with_grad)?;
    let kind = logits_kind(&logits)?;
    let label_kind = int_kind(&labels).ok_or_else(|| {
        value_error(format!(
            "labels has dtype {}: expected an integer dtype (int8 to int64, uint8 to uint64) of class indices",
            dtype_name(&labels)
        ))
    })?;
    let axis = axis_arg(axis)?;
    let options = PyOptions::new(reduction, label_smoothing, weight, ignore_index)?;
    with_float!(kind, T => with_int!(label_kind, L =>
        sparse_impl::<T, L>(py, &logits, &labels, axis, &options, with_grad, &outs)))
}

fn dense_impl<'py, T, Y>(
    py: Python<'py>,
    logits: &Bound<'py, PyUntypedArray>,
    labels: &Bound<'py, PyUntypedArray>,
    axis: isize,
    options: &PyOptions<'py>,
    with_grad: bool,
    outs: &Outputs<'py>,
) -> PyResult<Bound<'py, PyAny>>
where
    T: Element + NpElement,
    Y: Element<Compute = T::Compute> + NpElement,
{
    let y = view::<Y>(labels, "labels")?;
    run_loss::<T>(py, logits, &Dense { labels: y.as_array(), axis }, options, with_grad, outs)
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn dense<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    axis: &Bound<'py, PyAny>,
    reduction: &Bound<'py, PyAny>,
    label_smoothing: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    with_grad: bool,
    out: &Bound<'py, PyAny>,
    grad_out: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (logits, labels) = (as_ndarray(logits, "logits")?, as_ndarray(labels, "labels")?);
    let outs = Outputs::new(&logits, out, grad_out, with_grad)?;
    let kind = logits_kind(&logits)?;
    let label_kind = float_kind(&labels).ok_or_else(|| {
        value_error(format!(
            "labels has dtype {}: expected a floating dtype ({FLOATS}) of class probabilities",
            dtype_name(&labels)
        ))
    })?;
    // The Python layer converts labels to the logits' compute type where it differs.
    let compute = if kind == FloatKind::F64 { FloatKind::F64 } else { FloatKind::F32 };
    if (label_kind == FloatKind::F64) != (compute == FloatKind::F64) {
        let expected = if compute == FloatKind::F64 { "float64" } else { "float16, bfloat16 or float32" };
        return Err(value_error(format!("labels has dtype {}: expected {expected}", dtype_name(&labels))));
    }
    let axis = axis_arg(axis)?;
    let none = py.None().into_bound(py);
    let options = PyOptions::new(reduction, label_smoothing, weight, &none)?;
    macro_rules! labels_as {
        ($T:ty) => {
            match label_kind {
                FloatKind::F16 => dense_impl::<$T, f16>(py, &logits, &labels, axis, &options, with_grad, &outs),
                FloatKind::Bf16 => dense_impl::<$T, bf16>(py, &logits, &labels, axis, &options, with_grad, &outs),
                _ => dense_impl::<$T, f32>(py, &logits, &labels, axis, &options, with_grad, &outs),
            }
        };
    }
    match kind {
        FloatKind::F64 => dense_impl::<f64, f64>(py, &logits, &labels, axis, &options, with_grad, &outs),
        FloatKind::F16 => labels_as!(f16),
        FloatKind::Bf16 => labels_as!(bf16),
        FloatKind::F32 => labels_as!(f32),
    }
}

type RowOp<T> = fn(ArrayViewD<T>, isize) -> crate::Result<ArrayD<T>>;

fn row_op_impl<'py, T: Element + NpElement>(
    py: Python<'py>,
    logits: &Bound<'py, PyUntypedArray>,
    axis: isize,
    op: RowOp<T>,
) -> PyResult<Bound<'py, PyAny>> {
    let z = view::<T>(logits, "logits")?;
    let z = z.as_array();
    let out = py.detach(|| op(z, axis))?;
    Ok(to_py(py, out))
}

macro_rules! row_op {
    ($name:ident) => {
        #[pyfunction]
        fn $name<'py>(py: Python<'py>, logits: &Bound<'py, PyAny>, axis: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
            let logits = as_ndarray(logits, "logits")?;
            let kind = logits_kind(&logits)?;
            let axis = axis_arg(axis)?;
            with_float!(kind, T => row_op_impl::<T>(py, &logits, axis, crate::$name::<T>))
        }
    };
}
row_op!(log_softmax);
row_op!(softmax);
row_op!(logsumexp);

/// The SIMD tier in use: "avx512", "avx2", "neon" or "scalar".
#[pyfunction]
fn simd_tier() -> &'static str {
    crate::simd_tier().name()
}

/// Every SIMD tier this CPU can run, from the baseline up (`FASTXENT_SIMD` picks among them).
#[pyfunction]
fn simd_tiers() -> Vec<&'static str> {
    crate::dispatch::supported_tiers().into_iter().map(|t| t.name()).collect()
}

/// Sets the number of worker threads (0: back to the default, `RAYON_NUM_THREADS` or all cores).
#[pyfunction]
fn set_num_threads(n: &Bound<PyAny>) -> PyResult<()> {
    let n = extract::<usize>(n, "n", "a non-negative integer")?;
    if n > 4096 {
        return Err(value_error(format!("n = {n} is invalid: expected at most 4096 threads")));
    }
    crate::set_num_threads(n).map_err(|e| value_error(format!("could not start {n} threads: {e}")))
}

/// The number of worker threads in use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::num_threads()
}

#[pymodule(name = "_core", gil_used = false)]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sparse, m)?)?;
    m.add_function(wrap_pyfunction!(dense, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp, m)?)?;
    m.add_function(wrap_pyfunction!(simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(simd_tiers, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
