//! The GPU kernels: one WGSL file per op family, and for each family the code that turns a step
//! and its run-time shapes into dispatches (which kernel, which bindings, what parameters).
//! Shapes come from the CPU kernels' inference, which the session runs for every step on either
//! device, so the two backends cannot disagree about an output's shape.

mod elementwise;
mod movement;
mod norm;
mod products;
mod reduce;

use crate::error::KernelError;
use kiln_formats::program::{Step, NO_VALUE};
use kiln_formats::DType;

/// A WGSL kernel; the shared prelude (parameters binding, index helpers) is prepended.
pub(crate) struct Shader {
    pub name: &'static str,
    body: &'static str,
}

impl Shader {
    /// The full WGSL source.
    pub fn source(&self) -> String {
        format!("{}\n{}", include_str!("prelude.wgsl"), self.body)
    }
}

macro_rules! shader {
    ($id:ident, $file:literal) => {
        pub(crate) static $id: Shader = Shader { name: $file, body: include_str!($file) };
    };
}
shader!(UNARY, "unary.wgsl");
shader!(BINARY, "binary.wgsl");
shader!(WHERE, "where.wgsl");
shader!(CAST, "cast.wgsl");
shader!(COPY, "copy.wgsl");
shader!(GATHER, "gather.wgsl");
shader!(MATMUL, "matmul.wgsl");
shader!(MATVEC, "matvec.wgsl");
shader!(SOFTMAX, "softmax.wgsl");
shader!(LAYERNORM, "layernorm.wgsl");
shader!(REDUCE, "reduce.wgsl");

/// Every kernel, for tests that compile them all.
#[cfg(test)]
pub(crate) static ALL: &[&Shader] =
    &[&UNARY, &BINARY, &WHERE, &CAST, &COPY, &GATHER, &MATMUL, &MATVEC, &SOFTMAX, &LAYERNORM, &REDUCE];

/// A data binding of a dispatch: the step's input or output number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    In(usize),
    Out(usize),
}

/// One kernel launch: bindings 1.. are `args` in order, binding 0 the parameters.
pub(crate) struct Dispatch {
    pub shader: &'static Shader,
    pub args: Vec<Arg>,
    pub params: Vec<u32>,
    pub groups: [u32; 3],
}

/// Most axes the index arithmetic in the kernels handles.
pub(crate) const MAX_RANK: usize = 8;

/// What a dispatch needs to know about one run of a step.
pub(crate) struct Call<'a> {
    /// Input shapes (`None`: absent optional input).
    pub inputs: &'a [Option<Vec<usize>>],
    /// Integer values of the inputs shape inference reads (starts, axes, ...).
    pub values: &'a [Option<Vec<i64>>],
    pub outputs: &'a [Vec<usize>],
}

impl Call<'_> {
    pub fn input(&self, k: usize) -> Result<&[usize], KernelError> {
        self.inputs.get(k).and_then(|s| s.as_deref()).ok_or_else(|| KernelError::input(k, "is required"))
    }

    pub fn output(&self, k: usize) -> Result<&[usize], KernelError> {
        self.outputs.get(k).map(Vec::as_slice).ok_or_else(|| KernelError::invalid(format!("no output {k}")))
    }
}

/// A step prepared for the GPU: its family's settings, read from the attributes once at load.
pub(crate) enum GpuOp {
    Unary(elementwise::Unary),
    Binary(elementwise::Binary),
    Where,
    Cast(u32),
    Movement(movement::Movement),
    Product(products::Product),
    Norm(norm::Norm),
    Reduce(reduce::Reduce),
}

