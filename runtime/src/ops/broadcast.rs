//! Numpy-style multidirectional broadcasting: output shapes (symbolic) and input strides.

use crate::error::KernelError;
use kiln_formats::Dim;

/// The broadcast of several shapes, right-aligned. Symbolic dims that differ are assumed to match
/// at run time (where the kernel checks the real sizes), giving the larger of the two.
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Result<Vec<Dim>, KernelError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rank);
    for axis in 0..rank {
        let mut acc = Dim::Known(1);
        for s in shapes {
            let Some(d) = (axis + s.len()).checked_sub(rank).map(|i| &s[i]) else {
                continue;
            };
            acc = match (&acc, d) {
                (_, Dim::Known(1)) => acc,
                (Dim::Known(1), _) => d.clone(),
                (a, b) if a == b => acc,
                (Dim::Known(a), Dim::Known(b)) => {
                    return Err(KernelError::invalid(format!(
                        "shapes {} cannot be broadcast: dim {a} vs {b} at axis {axis}",
                        shapes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
                    )))
                }
                (a, b) => a.maximum(b),
            };
        }
        out.push(acc);
    }
    Ok(out)
}

/// Whether an input of shape `p` broadcasts to `x` without growing it, as far as known dims tell:
/// right-aligned, each dim 1, equal, or symbolic where x's is.
pub fn fits_in(p: &[Dim], x: &[Dim]) -> bool {
    p.len() <= x.len()
        && p.iter().rev().zip(x.iter().rev()).all(|(a, b)| match (a, b) {
            (Dim::Known(1), _) => true,
            (Dim::Known(a), Dim::Known(b)) => a == b,
            (a, b) => a == b,
        })
}

/// Element strides of an input of `shape` read at the indices of `out` (0 along broadcast axes).
/// An error when `shape` does not broadcast to `out`.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Result<Vec<usize>, KernelError> {
    if shape.len() > out.len() {
        return Err(KernelError::invalid(format!("shape {shape:?} has more dims than {out:?}")));
    }
    let pad = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let (d, o) = (shape[i], out[pad + i]);
        if d == o {
            strides[pad + i] = if d == 1 { 0 } else { acc };
        } else if d != 1 {
            return Err(KernelError::invalid(format!("shape {shape:?} does not broadcast to {out:?}")));
        }
        acc *= d;
    }
    Ok(strides)
}

/// Calls `f(out_index, [offset in each input])` for every output element in row-major order,
/// walking the inputs with their broadcast strides. N is the number of inputs.
pub fn for_each_offsets<const N: usize>(out: &[usize], strides: [&[usize]; N], mut f: impl FnMut(usize, [usize; N])) {
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    let rank = out.len();
    let mut idx = vec![0usize; rank];
    let mut offs = [0usize; N];
    for i in 0..total {
        f(i, offs);
        // Odometer increment, updating offsets incrementally.
        for axis in (0..rank).rev() {
            idx[axis] += 1;
            for k in 0..N {
                offs[k] += strides[k][axis];
            }
            if idx[axis] < out[axis] {
                break;
            }
            for k in 0..N {
                offs[k] -= strides[k][axis] * out[axis];
            }
            idx[axis] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&x| Dim::Known(x)).collect()
    }

    #[test]
    fn shapes_broadcast_right_aligned() {
        assert_eq!(broadcast_shapes(&[&k(&[2, 1, 4]), &k(&[3, 1])]).unwrap(), k(&[2, 3, 4]));
        assert!(broadcast_shapes(&[&k(&[2]), &k(&[3])]).is_err());
        let s = Dim::sym("seq");
        assert_eq!(broadcast_shapes(&[&[s.clone(), Dim::Known(1)], &k(&[1, 8])]).unwrap(), vec![s, Dim::Known(8)]);
    }

    #[test]
    fn offsets_follow_strides() {
        let out = [2, 3];
        let a = broadcast_strides(&[2, 1], &out).unwrap();
        let b = broadcast_strides(&[3], &out).unwrap();
        let mut seen = Vec::new();
        for_each_offsets(&out, [&a, &b], |i, [x, y]| seen.push((i, x, y)));
        assert_eq!(seen, vec![(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 0), (4, 1, 1), (5, 1, 2)]);
        assert!(broadcast_strides(&[4], &out).is_err());
    }
}
