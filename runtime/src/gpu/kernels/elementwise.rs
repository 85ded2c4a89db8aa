//! Unary and binary arithmetic, Where and Cast: one invocation per output element.

use super::{groups_1d, numel, padded, words, Arg, Call, Dispatch, BINARY, CAST, UNARY, WHERE};
use crate::error::KernelError;
use crate::kernel::Attrs;
use crate::ops::broadcast::broadcast_strides;

/// A unary op's code in `unary.wgsl`.
pub(crate) struct Unary(u32);

impl Unary {
    pub fn new(op: &str, attrs: Attrs) -> Result<Unary, KernelError> {
        Ok(Unary(match op {
            "Relu" => 0,
            "Sigmoid" => 1,
            "Tanh" => 2,
            "Erf" => 3,
            "Exp" => 4,
            "Log" => 5,
            "Sqrt" => 6,
            "Neg" => 7,
            "Reciprocal" => 8,
            "Abs" => 9,
            "Gelu" => match attrs.string("approximate", "none")?.as_str() {
                "tanh" => 11,
                _ => 10,
            },
            "Sin" => 12,
            "Cos" => 13,
            "Floor" => 14,
            "Ceil" => 15,
            _ => return Err(KernelError::unsupported(format!("no GPU kernel for {op}"))),
        }))
    }

    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        let n = numel(call.output(0)?)?;
        Ok(vec![Dispatch {
            shader: &UNARY,
            args: vec![Arg::In(0), Arg::Out(0)],
            params: vec![n, self.0],
            groups: groups_1d(n),
        }])
    }
}

/// A binary op's code in `binary.wgsl`.
pub(crate) struct Binary(u32);

impl Binary {
    pub fn new(op: &str) -> Binary {
        Binary(["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"].iter().position(|&o| o == op).unwrap_or(0) as u32)
    }

    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        let out = call.output(0)?;
        let n = numel(out)?;
        let mut params = vec![n, self.0, out.len() as u32];
        params.extend(padded(words(out)?, out.len())?);
        for k in 0..2 {
            params.extend(padded(words(&broadcast_strides(call.input(k)?, out)?)?, out.len())?);
        }
        Ok(vec![Dispatch {
            shader: &BINARY,
            args: vec![Arg::In(0), Arg::In(1), Arg::Out(0)],
            params,
            groups: groups_1d(n),
        }])
    }
}

pub(crate) fn where_dispatches(call: &Call) -> Result<Vec<Dispatch>, KernelError> {
    let out = call.output(0)?;
    let n = numel(out)?;
    let mut params = vec![n, out.len() as u32];
    params.extend(padded(words(out)?, out.len())?);
    for k in 0..3 {
        params.extend(padded(words(&broadcast_strides(call.input(k)?, out)?)?, out.len())?);
    }
    Ok(vec![Dispatch {
        shader: &WHERE,
        args: vec![Arg::In(0), Arg::In(1), Arg::In(2), Arg::Out(0)],
        params,
        groups: groups_1d(n),
    }])
}

pub(crate) fn cast_dispatches(call: &Call, from: u32) -> Result<Vec<Dispatch>, KernelError> {
    let n = numel(call.output(0)?)?;
    Ok(vec![Dispatch {
        shader: &CAST,
        args: vec![Arg::In(0), Arg::Out(0)],
        params: vec![n, from],
        groups: groups_1d(n),
    }])
}
