//! Softmax, LogSoftmax, LayerNormalization and RMSNormalization: one workgroup per row.

use super::{rows_grid, words, Arg, Call, Dispatch, LAYERNORM, SOFTMAX};
use crate::error::KernelError;
use crate::kernel::{normalize_axis, Attrs};

pub(crate) enum Norm {
    /// `legacy`: before opset 13 the axis splits the input into 2-D [rows, rest].
    Softmax {
        axis: i64,
        log: bool,
        legacy: bool,
    },
    Layer {
        axis: i64,
        epsilon: f32,
        rms: bool,
    },
}

impl Norm {
    pub fn new(op: &str, opset: i64, attrs: Attrs) -> Result<Norm, KernelError> {
        Ok(match op {
            "Softmax" | "LogSoftmax" => Norm::Softmax {
                axis: attrs.int("axis", if opset < 13 { 1 } else { -1 })?,
                log: op == "LogSoftmax",
                legacy: opset < 13,
            },
            _ => Norm::Layer {
                axis: attrs.int("axis", -1)?,
                epsilon: attrs.float("epsilon", 1e-5)?,
                rms: op == "RMSNormalization",
            },
        })
    }

    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        let x = call.input(0)?;
        if x.iter().product::<usize>() == 0 {
            return Ok(Vec::new());
        }
        match *self {
            Norm::Softmax { axis, log, legacy } => {
                let a = normalize_axis(axis, x.len().max(1))?;
                let outer: usize = x[..a].iter().product();
                let (len, inner) = match legacy {
                    true => (x[a..].iter().product::<usize>(), 1),
                    false => (x[a], x[a + 1..].iter().product::<usize>()),
                };
                let rows = words(&[outer * inner])?[0];
                Ok(vec![Dispatch {
                    shader: &SOFTMAX,
                    args: vec![Arg::In(0), Arg::Out(0)],
                    params: vec![rows, words(&[len])?[0], words(&[inner])?[0], u32::from(log)],
                    groups: rows_grid(rows),
                }])
            }
            Norm::Layer { axis, epsilon, rms } => {
                let a = normalize_axis(axis, x.len())?;
                let rows = words(&[x[..a].iter().product::<usize>()])?[0];
                let len: usize = x[a..].iter().product();
                for k in 1..3 {
                    if let Some(Some(s)) = call.inputs.get(k) {
                        if s.iter().product::<usize>() != len {
                            return Err(KernelError::input(
                                k,
                                format!("shape {s:?} is not the normalized shape {:?} (the GPU kernel does not broadcast it)", &x[a..]),
                            ));
                        }
                    }
                }
                let bias = matches!(call.inputs.get(2), Some(Some(_)));
                Ok(vec![Dispatch {
                    shader: &LAYERNORM,
                    args: vec![Arg::In(0), Arg::In(1), if bias { Arg::In(2) } else { Arg::In(1) }, Arg::Out(0)],
                    params: vec![rows, words(&[len])?[0], epsilon.to_bits(), u32::from(bias), u32::from(rms)],
                    groups: rows_grid(rows),
                }])
            }
        }
    }
}