impl GpuOp {
    /// Prepares `step` (which [`super::support::check`] accepted); `dtype` gives slot types.
    pub fn new(step: &Step, dtype: &dyn Fn(u32) -> Option<DType>) -> Result<GpuOp, KernelError> {
        use super::support::{BINARY, MOVEMENT, NORM, REDUCE, UNARY};
        let attrs = crate::kernel::Attrs(&step.attrs);
        let input_dtype = |k: usize| step.inputs.get(k).filter(|&&i| i != NO_VALUE).and_then(|&i| dtype(i));
        let op = step.op.as_str();
        Ok(match (step.domain.as_str(), op) {
            ("kiln", "MatMul" | "MatMulTransB") => {
                let pitch = attrs.int("b_pitch", 0)?;
                let pitch = usize::try_from(pitch).map_err(|_| KernelError::attr("b_pitch", "is negative"))?;
                GpuOp::Product(products::Product::matmul(op == "MatMulTransB", pitch))
            }
            ("kiln", "KvAppend") => GpuOp::Movement(movement::Movement::kv_append(attrs)?),
            (_, "MatMul") => GpuOp::Product(products::Product::matmul(false, 0)),
            (_, "Gemm") => GpuOp::Product(products::Product::gemm(attrs)?),
            (_, "Where") => GpuOp::Where,
            (_, "Cast") => GpuOp::Cast(match input_dtype(0) {
                Some(DType::I32) => 1,
                Some(DType::Bool) => 2,
                _ => 0,
            }),
            _ if UNARY.contains(&op) => GpuOp::Unary(elementwise::Unary::new(op, attrs)?),
            _ if BINARY.contains(&op) => GpuOp::Binary(elementwise::Binary::new(op)),
            _ if MOVEMENT.contains(&op) => GpuOp::Movement(movement::Movement::new(step, attrs, input_dtype(1))?),
            _ if NORM.contains(&op) => GpuOp::Norm(norm::Norm::new(op, step.opset, attrs)?),
            _ if REDUCE.contains(&op) => GpuOp::Reduce(reduce::Reduce::new(op, step.opset, attrs)?),
            _ => return Err(KernelError::unsupported(format!("no GPU kernel for {op}"))),
        })
    }

    /// The launches that compute one run of the step.
    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        match self {
            GpuOp::Unary(u) => u.dispatches(call),
            GpuOp::Binary(b) => b.dispatches(call),
            GpuOp::Where => elementwise::where_dispatches(call),
            GpuOp::Cast(from) => elementwise::cast_dispatches(call, *from),
            GpuOp::Movement(m) => m.dispatches(call),
            GpuOp::Product(p) => p.dispatches(call),
            GpuOp::Norm(n) => n.dispatches(call),
            GpuOp::Reduce(r) => r.dispatches(call),
        }
    }
}

/// Elements of `shape`, as the kernels' 32-bit index arithmetic needs them.
pub(crate) fn numel(shape: &[usize]) -> Result<u32, KernelError> {
    let n: usize = shape.iter().product();
    u32::try_from(n).map_err(|_| KernelError::invalid(format!("{n} elements exceed the GPU kernels' 32-bit indexing")))
}

/// A grid of 256-wide workgroups covering `n` invocations (each side at most 65535).
pub(crate) fn groups_1d(n: u32) -> [u32; 3] {
    rows_grid(n.div_ceil(256))
}

/// A grid of `rows` workgroups (one per row), spread over two sides of at most 65535.
pub(crate) fn rows_grid(rows: u32) -> [u32; 3] {
    let x = rows.clamp(1, 65535);
    [x, rows.div_ceil(x).max(1), 1]
}

/// `shape` padded to [`MAX_RANK`] words, or an error for a higher rank.
pub(crate) fn padded(v: impl IntoIterator<Item = u32>, rank: usize) -> Result<Vec<u32>, KernelError> {
    if rank > MAX_RANK {
        return Err(KernelError::unsupported(format!("rank {rank} on the GPU (at most {MAX_RANK})")));
    }
    let mut out: Vec<u32> = v.into_iter().collect();
    out.resize(MAX_RANK, 0);
    Ok(out)
}

/// Words of a list of sizes, refusing any over 32 bits.
pub(crate) fn words(v: &[usize]) -> Result<Vec<u32>, KernelError> {
    v.iter()
        .map(|&x| u32::try_from(x).map_err(|_| KernelError::invalid(format!("{x} exceeds 32-bit GPU indexing"))))
        .collect()
}

/// Row-major element strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::ALL;
    use crate::gpu::Gpu;

    #[test]
    fn every_kernel_compiles_on_this_device() {
        let gpu = match Gpu::open() {
            Ok(g) => g,
            Err(e) if std::env::var("KILN_REQUIRE_GPU").as_deref() == Ok("1") => panic!("{e}"),
            Err(e) => return eprintln!("skipped: {e}"),
        };
        for shader in ALL {
            gpu.pipeline(shader).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
