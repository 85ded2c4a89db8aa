//! Matrix products: MatMul (numpy semantics: 1-D operands promoted, batch dims broadcast) and
//! Gemm (2-D, optional transposes, `alpha * A'B' + beta * C` with C broadcast to [M, N]).

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
pub mod epilogue;
mod f16_params;
pub(crate) mod gemm;
pub mod half16;
mod int_gemm;
#[cfg(target_arch = "x86_64")]
mod kept;
mod lanes;
pub mod packed;
pub mod q4;
pub mod q8;
pub mod quantized;
pub mod quantized_a;

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::broadcast::{broadcast_shapes, broadcast_strides, for_each_offsets};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::ops::reduce::IntEl;
use crate::view::{TensorMut, TensorRef};
use gemm::{gemm, GAcc, Mat};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Op types this family has kernels for.
pub const OPS: &[&str] = &["Gemm", "MatMul"];

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    match spec.op {
        "MatMul" => Some(Ok(Box::new(MatMul { trans_b: false, b_pitch: 0 }))),
        "Gemm" => Some(GemmOp::new(spec).map(|k| Box::new(k) as Box<dyn Kernel>)),
        _ => None,
    }
}

/// Kernels of the `kiln` domain this family owns: `MatMulTransB` and `MatMul`, both with an
/// optional `b_pitch` (B is a KV cache state read in place).
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let trans_b = match spec.op {
        "MatMulTransB" => true,
        "MatMul" => false,
        _ => {
            return quantized::build_kiln::<q8::Q8>(spec)
                .or_else(|| quantized::build_kiln::<q4::Q4>(spec))
                .or_else(|| quantized::build_kiln::<half16::F16>(spec))
                .or_else(|| quantized::build_kiln::<half16::BF16>(spec))
                .or_else(|| packed::build_kiln(spec))
        }
    };
    let pitch = |p: i64| usize::try_from(p).map_err(|_| KernelError::attr("b_pitch", format!("{p} is negative")));
    Some(
        spec.attrs
            .int("b_pitch", 0)
            .and_then(pitch)
            .map(|b_pitch| Box::new(MatMul { trans_b, b_pitch }) as Box<dyn Kernel>),
    )
}

fn check_dtype(dt: DType, index: usize) -> Result<(), KernelError> {
    if dt.is_float() || matches!(dt, DType::I32 | DType::I64 | DType::U32 | DType::U64) {
        Ok(())
    } else {
        Err(KernelError::input(index, format!("{dt} is not supported")))
    }
}

/// Two dims that must agree: an error when both are known and differ.
pub(crate) fn same(a: &Dim, b: &Dim, what: &str) -> Result<(), KernelError> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => Err(KernelError::invalid(format!("{what} differ: {x} vs {y}"))),
        _ => Ok(()),
    }
}

/// Numpy matmul; with `trans_b`, B (rank >= 2) is read with its last two axes swapped
/// (`kiln::MatMulTransB`, which the compiler makes of `MatMul(A, Transpose(B))`).
struct MatMul {
    trans_b: bool,
    /// When non-zero, B's data is a KV cache state: each B matrix is stored in `b_pitch` rows
    /// (its second-to-last axis as stored), of which the shape's count are filled.
    b_pitch: usize,
}

/// B's shape as the product sees it.
fn logical_b<T: Clone>(shape: &[T], trans_b: bool) -> Result<Vec<T>, KernelError> {
    let mut s = shape.to_vec();
    if trans_b {
        if s.len() < 2 {
            return Err(KernelError::input(1, "a transposed B needs at least two dims"));
        }
        let r = s.len();
        s.swap(r - 1, r - 2);
    }
    Ok(s)
}

