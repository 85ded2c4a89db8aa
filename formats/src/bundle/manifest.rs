//! `kiln.json`: the bundle's manifest — what the bundle holds, how to check it, and how to call it.

use crate::target::TargetLimits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Major.minor format version; a reader refuses a newer major version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `kiln-bundle`.
    pub format: String,
    pub format_version: FormatVersion,
    pub producer: Producer,
    pub source: Source,
    /// Checksum algorithm of [`EntryInfo::checksum`]: `sha256`.
    pub checksum_algorithm: String,
    /// Every entry of the archive other than `kiln.json`.
    pub entries: Vec<EntryInfo>,
    pub entry_points: Vec<EntryPoint>,
    pub targets: Vec<TargetLimits>,
    /// Free-form facts (compile options, op counts, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Who wrote the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

/// The model the bundle was compiled from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// File name (no directories: bundles hold no absolute paths).
    pub name: String,
    /// sha256 of the ONNX file, hex.
    pub sha256: String,
}

/// One archive entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryInfo {
    pub name: String,
    /// `program`, `weights`, `tokenizer` or `generation`.
    pub kind: String,
    /// Bytes of data.
    pub len: u64,
    /// Hex digest of the data with [`Manifest::checksum_algorithm`].
    pub checksum: String,
}

/// A callable program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryPoint {
    pub name: String,
    /// Target name (`cpu`, `gpu`) whose limits the plan respects.
    pub target: String,
    /// Index of the program in `program.bin`.
    pub program: u32,
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
    pub plan: PlanSummary,
}

/// An input or output: name, dtype and dims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSig {
    pub name: String,
    pub dtype: String,
    pub dims: Vec<DimSig>,
}

impl TensorSig {
    /// The signature a program value has in the manifest: fixed dims by value, symbolic dims by
    /// name with their upper bound.
    pub fn of(v: &crate::program::ValueInfo) -> TensorSig {
        TensorSig {
            name: v.name.clone(),
            dtype: v.dtype().map_or("unknown", crate::DType::name).to_string(),
            dims: v
                .dims
                .iter()
                .map(|d| {
                    if d.symbol.is_empty() {
                        DimSig { value: Some(d.value), symbol: None, max: None }
                    } else {
                        DimSig { value: None, symbol: Some(d.symbol.clone()), max: (d.value >= 0).then_some(d.value) }
                    }
                })
                .collect(),
        }
    }
}

impl std::fmt::Display for TensorSig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| match (&d.symbol, d.value, d.max) {
                (Some(s), _, Some(m)) => format!("{s}<={m}"),
                (Some(s), _, None) => s.clone(),
                (None, Some(v), _) => v.to_string(),
                (None, None, _) => "?".into(),
            })
            .collect();
        write!(f, "'{}' {} [{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// A dim: fixed (`value`) or symbolic (`symbol`, with the bound `max` the plan allows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DimSig {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub symbol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max: Option<i64>,
}

/// The memory plan of an entry point, as `kiln inspect` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub alignment: u64,
    pub arena_bytes: u64,
    pub lower_bound_bytes: u64,
    pub buffers: Vec<u64>,
}
