//! ReduceSum, ReduceMean, ReduceMax and ReduceMin over any axes.

use super::{groups_1d, numel, padded, strides, words, Arg, Call, Dispatch, REDUCE};
use crate::error::KernelError;
use crate::kernel::Attrs;
use crate::ops::movement::common::normalize_axes;

pub(crate) struct Reduce {
    kind: u32,
    /// Axes from the attribute; `None` with `from_input`: input 1 holds them.
    axes: Option<Vec<i64>>,
    from_input: bool,
}

impl Reduce {
    pub fn new(op: &str, opset: i64, attrs: Attrs) -> Result<Reduce, KernelError> {
        let kind = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"].iter().position(|&o| o == op).unwrap_or(0);
        let since = if op == "ReduceSum" { 13 } else { 18 };
        let from_input = opset >= since;
        let axes = if from_input { None } else { attrs.ints("axes")?.map(<[i64]>::to_vec) };
        Ok(Reduce { kind: kind as u32, axes, from_input })
    }

    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        let x = call.input(0)?;
        let axes = match self.from_input {
            true => call.values.get(1).cloned().flatten().unwrap_or_default(),
            false => self.axes.clone().unwrap_or_default(),
        };
        let reduced: Vec<usize> =
            if axes.is_empty() { (0..x.len()).collect() } else { normalize_axes(&axes, x.len())? };
        let kept: Vec<usize> = (0..x.len()).map(|d| if reduced.contains(&d) { 1 } else { x[d] }).collect();
        let folded: Vec<usize> = (0..x.len()).map(|d| if reduced.contains(&d) { x[d] } else { 1 }).collect();
        let n = numel(&kept)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut params = vec![n, x.len() as u32, [0, 1, 2, 3][self.kind as usize], numel(&folded)?];
        params.extend(padded(words(&kept)?, x.len())?);
        params.extend(padded(words(&folded)?, x.len())?);
        params.extend(padded(words(&strides(x))?, x.len())?);
        Ok(vec![Dispatch { shader: &REDUCE, args: vec![Arg::In(0), Arg::Out(0)], params, groups: groups_1d(n) }])
    }
}