impl Kernel for MatMul {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let a = required(inputs, 0)?;
        let b = required(inputs, 1)?;
        check_dtype(a.dtype, 0)?;
        if b.dtype != a.dtype {
            return Err(KernelError::input(1, format!("is {}, A is {}", b.dtype, a.dtype)));
        }
        let b_shape = logical_b(b.shape, self.trans_b)?;
        let (ra, rb) = (a.shape.len(), b_shape.len());
        if ra == 0 || rb == 0 {
            return Err(KernelError::invalid("MatMul operands need at least one dim"));
        }
        let ka = &a.shape[ra - 1];
        let kb = &b_shape[if rb == 1 { 0 } else { rb - 2 }];
        same(ka, kb, "inner dims")?;
        let ab = &a.shape[..ra.saturating_sub(2)];
        let bb = &b_shape[..rb.saturating_sub(2)];
        let mut shape = broadcast_shapes(&[ab, bb])?;
        if ra >= 2 {
            shape.push(a.shape[ra - 2].clone());
        }
        if rb >= 2 {
            shape.push(b_shape[rb - 1].clone());
        }
        Ok(vec![OutputInfo::new(a.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let a = required(inputs, 0)?;
        let b = required(inputs, 1)?;
        if a.dtype != b.dtype {
            return Err(KernelError::invalid("MatMul operands differ in dtype"));
        }
        let b_shape = logical_b(b.shape, self.trans_b)?;
        let (ra, rb) = (a.shape.len(), b_shape.len());
        if ra == 0 || rb == 0 {
            return Err(KernelError::invalid("MatMul operands need at least one dim"));
        }
        let (m, k) = if ra == 1 { (1, a.shape[0]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
        let (kb, n) = if rb == 1 { (b_shape[0], 1) } else { (b_shape[rb - 2], b_shape[rb - 1]) };
        if k != kb {
            return Err(KernelError::invalid(format!("inner dims differ: {k} vs {kb}")));
        }
        let ab = &a.shape[..ra.saturating_sub(2)];
        let bb = &b_shape[..rb.saturating_sub(2)];
        let rank = ab.len().max(bb.len());
        let batch: Vec<usize> = (0..rank)
            .map(|i| {
                let da = (i + ab.len()).checked_sub(rank).map_or(1, |j| ab[j]);
                let db = (i + bb.len()).checked_sub(rank).map_or(1, |j| bb[j]);
                if da == 1 {
                    db
                } else {
                    da
                }
            })
            .collect();
        let sa = broadcast_strides(ab, &batch)?;
        let sb = broadcast_strides(bb, &batch)?;
        let nb: usize = batch.iter().product();
        let mb = self.b_matrix_stride(b, bb)?;
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != a.dtype || out.numel() != nb * m * n || out.data.len() != out.numel() * a.dtype.size() {
            return Err(KernelError::invalid("output does not match the product"));
        }
        let p = Batched { m, n, k, mb, batch: &batch, sa: &sa, sb: &sb, trans_b: self.trans_b };
        crate::with_float!(a.dtype, T => p.run_float(a.typed::<T>()?, b.typed::<T>()?, out.typed::<T>()?), _ => {
            crate::with_int!(a.dtype, T => p.run_int::<T>(bytemuck::cast_slice(a.data), bytemuck::cast_slice(b.data),
                bytemuck::cast_slice_mut(out.data)),
                _ => return Err(KernelError::unsupported(format!("MatMul on {}", a.dtype))))
        });
        Ok(())
    }
}

impl MatMul {
    /// Elements from one B matrix to the next: `k * n`, or the pitch's rows when B is read in
    /// place from a state, after checking that every matrix the batch reads lies in B's data.
    fn b_matrix_stride(&self, b: TensorRef, batch: &[usize]) -> Result<usize, KernelError> {
        let es = b.dtype.size().max(1);
        let stored = b.shape;
        let dense: usize = stored.iter().rev().take(2).product();
        if self.b_pitch == 0 {
            return Ok(dense);
        }
        let r = stored.len();
        if r < 2 || stored[r - 2] > self.b_pitch {
            return Err(KernelError::input(
                1,
                format!("shape {stored:?} does not fit a pitch of {} rows", self.b_pitch),
            ));
        }
        let stride = self.b_pitch * stored[r - 1];
        let matrices: usize = batch.iter().product();
        let needed = matrices.saturating_sub(1) * stride + dense;
        if matrices > 0 && b.data.len() / es < needed {
            return Err(KernelError::input(
                1,
                format!("{} bytes hold fewer than the {needed} elements of {matrices} pitched matrices", b.data.len()),
            ));
        }
        Ok(stride)
    }
}

/// A batch of products with broadcast batch strides (in matrices).
struct Batched<'a> {
    m: usize,
    n: usize,
    k: usize,
    /// Elements from one B matrix to the next.
    mb: usize,
    batch: &'a [usize],
    sa: &'a [usize],
    sb: &'a [usize],
    /// B matrices are stored n × k (read transposed).
    trans_b: bool,
}

impl Batched<'_> {
    /// (A offset, B offset) of every product, in elements.
    /// One B matrix starting at `data` as the product reads it (k × n).
    fn b_mat<'b, T>(&self, data: &'b [T]) -> Mat<'b, T> {
        match self.trans_b {
            true => Mat { data, rs: 1, cs: self.k },
            false => Mat { data, rs: self.n, cs: 1 },
        }
    }

