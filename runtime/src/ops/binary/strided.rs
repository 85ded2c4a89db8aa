//! The elementwise loop engine: contiguous maps, and N-input broadcast walks that collapse the
//! output into runs along the last axis so the inner loops see either a contiguous slice or a
//! single repeated value per input (same-shape, scalar and bias-add cases all become plain
//! slice loops). Large outputs are split across rayon threads.

use crate::error::KernelError;
use crate::ops::broadcast::broadcast_strides;
use rayon::prelude::*;
use smallvec::SmallVec;

/// Below this many output elements loops stay on the calling thread: handing work to the pool
/// costs more than it saves.
pub(crate) const PAR_MIN: usize = 1 << 16;

/// Elements per parallel task: a few tasks per thread so uneven progress evens out.
fn chunk_len(total: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    total.div_ceil(threads * 4).max(1 << 14)
}

/// Runs `body(start, chunk)` over `out` split into chunks, in parallel when `out` is large.
fn split<O: Send>(out: &mut [O], body: impl Fn(usize, &mut [O]) + Sync) {
    if out.len() >= PAR_MIN {
        let c = chunk_len(out.len());
        out.par_chunks_mut(c).enumerate().for_each(|(i, o)| body(i * c, o));
    } else {
        body(0, out);
    }
}

/// `out[i] = f(x[i])`; an error when the lengths differ.
pub(crate) fn map<A: Copy + Sync, O: Send>(
    x: &[A],
    out: &mut [O],
    f: impl Fn(A) -> O + Sync,
) -> Result<(), KernelError> {
    if x.len() != out.len() {
        return Err(KernelError::invalid(format!("elementwise input has {} elements, output {}", x.len(), out.len())));
    }
    split(out, |start, o| {
        let x = &x[start..start + o.len()];
        for (o, &v) in o.iter_mut().zip(x) {
            *o = f(v);
        }
    });
    Ok(())
}

/// `out[i] = f(out[i])` in place.
pub(crate) fn map_in_place<O: Copy + Send>(out: &mut [O], f: impl Fn(O) -> O + Sync) {
    split(out, |_, o| {
        for v in o.iter_mut() {
            *v = f(*v);
        }
    });
}

/// How N inputs are read while walking a row-major output: collapsed outer axes with per-input
/// strides, and an innermost run along which each input either advances by one (stride 1) or
/// repeats one element (stride 0).
#[derive(Debug)]
pub(crate) struct Layout<const N: usize> {
    // On the stack up to rank 6: an elementwise step runs hundreds of times per decoded token.
    outer: SmallVec<[usize; 6]>,
    outer_strides: SmallVec<[[usize; N]; 6]>,
    inner: usize,
    inner_strides: [usize; N],
    total: usize,
}

