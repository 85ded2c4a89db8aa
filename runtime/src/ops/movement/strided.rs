//! One copy routine behind Transpose, Slice, Expand and Tile: materialise a strided view of the
//! input (strides may be zero for broadcasting or negative for reversed slices) into contiguous
//! output, with contiguous row copies, tiled 2-D transposes, and threads for big tensors.

use super::common::{elems, elems_mut};
use crate::error::KernelError;
use rayon::prelude::*;

/// Output elements above which the copy is split across threads.
const PAR_MIN: usize = 1 << 18;
/// Side of the square tiles used when the output's last axis is not contiguous in the input.
const TILE: usize = 32;

/// Writes `dst[i] = src[base + Σ idx_k * strides_k]` for every row-major output index `idx` of
/// `shape`. Sizes and offsets are in elements of `elem_size` bytes; every read is bounds-checked
/// up front, so a bad view is an error rather than a panic.
pub(super) fn strided_copy(
    elem_size: usize,
    src: &[u8],
    base: usize,
    shape: &[usize],
    strides: &[isize],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    if shape.len() != strides.len() {
        return Err(KernelError::invalid("view rank does not match its strides"));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| KernelError::invalid("view size overflows"))?;
    if dst.len() != numel * elem_size {
        return Err(KernelError::invalid(format!("output holds {} bytes, the view {}", dst.len(), numel * elem_size)));
    }
    if numel == 0 {
        return Ok(());
    }
    let src_len = (src.len() / elem_size) as isize;
    let (mut lo, mut hi) = (base as isize, base as isize);
    for (&d, &s) in shape.iter().zip(strides) {
        let span = (d as isize - 1) * s;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    if lo < 0 || hi >= src_len {
        return Err(KernelError::invalid(format!(
            "view of shape {shape:?} reads elements {lo}..={hi} of an input of {src_len}"
        )));
    }
    let (shape, strides) = simplify(shape, strides);
    match elem_size {
        1 => copy_typed::<u8>(elems(src)?, base, &shape, &strides, elems_mut(dst)?),
        2 => copy_typed::<u16>(elems(src)?, base, &shape, &strides, elems_mut(dst)?),
        4 => copy_typed::<u32>(elems(src)?, base, &shape, &strides, elems_mut(dst)?),
        8 => copy_typed::<u64>(elems(src)?, base, &shape, &strides, elems_mut(dst)?),
        n => return Err(KernelError::invalid(format!("element size {n}"))),
    }
    Ok(())
}

/// Drops size-1 axes and merges neighbours that walk memory as one axis, so that e.g. a
/// transpose of [B, H, S, D] to [B, S, H, D] becomes rows of D contiguous elements.
fn simplify(shape: &[usize], strides: &[isize]) -> (Vec<usize>, Vec<isize>) {
    let mut sh: Vec<usize> = Vec::with_capacity(shape.len());
    let mut st: Vec<isize> = Vec::with_capacity(shape.len());
    for (&d, &s) in shape.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        if let (Some(&pd), Some(&ps)) = (sh.last(), st.last()) {
            if ps == s * d as isize {
                *sh.last_mut().unwrap() = pd * d;
                *st.last_mut().unwrap() = s;
                continue;
            }
        }
        sh.push(d);
        st.push(s);
    }
    (sh, st)
}

fn copy_typed<T: Copy + Send + Sync>(src: &[T], base: usize, shape: &[usize], strides: &[isize], dst: &mut [T]) {
    if shape.len() >= 2 && dst.len() >= PAR_MIN {
        let chunk = dst.len() / shape[0];
        dst.par_chunks_mut(chunk).enumerate().for_each(|(i, d)| {
            let b = (base as isize + i as isize * strides[0]) as usize;
            copy_serial(src, b, &shape[1..], &strides[1..], d);
        });
    } else {
        copy_serial(src, base, shape, strides, dst);
    }
}

