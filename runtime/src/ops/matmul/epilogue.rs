//! What the stored-weight products (`kiln::MatMulPacked` and the quantized and 16-bit products)
//! add to each finished sum: a bias, one value per output column (input 2), and a residual, one
//! value per output (input 3), both optional: `y = A · W + b + r`. The compiler folds a linear's
//! bias `Add` and the residual `Add` after it into the product, so decode adds them to outputs
//! still in cache instead of running separate steps over them. Each is added to a finished sum in
//! the graph's order, as the separate `Add`s did, so the fused product gives the same bits.

use crate::error::KernelError;
use crate::kernel::ShapeInput;
use crate::view::TensorRef;
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Index of the bias among the product's inputs.
pub const BIAS: usize = 2;
/// Index of the residual among the product's inputs.
pub const RESIDUAL: usize = 3;
/// Outputs from which the epilogue of many rows is split across threads.
const PAR_OUTPUTS: usize = 1 << 15;

/// Checks the bias and residual, when the node has them, at inference. The bias is f32 values
/// whose shape is `n` behind any number of unit dims, so it broadcasts as an `Add` over the
/// product would; the residual is f32 ending in `n` (its element count, one per output, is
/// checked at run time, when the rows are known).
pub fn infer(inputs: &[Option<ShapeInput>], n: &Dim) -> Result<(), KernelError> {
    let matches = |d: &Dim| n.known().is_none() || d.known().is_none() || d == n;
    if let Some(Some(b)) = inputs.get(BIAS) {
        let per_column = match b.shape.split_last() {
            Some((last, lead)) => lead.iter().all(|d| d.known() == Some(1)) && matches(last),
            None => false,
        };
        if b.dtype != DType::F32 || !per_column {
            return Err(KernelError::input(
                BIAS,
                format!("bias {} {:?} is not one f32 value per output column ({n})", b.dtype, b.shape),
            ));
        }
    }
    if let Some(Some(r)) = inputs.get(RESIDUAL) {
        if r.dtype != DType::F32 || !r.shape.last().is_some_and(matches) {
            return Err(KernelError::input(
                RESIDUAL,
                format!("residual {} {:?} does not end in the product's {n} columns of f32", r.dtype, r.shape),
            ));
        }
    }
    Ok(())
}

/// A product's bias and residual, checked against its `m` rows of `n` outputs.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    n: usize,
}

impl<'a> Epilogue<'a> {
    /// Reads inputs [`BIAS`] and [`RESIDUAL`].
    pub fn new(inputs: &[Option<TensorRef<'a>>], m: usize, n: usize) -> Result<Self, KernelError> {
        let read = |index: usize, what: &str, len: usize| -> Result<Option<&'a [f32]>, KernelError> {
            let Some(Some(t)) = inputs.get(index) else { return Ok(None) };
            let values =
                t.typed::<f32>().map_err(|_| KernelError::input(index, format!("the {what} is {}", t.dtype)))?;
            if values.len() != len || t.shape.last() != Some(&n) {
                return Err(KernelError::input(
                    index,
                    format!("{what} {:?} does not hold {len} values, rows of the product's {n} columns", t.shape),
                ));
            }
            Ok(Some(values))
        };
        Ok(Epilogue { bias: read(BIAS, "bias", n)?, residual: read(RESIDUAL, "residual", m * n)?, n })
    }

    /// Adds the epilogue to outputs `first..first + y.len()` of row `row`: the columns a decode
    /// task wrote.
    pub fn apply(&self, row: usize, first: usize, y: &mut [f32]) {
        if let Some(b) = self.bias {
            for (v, b) in y.iter_mut().zip(&b[first..]) {
                *v += b;
            }
        }
        if let Some(r) = self.residual {
            for (v, r) in y.iter_mut().zip(&r[row * self.n + first..]) {
                *v += r;
            }
        }
    }

    /// Adds the epilogue to every row of `y`, across threads when there are many outputs.
    pub fn apply_rows(&self, y: &mut [f32]) {
        if (self.bias.is_none() && self.residual.is_none()) || self.n == 0 {
            return;
        }
        let rows = PAR_OUTPUTS.div_ceil(self.n);
        let chunk = |(c, ys): (usize, &mut [f32])| {
            for (i, yr) in ys.chunks_exact_mut(self.n).enumerate() {
                self.apply(c * rows + i, 0, yr);
            }
        };
        if y.len() < PAR_OUTPUTS || rayon::current_num_threads() == 1 {
            chunk((0, y));
        } else {
            y.par_chunks_mut(rows * self.n).enumerate().for_each(chunk);
        }
    }
}

/// `y` plus the bias on every row and then the residual, one add at a time: tests' references.
#[cfg(test)]
pub(crate) fn reference(y: &[f32], bias: Option<&[f32]>, residual: Option<&[f32]>) -> Vec<f32> {
    let n = bias.map_or(y.len(), <[f32]>::len);
    let mut out = y.to_vec();
    for (i, v) in out.iter_mut().enumerate() {
        if let Some(b) = bias {
            *v += b[i % n];
        }
        if let Some(r) = residual {
            *v += r[i];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_input(shape: &[Dim]) -> ShapeInput<'_> {
        ShapeInput { dtype: DType::F32, shape, value: None, data: None }
    }

    fn tensor<'a>(shape: &'a [usize], v: &'a [f32]) -> Option<TensorRef<'a>> {
        Some(TensorRef { dtype: DType::F32, shape, data: bytemuck::cast_slice(v) })
    }

    #[test]
    fn every_row_gets_the_bias_and_its_residual_on_one_thread_or_many() {
        let n = 96;
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 7.0).collect();
        for m in [1, 3, 1000] {
            let y: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32).collect();
            let residual: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.1).collect();
            let (b_shape, r_shape) = ([n], [m, n]);
            for (b, r) in [(true, false), (false, true), (true, true)] {
                let inputs =
                    [None, None, tensor(&b_shape, &bias).filter(|_| b), tensor(&r_shape, &residual).filter(|_| r)];
                let mut got = y.clone();
                Epilogue::new(&inputs, m, n).unwrap().apply_rows(&mut got);
                let want = reference(&y, b.then_some(&bias[..]), r.then_some(&residual[..]));
                assert_eq!(got, want, "m = {m}, bias {b}, residual {r}");
            }
        }
    }

    #[test]
    fn a_bias_is_one_value_per_column_and_a_residual_one_per_output() {
        let n = Dim::Known(8);
        let ok = [Dim::Known(8)];
        let unit_lead = [Dim::Known(1), Dim::Known(8)];
        let rows = [Dim::Known(2), Dim::Known(8)];
        let wrong = [Dim::Known(4)];
        assert!(infer(&[None, None, Some(shape_input(&ok))], &n).is_ok());
        assert!(infer(&[None, None, Some(shape_input(&unit_lead)), Some(shape_input(&rows))], &n).is_ok());
        assert!(infer(&[None, None, None, Some(shape_input(&rows))], &n).is_ok());
        for bad in [&wrong[..], &rows[..], &[]] {
            let err = infer(&[None, None, Some(shape_input(bad))], &n).unwrap_err();
            assert!(err.to_string().contains("bias"), "{err}");
        }
        let err = infer(&[None, None, None, Some(shape_input(&wrong))], &n).unwrap_err();
        assert!(err.to_string().contains("residual"), "{err}");
        // At run time the residual must hold every output.
        let (shape, values) = ([1, 8], [0f32; 8]);
        let err = Epilogue::new(&[None, None, None, tensor(&shape, &values)], 2, 8).err().unwrap();
        assert!(err.to_string().contains("residual"), "{err}");
    }
}