impl<const N: usize> Layout<N> {
    /// The walk of an output of shape `out` holding `out_len` elements over inputs given as
    /// (shape, element count). An error when an input does not broadcast to `out` or a buffer
    /// length does not match its shape, so the loops never index outside a slice.
    pub(crate) fn new(out: &[usize], out_len: usize, inputs: [(&[usize], usize); N]) -> Result<Self, KernelError> {
        let total: usize = out.iter().product();
        if total != out_len {
            return Err(KernelError::invalid(format!("output of shape {out:?} has {out_len} elements")));
        }
        let mut strides: SmallVec<[Vec<usize>; 3]> = SmallVec::with_capacity(N);
        for (k, (shape, len)) in inputs.iter().enumerate() {
            if shape.iter().product::<usize>() != *len {
                return Err(KernelError::input(k, format!("shape {shape:?} does not match its {len} elements")));
            }
            strides.push(broadcast_strides(shape, out).map_err(|e| KernelError::input(k, e.to_string()))?);
        }
        // Merge neighbouring axes wherever every input walks them as one (both contiguous, or
        // both broadcast); size-1 axes drop out.
        let mut dims: SmallVec<[usize; 6]> = SmallVec::new();
        let mut dim_strides: SmallVec<[[usize; N]; 6]> = SmallVec::new();
        for (axis, &d) in out.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let s: [usize; N] = std::array::from_fn(|k| strides[k][axis]);
            if let (Some(last), Some(ls)) = (dims.last_mut(), dim_strides.last_mut()) {
                if (0..N).all(|k| ls[k] == s[k] * d) {
                    *last *= d;
                    *ls = s;
                    continue;
                }
            }
            dims.push(d);
            dim_strides.push(s);
        }
        let inner = dims.pop().unwrap_or(1);
        let inner_strides = dim_strides.pop().unwrap_or([0; N]);
        Ok(Layout { outer: dims, outer_strides: dim_strides, inner, inner_strides, total })
    }

    /// Calls `f(output position, [input offsets], run length)` for each run of output positions
    /// `start..end` that stays inside one innermost row.
    fn segments(&self, start: usize, end: usize, mut f: impl FnMut(usize, [usize; N], usize)) {
        let end = end.min(self.total);
        if start >= end || self.inner == 0 {
            return;
        }
        let n = self.inner;
        let rank = self.outer.len();
        let (mut row, col) = (start / n, start % n);
        let mut idx: SmallVec<[usize; 6]> = smallvec::smallvec![0usize; rank];
        let mut offs = [0usize; N];
        for axis in (0..rank).rev() {
            idx[axis] = row % self.outer[axis];
            row /= self.outer[axis];
            for (o, s) in offs.iter_mut().zip(&self.outer_strides[axis]) {
                *o += idx[axis] * s;
            }
        }
        let mut pos = start;
        let mut col = col;
        loop {
            let len = (n - col).min(end - pos);
            let at: [usize; N] = std::array::from_fn(|k| offs[k] + col * self.inner_strides[k]);
            f(pos, at, len);
            pos += len;
            if pos >= end {
                return;
            }
            col = 0;
            for axis in (0..rank).rev() {
                idx[axis] += 1;
                for (o, s) in offs.iter_mut().zip(&self.outer_strides[axis]) {
                    *o += s;
                }
                if idx[axis] < self.outer[axis] {
                    break;
                }
                for (o, s) in offs.iter_mut().zip(&self.outer_strides[axis]) {
                    *o -= s * self.outer[axis];
                }
                idx[axis] = 0;
            }
        }
    }

    /// Whether input `k` is read contiguously along the innermost run.
    fn stepping(&self, k: usize) -> bool {
        self.inner_strides[k] == 1
    }
}

/// `out = f(a, b)` with broadcasting as `l` describes.
pub(crate) fn zip2<A: Copy + Sync, B: Copy + Sync, O: Send>(
    l: &Layout<2>,
    a: &[A],
    b: &[B],
    out: &mut [O],
    f: impl Fn(A, B) -> O + Sync,
) {
    split(out, |start, out| {
        l.segments(start, start + out.len(), |pos, [oa, ob], n| {
            let o = &mut out[pos - start..pos - start + n];
            match (l.stepping(0), l.stepping(1)) {
                (true, true) => {
                    for ((o, &x), &y) in o.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                        *o = f(x, y);
                    }
                }
                (true, false) => {
                    let y = b[ob];
                    for (o, &x) in o.iter_mut().zip(&a[oa..oa + n]) {
                        *o = f(x, y);
                    }
                }
                (false, true) => {
                    let x = a[oa];
                    for (o, &y) in o.iter_mut().zip(&b[ob..ob + n]) {
                        *o = f(x, y);
                    }
                }
                (false, false) => {
                    let (x, y) = (a[oa], b[ob]);
                    for o in o.iter_mut() {
                        *o = f(x, y);
                    }
                }
            }
        })
    });
}