/// Calls `f(src_offset, dst_offset)` for every index over the `axes` of `shape`.
fn for_each_outer(
    shape: &[usize],
    axes: &[usize],
    src_strides: &[isize],
    dst_strides: &[usize],
    base: isize,
    mut f: impl FnMut(isize, usize),
) {
    let mut idx = vec![0usize; axes.len()];
    let (mut so, mut d_o) = (base, 0usize);
    loop {
        f(so, d_o);
        let mut k = axes.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            let a = axes[k];
            idx[k] += 1;
            so += src_strides[a];
            d_o += dst_strides[a];
            if idx[k] < shape[a] {
                break;
            }
            so -= src_strides[a] * shape[a] as isize;
            d_o -= dst_strides[a] * shape[a];
            idx[k] = 0;
        }
    }
}

fn copy_serial<T: Copy>(src: &[T], base: usize, shape: &[usize], strides: &[isize], dst: &mut [T]) {
    let rank = shape.len();
    if rank == 0 {
        dst[0] = src[base];
        return;
    }
    let last = rank - 1;
    let (n, s) = (shape[last], strides[last]);
    let mut dst_strides = vec![1usize; rank];
    for i in (0..last).rev() {
        dst_strides[i] = dst_strides[i + 1] * shape[i + 1];
    }
    // The output's last axis jumps through the input while another axis is contiguous there: a
    // transpose. Copy square tiles so both sides stay in cache.
    if s != 1 {
        if let Some(j) = (0..last).rev().find(|&k| strides[k] == 1) {
            if shape[j] >= 4 && n >= 4 {
                let outer: Vec<usize> = (0..last).filter(|&k| k != j).collect();
                let (m, dj) = (shape[j], dst_strides[j]);
                for_each_outer(shape, &outer, strides, &dst_strides, base as isize, |so, d_o| {
                    for jb in (0..m).step_by(TILE) {
                        for ib in (0..n).step_by(TILE) {
                            for jj in jb..(jb + TILE).min(m) {
                                let drow = d_o + jj * dj;
                                let srow = so + jj as isize;
                                for ii in ib..(ib + TILE).min(n) {
                                    dst[drow + ii] = src[(srow + ii as isize * s) as usize];
                                }
                            }
                        }
                    }
                });
                return;
            }
        }
    }
    let outer: Vec<usize> = (0..last).collect();
    for_each_outer(shape, &outer, strides, &dst_strides, base as isize, |so, d_o| {
        let row = &mut dst[d_o..d_o + n];
        if s == 1 {
            let so = so as usize;
            row.copy_from_slice(&src[so..so + n]);
        } else if s == 0 {
            row.fill(src[so as usize]);
        } else {
            for (i, v) in row.iter_mut().enumerate() {
                *v = src[(so + i as isize * s) as usize];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &[u32], base: usize, shape: &[usize], strides: &[isize]) -> Vec<u32> {
        let n: usize = shape.iter().product();
        let mut out = vec![0u32; n];
        strided_copy(4, bytemuck::cast_slice(src), base, shape, strides, bytemuck::cast_slice_mut(&mut out)).unwrap();
        out
    }

    #[test]
    fn transposes_broadcasts_and_reverses() {
        let src: Vec<u32> = (0..6).collect();
        assert_eq!(run(&src, 0, &[3, 2], &[1, 3]), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(run(&src, 0, &[2, 3], &[0, 1]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(run(&src, 5, &[6], &[-1]), vec![5, 4, 3, 2, 1, 0]);
        assert_eq!(run(&src, 2, &[], &[]), vec![2]);
    }

    #[test]
    fn tiled_transpose_matches_naive() {
        let (r, c) = (37, 70);
        let src: Vec<u32> = (0..(r * c) as u32).collect();
        let out = run(&src, 0, &[c, r], &[1, c as isize]);
        for i in 0..c {
            for j in 0..r {
                assert_eq!(out[i * r + j], src[j * c + i]);
            }
        }
    }

    #[test]
    fn out_of_bounds_view_is_an_error() {
        let src = [0u32; 4];
        let mut out = [0u32; 4];
        let r = strided_copy(4, bytemuck::cast_slice(&src), 1, &[4], &[1], bytemuck::cast_slice_mut(&mut out));
        assert!(r.is_err());
    }
}
