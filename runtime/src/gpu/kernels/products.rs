//! MatMul (with numpy batch broadcasting), `kiln::MatMulTransB` and Gemm on the tiled kernel.

use super::{rows_grid, words, Arg, Call, Dispatch, MATMUL, MATVEC};
use crate::error::KernelError;
use crate::kernel::Attrs;
use crate::ops::broadcast::broadcast_strides;

pub(crate) enum Product {
    /// B is stored `[.., N, K]` when `trans_b`; with a `b_pitch`, B is a KV cache state whose
    /// matrices lie `b_pitch` stored rows apart.
    MatMul {
        trans_b: bool,
        b_pitch: usize,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
}

impl Product {
    pub fn matmul(trans_b: bool, b_pitch: usize) -> Product {
        Product::MatMul { trans_b, b_pitch }
    }

    pub fn gemm(attrs: Attrs) -> Result<Product, KernelError> {
        Ok(Product::Gemm {
            alpha: attrs.float("alpha", 1.0)?,
            beta: attrs.float("beta", 1.0)?,
            trans_a: attrs.int("transA", 0)? != 0,
            trans_b: attrs.int("transB", 0)? != 0,
        })
    }

    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        match *self {
            Product::MatMul { trans_b, b_pitch } => matmul(call, trans_b, b_pitch),
            Product::Gemm { alpha, beta, trans_a, trans_b } => gemm(call, alpha, beta, trans_a, trans_b),
        }
    }
}

fn matmul(call: &Call, trans_b: bool, b_pitch: usize) -> Result<Vec<Dispatch>, KernelError> {
    let (a, b) = (call.input(0)?.to_vec(), call.input(1)?.to_vec());
    let a = if a.len() == 1 { vec![1, a[0]] } else { a };
    let b = match (b.len(), trans_b) {
        (1, false) => vec![b[0], 1],
        (1, true) => vec![1, b[0]],
        _ => b,
    };
    if a.len() < 2 || b.len() < 2 {
        return Err(KernelError::invalid("MatMul operands of rank 0"));
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (kb, n) = match trans_b {
        false => (b[b.len() - 2], b[b.len() - 1]),
        true => (b[b.len() - 1], b[b.len() - 2]),
    };
    if k != kb {
        return Err(KernelError::invalid(format!("inner dims {k} and {kb} differ")));
    }
    let (a_batch, b_batch) = (&a[..a.len() - 2], &b[..b.len() - 2]);
    let rank = a_batch.len().max(b_batch.len());
    let mut out_batch = vec![1; rank];
    for (i, d) in out_batch.iter_mut().enumerate() {
        let pick = |s: &[usize]| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
        *d = pick(a_batch).max(pick(b_batch));
    }
    let a_strides = broadcast_strides(a_batch, &out_batch)?;
    let b_strides = broadcast_strides(b_batch, &out_batch)?;
    let batches: usize = out_batch.iter().product();
    if call.output(0)?.iter().product::<usize>() != batches * m * n {
        return Err(KernelError::invalid(format!("output {:?} is not {batches} x {m} x {n}", call.output(0)?)));
    }
    let b_rows = b[b.len() - 2];
    if b_pitch != 0 && b_pitch < b_rows {
        return Err(KernelError::invalid(format!("B has {b_rows} rows, more than its pitch {b_pitch}")));
    }
    let b_matrix = if b_pitch != 0 { b_pitch } else { b_rows } * b[b.len() - 1];
    let mut offsets = Vec::with_capacity(2 * batches);
    for i in 0..batches {
        let (mut rem, mut ao, mut bo) = (i, 0, 0);
        for d in (0..rank).rev() {
            let c = rem % out_batch[d];
            rem /= out_batch[d];
            ao += c * a_strides[d];
            bo += c * b_strides[d];
        }
        offsets.push(ao * m * k);
        offsets.push(bo * b_matrix);
    }
    let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
    launch(Shape { m, n, k, batches, a: (k, 1), b: (b_rs, b_cs) }, 1.0, None, &offsets)
}

fn gemm(call: &Call, alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> Result<Vec<Dispatch>, KernelError> {
    let (a, b) = (call.input(0)?, call.input(1)?);
    if a.len() != 2 || b.len() != 2 {
        return Err(KernelError::invalid("Gemm takes 2-D operands"));
    }
    let (m, k) = if trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
    let n = if trans_b { b[0] } else { b[1] };
    let a_strides = if trans_a { (1, m) } else { (k, 1) };
    let b_strides = if trans_b { (1, k) } else { (n, 1) };
    let c = match call.inputs.get(2).and_then(|s| s.as_deref()) {
        Some(c) => {
            let s = broadcast_strides(c, &[m, n])?;
            Some((beta, s[0], s[1]))
        }
        None => None,
    };
    launch(Shape { m, n, k, batches: 1, a: a_strides, b: b_strides }, alpha, c, &[0, 0])
}

/// Sizes and (row, column) element strides of one product.
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    batches: usize,
    a: (usize, usize),
    b: (usize, usize),
}

fn launch(
    s: Shape,
    alpha: f32,
    c: Option<(f32, usize, usize)>,
    offsets: &[usize],
) -> Result<Vec<Dispatch>, KernelError> {
    if s.m * s.n * s.batches == 0 {
        return Ok(Vec::new());
    }
    if s.batches > 65535 {
        return Err(KernelError::unsupported(format!("{} product batches on the GPU (at most 65535)", s.batches)));
    }
    let (beta, c_rs, c_cs) = c.unwrap_or((0.0, 0, 0));
    let mut params = words(&[s.m, s.n, s.k, s.batches, s.a.0, s.a.1, s.b.0, s.b.1])?;
    params.extend([alpha.to_bits(), beta.to_bits(), u32::from(c.is_some())]);
    params.extend(words(&[c_rs, c_cs, 0, 0, 0])?);
    params.extend(words(offsets)?);
    // Without C, A stands in for its binding (read by no invocation).
    let c_arg = if c.is_some() { Arg::In(2) } else { Arg::In(0) };
    let args = vec![Arg::In(0), Arg::In(1), c_arg, Arg::Out(0)];
    if s.m == 1 {
        let [x, y, _] = rows_grid(words(&[s.n.div_ceil(256)])?[0]);
        return Ok(vec![Dispatch { shader: &MATVEC, args, params, groups: [x, y, s.batches as u32] }]);
    }
    Ok(vec![Dispatch {
        shader: &MATMUL,
        args,
        params,
        groups: [words(&[s.n.div_ceil(16)])?[0], words(&[s.m.div_ceil(16)])?[0], s.batches as u32],
    }])
}
