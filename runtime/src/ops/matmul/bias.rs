//! The optional bias of the stored-weight products (input 2 of `kiln::MatMulPacked` and of the
//! quantized and 16-bit products): `y = A · W + b`, one value of `b` per output column. The
//! compiler folds a linear's bias `Add` into its product, so decode adds it to outputs still in
//! cache instead of running a separate step over them. Each bias is added to a finished sum, as
//! the separate `Add` did, so the fused product gives the same bits.

use crate::error::KernelError;
use crate::kernel::ShapeInput;
use crate::view::TensorRef;
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Index of the bias among the product's inputs.
pub const INPUT: usize = 2;
/// Outputs from which adding the bias to many rows is split across threads.
const PAR_OUTPUTS: usize = 1 << 15;

/// Checks the bias, when the node has one, at inference: f32 values whose shape is `n` behind
/// any number of unit dims, so it broadcasts as an `Add` over the product would.
pub fn infer(inputs: &[Option<ShapeInput>], n: &Dim) -> Result<(), KernelError> {
    let Some(Some(b)) = inputs.get(INPUT) else { return Ok(()) };
    if b.dtype != DType::F32 {
        return Err(KernelError::input(INPUT, format!("the bias is {}, not f32", b.dtype)));
    }
    let fits = match b.shape.split_last() {
        Some((last, lead)) => {
            lead.iter().all(|d| d.known() == Some(1)) && (n.known().is_none() || last.known().is_none() || last == n)
        }
        None => false,
    };
    if !fits {
        return Err(KernelError::input(INPUT, format!("bias {:?} is not one value per output column ({n})", b.shape)));
    }
    Ok(())
}

/// The bias values, when the node has one, checked against `n` output columns.
pub fn values<'a>(inputs: &[Option<TensorRef<'a>>], n: usize) -> Result<Option<&'a [f32]>, KernelError> {
    let Some(Some(b)) = inputs.get(INPUT) else { return Ok(None) };
    let values =
        b.typed::<f32>().map_err(|_| KernelError::input(INPUT, format!("the bias is {}, not f32", b.dtype)))?;
    if values.len() != n || b.shape.last() != Some(&n) {
        return Err(KernelError::input(INPUT, format!("bias {:?} is not one value per output column ({n})", b.shape)));
    }
    Ok(Some(values))
}

/// Adds `bias` to `y`, whose length is a multiple of the bias's (rows of outputs, or the
/// columns a decode task wrote together with their share of the bias).
pub fn add(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// [`add`] over the rows of a many-row product, across threads when there are many outputs.
pub fn add_rows(y: &mut [f32], bias: Option<&[f32]>) {
    let Some(bias) = bias.filter(|b| !b.is_empty()) else { return };
    if y.len() < PAR_OUTPUTS || rayon::current_num_threads() == 1 {
        return add(y, bias);
    }
    let rows = PAR_OUTPUTS.div_ceil(bias.len());
    y.par_chunks_mut(rows * bias.len()).for_each(|chunk| add(chunk, bias));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_input(shape: &[Dim]) -> ShapeInput<'_> {
        ShapeInput { dtype: DType::F32, shape, value: None, data: None }
    }

    #[test]
    fn every_row_gets_the_bias_on_one_thread_or_many() {
        let bias: Vec<f32> = (0..96).map(|j| j as f32 * 0.5 - 7.0).collect();
        for m in [1, 3, 1000] {
            let mut y: Vec<f32> = (0..m * 96).map(|i| (i % 13) as f32).collect();
            let want: Vec<f32> = y.iter().enumerate().map(|(i, v)| v + bias[i % 96]).collect();
            add_rows(&mut y, Some(&bias));
            assert_eq!(y, want, "m = {m}");
        }
    }

    #[test]
    fn a_bias_must_be_one_value_per_column() {
        let n = Dim::Known(8);
        let ok = [Dim::Known(8)];
        let unit_lead = [Dim::Known(1), Dim::Known(8)];
        let wrong = [Dim::Known(4)];
        let per_row = [Dim::Known(2), Dim::Known(8)];
        assert!(infer(&[None, None, Some(shape_input(&ok))], &n).is_ok());
        assert!(infer(&[None, None, Some(shape_input(&unit_lead))], &n).is_ok());
        assert!(infer(&[None, None], &n).is_ok());
        for bad in [&wrong[..], &per_row[..], &[]] {
            let err = infer(&[None, None, Some(shape_input(bad))], &n).unwrap_err();
            assert!(err.to_string().contains("bias"), "{err}");
        }
    }
}