    fn offsets(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::with_capacity(self.batch.iter().product());
        let (ma, mb) = (self.m * self.k, self.mb);
        for_each_offsets(self.batch, [self.sa, self.sb], |_, [x, y]| v.push((x * ma, y * mb)));
        v
    }

    fn run_float<T: Float>(&self, a: &[T], b: &[T], c: &mut [T])
    where
        T::Acc: GAcc,
    {
        let (m, n, k) = (self.m, self.n, self.k);
        let nb: usize = self.batch.iter().product();
        if nb == 0 || m == 0 || n == 0 {
            return;
        }
        let a_contig = self.sa.iter().zip(self.batch).all(|(&s, &d)| s != 0 || d == 1)
            && self
                .sa
                .iter()
                .zip(self.batch)
                .rev()
                .scan(1, |acc, (&s, &d)| {
                    let ok = d == 1 || s == *acc;
                    *acc *= d;
                    Some(ok)
                })
                .all(|x| x);
        if nb > 1 && self.sb.iter().all(|&s| s == 0) && a_contig {
            // One shared B (a linear layer): fold the batch into the rows of one product.
            gemm(nb * m, n, k, 1.0, Mat { data: a, rs: k, cs: 1 }, self.b_mat(b), c, false, true);
            return;
        }
        let offs = self.offsets();
        let one = |(oa, ob): (usize, usize), cm: &mut [T], par: bool| {
            let am = Mat { data: &a[oa..], rs: k, cs: 1 };
            gemm(m, n, k, 1.0, am, self.b_mat(&b[ob..]), cm, false, par);
        };
        if nb > 1 && m * n * k < (1 << 20) {
            c.par_chunks_mut(m * n).zip(offs.par_iter()).for_each(|(cm, &o)| one(o, cm, false));
        } else {
            for (cm, &o) in c.chunks_mut(m * n).zip(&offs) {
                one(o, cm, true);
            }
        }
    }

    fn run_int<T: IntEl>(&self, a: &[T], b: &[T], c: &mut [T]) {
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 {
            return;
        }
        let offs = self.offsets();
        let mut acc = vec![0i128; n];
        for (cm, &(oa, ob)) in c.chunks_mut(m * n).zip(&offs) {
            for (i, crow) in cm.chunks_mut(n).enumerate() {
                acc.iter_mut().for_each(|v| *v = 0);
                for kk in 0..k {
                    let av = a[oa + i * k + kk].to_i128();
                    let bm = self.b_mat(&b[ob..]);
                    for (j, s) in acc.iter_mut().enumerate() {
                        *s = s.wrapping_add(av.wrapping_mul(bm.data[kk * bm.rs + j * bm.cs].to_i128()));
                    }
                }
                for (d, s) in crow.iter_mut().zip(&acc) {
                    *d = T::from_i128(*s);
                }
            }
        }
    }
}

/// General matrix multiply.
struct GemmOp {
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
}

impl GemmOp {
    fn new(spec: &OpSpec) -> Result<GemmOp, KernelError> {
        Ok(GemmOp {
            trans_a: spec.attrs.int("transA", 0)? != 0,
            trans_b: spec.attrs.int("transB", 0)? != 0,
            alpha: spec.attrs.float("alpha", 1.0)?,
            beta: spec.attrs.float("beta", 1.0)?,
        })
    }