/// `out = f(out, b)` in place, `b` broadcast to `out` as `l` (built over `b` alone) describes.
pub(crate) fn update<B: Copy + Sync, O: Copy + Send>(
    l: &Layout<1>,
    b: &[B],
    out: &mut [O],
    f: impl Fn(O, B) -> O + Sync,
) {
    split(out, |start, out| {
        l.segments(start, start + out.len(), |pos, [ob], n| {
            let o = &mut out[pos - start..pos - start + n];
            if l.stepping(0) {
                for (o, &y) in o.iter_mut().zip(&b[ob..ob + n]) {
                    *o = f(*o, y);
                }
            } else {
                let y = b[ob];
                for o in o.iter_mut() {
                    *o = f(*o, y);
                }
            }
        })
    });
}

/// `out = f(a, b, c)` with broadcasting as `l` describes.
pub(crate) fn zip3<A: Copy + Sync, B: Copy + Sync, C: Copy + Sync, O: Send>(
    l: &Layout<3>,
    a: &[A],
    b: &[B],
    c: &[C],
    out: &mut [O],
    f: impl Fn(A, B, C) -> O + Sync,
) {
    let [sa, sb, sc] = l.inner_strides;
    split(out, |start, out| {
        l.segments(start, start + out.len(), |pos, [oa, ob, oc], n| {
            let o = &mut out[pos - start..pos - start + n];
            if sa == 1 && sb == 1 && sc == 1 {
                for (((o, &x), &y), &z) in o.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]).zip(&c[oc..oc + n]) {
                    *o = f(x, y, z);
                }
            } else {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = f(a[oa + i * sa], b[ob + i * sb], c[oc + i * sc]);
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: &[i64], sa: &[usize], b: &[i64], sb: &[usize], out: &[usize]) -> Vec<i64> {
        let n = out.iter().product();
        let l = Layout::new(out, n, [(sa, a.len()), (sb, b.len())]).unwrap();
        let mut o = vec![0; n];
        zip2(&l, a, b, &mut o, |x, y| x + y);
        o
    }

    #[test]
    fn collapses_and_broadcasts() {
        // Bias add: [2,3] + [3].
        assert_eq!(add(&[0, 10, 20, 30, 40, 50], &[2, 3], &[1, 2, 3], &[3], &[2, 3]), [1, 12, 23, 31, 42, 53]);
        // Column broadcast: [2,1] + [1,3].
        assert_eq!(add(&[100, 200], &[2, 1], &[1, 2, 3], &[1, 3], &[2, 3]), [101, 102, 103, 201, 202, 203]);
        // Scalar operand and rank-0 output.
        assert_eq!(add(&[5], &[], &[1, 2], &[2], &[2]), [6, 7]);
        assert_eq!(add(&[5], &[], &[1], &[1], &[1]), [6]);
        // Middle-axis broadcast: [2,1,2] + [2,3,2] keeps three axes apart.
        let b: Vec<i64> = (0..12).collect();
        assert_eq!(
            add(&[100, 200, 300, 400], &[2, 1, 2], &b, &[2, 3, 2], &[2, 3, 2]),
            [100, 201, 102, 203, 104, 205, 306, 407, 308, 409, 310, 411]
        );
        // Empty output.
        assert!(add(&[], &[0, 3], &[1, 2, 3], &[3], &[0, 3]).is_empty());
    }

    #[test]
    fn parallel_chunks_cover_partial_rows() {
        // Rows of 7 do not divide the chunk size, so chunks start mid-row.
        let rows = 40_000;
        let a: Vec<i64> = (0..rows as i64 * 7).collect();
        let b: Vec<i64> = (0..7).map(|v| v * 1000).collect();
        let o = add(&a, &[rows, 7], &b, &[7], &[rows, 7]);
        assert!(o.iter().enumerate().all(|(i, &v)| v == i as i64 + (i as i64 % 7) * 1000));
    }

    #[test]
    fn rejects_bad_shapes_and_lengths() {
        assert!(Layout::new(&[2, 3], 6, [(&[4][..], 4)]).is_err());
        assert!(Layout::new(&[2, 3], 6, [(&[3][..], 2)]).is_err());
        assert!(Layout::new(&[2, 3], 5, [(&[3][..], 3)]).is_err());
        assert!(map(&[1, 2], &mut [0; 3], |x: i32| x).is_err());
    }
}