    /// (M, K) of A and (K, N) of B after the transposes.
    fn dims<D: Clone>(&self, a: &[D], b: &[D]) -> ((D, D), (D, D)) {
        let (a0, a1) = (a[0].clone(), a[1].clone());
        let (b0, b1) = (b[0].clone(), b[1].clone());
        (if self.trans_a { (a1, a0) } else { (a0, a1) }, if self.trans_b { (b1, b0) } else { (b0, b1) })
    }
}

impl Kernel for GemmOp {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let a = required(inputs, 0)?;
        let b = required(inputs, 1)?;
        check_dtype(a.dtype, 0)?;
        if b.dtype != a.dtype {
            return Err(KernelError::input(1, format!("is {}, A is {}", b.dtype, a.dtype)));
        }
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(KernelError::invalid("Gemm operands must be 2-D"));
        }
        let ((m, ka), (kb, n)) = self.dims(a.shape, b.shape);
        same(&ka, &kb, "inner dims")?;
        let out = vec![m, n];
        if let Some(c) = inputs.get(2).copied().flatten() {
            if c.dtype != a.dtype {
                return Err(KernelError::input(2, format!("is {}, A is {}", c.dtype, a.dtype)));
            }
            let bc = broadcast_shapes(&[&out, c.shape])?;
            if c.shape.len() > 2 {
                return Err(KernelError::input(2, "C has more than 2 dims"));
            }
            for (x, y) in bc.iter().zip(&out) {
                same(x, y, "C broadcast and [M, N]")?;
            }
        }
        Ok(vec![OutputInfo::new(a.dtype, out)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let a = required(inputs, 0)?;
        let b = required(inputs, 1)?;
        let c = inputs.get(2).copied().flatten();
        if a.shape.len() != 2 || b.shape.len() != 2 || a.dtype != b.dtype {
            return Err(KernelError::invalid("Gemm operands must be 2-D of one dtype"));
        }
        let ((m, k), (kb, n)) = self.dims(a.shape, b.shape);
        if k != kb {
            return Err(KernelError::invalid(format!("inner dims differ: {k} vs {kb}")));
        }
        let cst = match c {
            Some(c) if self.beta != 0.0 => {
                if c.dtype != a.dtype {
                    return Err(KernelError::invalid("C dtype differs"));
                }
                Some((c, broadcast_strides(c.shape, &[m, n])?))
            }
            _ => None,
        };
        let y = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if y.dtype != a.dtype || y.numel() != m * n || y.data.len() != m * n * a.dtype.size() {
            return Err(KernelError::invalid("output does not match [M, N]"));
        }
        // Strides of A[i, k] and B[k, j] in storage.
        let (ars, acs) = if self.trans_a { (1, m) } else { (k, 1) };
        let (brs, bcs) = if self.trans_b { (1, k) } else { (n, 1) };
        let (alpha, beta) = (self.alpha as f64, self.beta as f64);
        crate::with_float!(a.dtype, T => {
            let ys = y.typed::<T>()?;
            if let Some((c, st)) = &cst {
                let cs = c.typed::<T>()?;
                let bt = <T as Float>::Acc::from_f64(beta);
                for_each_offsets(&[m, n], [st], |i, [o]| ys[i] = T::from_acc(bt * cs[o].to_acc()));
            }
            let am = Mat { data: a.typed::<T>()?, rs: ars, cs: acs };
            let bm = Mat { data: b.typed::<T>()?, rs: brs, cs: bcs };
            gemm(m, n, k, alpha, am, bm, ys, cst.is_some(), true);
        }, _ => {
            crate::with_int!(a.dtype, T => {
                let (ad, bd): (&[T], &[T]) = (bytemuck::cast_slice(a.data), bytemuck::cast_slice(b.data));
                let cd: Option<(&[T], &Vec<usize>)> = cst.as_ref().map(|(c, st)| (bytemuck::cast_slice(c.data), st));
                let ys: &mut [T] = bytemuck::cast_slice_mut(y.data);
                let cidx: Vec<usize> = match cd {
                    Some((_, st)) => { let mut v = Vec::new(); for_each_offsets(&[m, n], [st], |_, [o]| v.push(o)); v }
                    None => Vec::new(),
                };
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0i128;
                        for kk in 0..k {
                            s = s.wrapping_add(ad[i * ars + kk * acs].to_i128().wrapping_mul(bd[kk * brs + j * bcs].to_i128()));
                        }
                        let mut v = if alpha == 1.0 { s } else { (alpha * s as f64) as i128 };
                        if let Some((cv, _)) = cd {
                            let c = cv[cidx[i * n + j]].to_i128();
                            v = v.wrapping_add(if beta == 1.0 { c } else { (beta * c as f64) as i128 });
                        }
                        ys[i * n + j] = T::from_i128(v);
                    }
                }
            }, _ => return Err(KernelError::unsupported(format!("Gemm on {}", a.dtype))))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::reduce::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    fn mm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                for kk in 0..k {
                    c[i * n + j] += a[i * k + kk] * b[kk * n + j];
                }
            }
        }
        c
    }

    fn seq(n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|i| ((i * 7 % 11) as f32 - 5.) * s).collect()
    }

    #[test]
    fn matmul_trans_b_reads_the_weight_transposed() {
        let run = |a: &Tensor, w: &Tensor| {
            try_run_in(crate::ops::KILN_DOMAIN, "MatMulTransB", 1, &[], vec![Some(a.clone()), Some(w.clone())])
        };
        // One row (decode: the dot-product path), a few (small), many (the blocked path).
        for (batch, m, kd, n) in [(1, 1, 70, 300), (2, 5, 33, 17), (1, 80, 64, 96)] {
            let a = seq(batch * m * kd, 0.25);
            let w = seq(n * kd, 0.5);
            let wt: Vec<f32> = (0..kd * n).map(|i| w[(i % n) * kd + i / n]).collect();
            let expect: Vec<f32> =
                (0..batch).flat_map(|b| mm(&a[b * m * kd..(b + 1) * m * kd], &wt, m, kd, n)).collect();
            let y = run(&Tensor::from_vec(&[batch, m, kd], a), &Tensor::from_vec(&[n, kd], w)).unwrap().remove(0);
            assert_eq!(y.shape, vec![batch, m, n]);
            assert_close(&f32s(&y), &expect, 1e-3);
        }
        // A batch of B matrices (attention's Q · Kᵀ), broadcast over A's leading axis.
        let (m, kd, n) = (3, 8, 5);
        let a = seq(2 * 2 * m * kd, 0.25);
        let w = seq(2 * n * kd, 0.5);
        let expect: Vec<f32> = (0..4)
            .flat_map(|i| {
                let wb = &w[(i % 2) * n * kd..(i % 2 + 1) * n * kd];
                let wt: Vec<f32> = (0..kd * n).map(|j| wb[(j % n) * kd + j / n]).collect();
                mm(&a[i * m * kd..(i + 1) * m * kd], &wt, m, kd, n)
            })
            .collect();
        let y = run(&Tensor::from_vec(&[2, 2, m, kd], a), &Tensor::from_vec(&[2, n, kd], w)).unwrap().remove(0);
        assert_eq!(y.shape, vec![2, 2, m, n]);
        assert_close(&f32s(&y), &expect, 1e-3);
        let bad = Tensor::from_vec(&[4, 3], vec![0f32; 12]);
        assert!(run(&Tensor::from_vec(&[1, 5], vec![0f32; 5]), &bad).is_err());
    }

    #[test]
    fn a_pitched_b_reads_only_the_filled_rows_of_each_matrix() {
        use crate::kernel::{Attrs, OpSpec};
        use crate::view::{TensorMut, TensorRef};
        use kiln_formats::program::Attribute;
        // Two heads of a cache with room for 5 positions of 3, of which 4 are filled; the
        // unfilled row holds garbage the product must not see.
        let (heads, cap, filled, d, m) = (2, 5, 4, 3, 2);
        let mut state = vec![1e6f32; heads * cap * d];
        let dense = seq(heads * filled * d, 0.5);
        for h in 0..heads {
            state[h * cap * d..(h * cap + filled) * d].copy_from_slice(&dense[h * filled * d..(h + 1) * filled * d]);
        }
        let q = seq(heads * m * d, 0.25);
        for (op, b_shape, out_n) in
            [("MatMulTransB", [1, heads, filled, d], filled), ("MatMul", [1, heads, filled, d], d)]
        {
            let k_dim = if op == "MatMul" { filled } else { d };
            let a = seq(heads * m * k_dim, 0.25);
            let a = if op == "MatMul" { a } else { q.clone() };
            let attrs = [Attribute::int("b_pitch", cap as i64)];
            let spec = OpSpec { op, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&attrs) };
            let kernel = super::build_kiln(&spec).unwrap().unwrap();
            let a_shape = [1, heads, m, k_dim];
            let out_shape = [1, heads, m, out_n];
            let mut out = vec![0f32; heads * m * out_n];
            let run = |b: &[f32], pitched: bool, out: &mut [f32]| {
                let k = if pitched {
                    &kernel
                } else {
                    &super::build_kiln(&OpSpec { attrs: Attrs(&[]), ..spec }).unwrap().unwrap()
                };
                k.run(
                    &[
                        Some(TensorRef { dtype: DType::F32, shape: &a_shape, data: bytemuck::cast_slice(&a) }),
                        Some(TensorRef { dtype: DType::F32, shape: &b_shape, data: bytemuck::cast_slice(b) }),
                    ],
                    &mut [TensorMut { dtype: DType::F32, shape: &out_shape, data: bytemuck::cast_slice_mut(out) }],
                )
            };
            run(&state, true, &mut out).unwrap();
            let mut expect = vec![0f32; out.len()];
            run(&dense, false, &mut expect).unwrap();
            assert_eq!(out, expect, "{op}");
            // A buffer shorter than the pitch says is refused, not read past.
            assert!(run(&state[..state.len() - d * 2], true, &mut out).is_err(), "{op}");
        }
    }

    #[test]
    fn matmul_2d_1d_and_batched() {
        let a = seq(6, 1.);
        let b = seq(12, 0.5);
        let y = run1(
            "MatMul",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[2, 3], a.clone())), Some(Tensor::from_vec(&[3, 4], b.clone()))],
        );
        assert_eq!(y.shape, vec![2, 4]);
        assert_close(&f32s(&y), &mm(&a, &b, 2, 3, 4), 1e-6);
        // 1-D on either side.
        let v = vec![1f32, 2., 3.];
        let y = run1(
            "MatMul",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[3], v.clone())), Some(Tensor::from_vec(&[3, 4], b.clone()))],
        );
        assert_eq!(y.shape, vec![4]);
        assert_close(&f32s(&y), &mm(&v, &b, 1, 3, 4), 1e-6);
        let y = run1(
            "MatMul",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[2, 3], a.clone())), Some(Tensor::from_vec(&[3], v.clone()))],
        );
        assert_eq!(y.shape, vec![2]);
        assert_close(&f32s(&y), &mm(&a, &v, 2, 3, 1), 1e-6);
        let y = run1(
            "MatMul",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[3], v.clone())), Some(Tensor::from_vec(&[3], v.clone()))],
        );
        assert_eq!((y.shape.clone(), f32s(&y)), (vec![], vec![14.]));
        // Broadcast batches: [2, 1, 2, 3] x [3, 3, 4] -> [2, 3, 2, 4].
        let a4 = seq(12, 0.3);
        let b3 = seq(36, 0.2);
        let y = run1(
            "MatMul",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[2, 1, 2, 3], a4.clone())), Some(Tensor::from_vec(&[3, 3, 4], b3.clone()))],
        );
        assert_eq!(y.shape, vec![2, 3, 2, 4]);
        let got = f32s(&y);
        for i in 0..2 {
            for j in 0..3 {
                let want = mm(&a4[i * 6..i * 6 + 6], &b3[j * 12..j * 12 + 12], 2, 3, 4);
                assert_close(&got[(i * 3 + j) * 8..(i * 3 + j) * 8 + 8], &want, 1e-5);
            }
        }
        // Shared B folds into one product.
        let y = run1(
            "MatMul",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[2, 2, 3], a4.clone())), Some(Tensor::from_vec(&[3, 4], b.clone()))],
        );
        assert_close(&f32s(&y), &mm(&a4, &b, 4, 3, 4), 1e-5);
    }

    #[test]
    fn matmul_ints_and_errors() {
        let a = Tensor::from_vec(&[2, 2], vec![1i64, 2, 3, 4]);
        let b = Tensor::from_vec(&[2, 2], vec![5i64, 6, 7, 8]);
        let y = run1("MatMul", 13, &[], vec![Some(a.clone()), Some(b)]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[19, 22, 43, 50]);
        let bad = Tensor::from_vec(&[3, 2], vec![1i64; 6]);
        assert!(try_run("MatMul", 13, &[], vec![Some(a), Some(bad)]).is_err());
        let s = [Dim::sym("b"), Dim::sym("s"), Dim::Known(64)];
        let w = [Dim::Known(64), Dim::Known(10)];
        let o =
            infer1("MatMul", 13, &[], &[Some((DType::F32, &s[..], None)), Some((DType::F32, &w[..], None))]).unwrap();
        assert_eq!(o[0].shape, vec![Dim::sym("b"), Dim::sym("s"), Dim::Known(10)]);
        let w = [Dim::Known(63), Dim::Known(10)];
        assert!(
            infer1("MatMul", 13, &[], &[Some((DType::F32, &s[..], None)), Some((DType::F32, &w[..], None))]).is_err()
        );
    }

    #[test]
    fn gemm_transposes_and_c() {
        let a = seq(6, 1.); // A^T stored as [3, 2]
        let b = seq(12, 0.5); // B^T stored as [4, 3]
        let at: Vec<f32> = (0..6).map(|i| a[(i % 3) * 2 + i / 3]).collect(); // [2, 3]
        let bt: Vec<f32> = (0..12).map(|i| b[(i % 4) * 3 + i / 4]).collect(); // [3, 4]
        let c = vec![1f32, 2., 3., 4.];
        let y = run1(
            "Gemm",
            13,
            &[int("transA", 1), int("transB", 1), float("alpha", 2.), float("beta", 0.5)],
            vec![
                Some(Tensor::from_vec(&[3, 2], a)),
                Some(Tensor::from_vec(&[4, 3], b)),
                Some(Tensor::from_vec(&[4], c.clone())),
            ],
        );
        let p = mm(&at, &bt, 2, 3, 4);
        let want: Vec<f32> = p.iter().enumerate().map(|(i, v)| 2. * v + 0.5 * c[i % 4]).collect();
        assert_close(&f32s(&y), &want, 1e-5);
        // Without C.
        let y = run1(
            "Gemm",
            13,
            &[],
            vec![Some(Tensor::from_vec(&[2, 3], at.clone())), Some(Tensor::from_vec(&[3, 4], bt.clone()))],
        );
        assert_close(&f32s(&y), &p, 1e-5);
        let yi = run1(
            "Gemm",
            13,
            &[],
            vec![
                Some(Tensor::from_vec(&[1, 2], vec![1i32, 2])),
                Some(Tensor::from_vec(&[2, 1], vec![3i32, 4])),
                Some(Tensor::from_vec(&[1], vec![10i32])),
            ],
        );
        assert_eq!(yi.as_slice::<i32>().unwrap(), &[21]);
        let m = [Dim::sym("m"), Dim::Known(3)];
        let w = [Dim::Known(3), Dim::Known(4)];
        let cbad = [Dim::Known(5)];
        assert!(infer1(
            "Gemm",
            13,
            &[],
            &[Some((DType::F32, &m[..], None)), Some((DType::F32, &w[..], None)), Some((DType::F32, &cbad[..], None))]
        )
        .is_err());
        let o = infer1("Gemm", 13, &[], &[Some((DType::F32, &m[..], None)), Some((DType::F32, &w[..], None))]).unwrap();
        assert_eq!(o[0].shape, vec![Dim::sym("m"), Dim::Known(4)]);
    }
}
