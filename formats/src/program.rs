//! The lowered program: an ordered list of kernel calls over numbered value slots, with where each
//! slot's bytes live. Messages are prost-derived with numbered fields, so readers skip fields they
//! do not know and old bundles keep loading.

use crate::dim::Dim;
use crate::dtype::DType;

/// Marks an absent optional input in [`Step::inputs`].
pub const NO_VALUE: u32 = u32::MAX;

/// One entry point's program.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Program {
    /// Every value the program touches, indexed by slot number.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<ValueInfo>,
    /// Kernel calls in execution order.
    #[prost(message, repeated, tag = "2")]
    pub steps: Vec<Step>,
    /// Slots the caller fills, in signature order.
    #[prost(uint32, repeated, tag = "3")]
    pub inputs: Vec<u32>,
    /// Slots returned to the caller, in signature order.
    #[prost(uint32, repeated, tag = "4")]
    pub outputs: Vec<u32>,
    /// Sizes in bytes of the arena buffers the plan places values in.
    #[prost(uint64, repeated, tag = "5")]
    pub buffers: Vec<u64>,
    /// Alignment in bytes every arena offset honours.
    #[prost(uint64, tag = "6")]
    pub alignment: u64,
    /// Upper bounds of the symbolic dims the plan was made for.
    #[prost(message, repeated, tag = "7")]
    pub symbols: Vec<SymbolBound>,
    /// Constant tensors, referred to by [`Storage::Weight`] slots.
    #[prost(message, repeated, tag = "8")]
    pub weights: Vec<WeightRef>,
    /// Largest arena buffer (and binding) the plan's target allows; 0 = no limit recorded.
    #[prost(uint64, tag = "9")]
    pub max_buffer: u64,
    /// Outputs too large for one buffer, returned as the concatenation of pieces.
    #[prost(message, repeated, tag = "10")]
    pub assembled: Vec<AssembledOutput>,
    /// Tensors kept across runs (the KV cache), which the caller owns and passes in.
    #[prost(message, repeated, tag = "11")]
    pub states: Vec<StateInfo>,
}

/// A tensor the caller keeps across runs: a KV cache tensor, allocated once for `dims` (the
/// sequence axis `axis` at its full capacity) and filled a few positions per run. Slot `past`
/// holds the positions filled before the run; slot `present` (written by one `kiln::KvAppend`
/// step) those plus the run's new ones. Both are views of the state's buffer: their shape's
/// `axis` is how many positions are filled, but items along the axes before it lie `dims[axis]`
/// positions apart, so a reader must take that pitch (see `kiln::MatMul`'s `b_pitch`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StateInfo {
    /// The name of the input the state replaces (e.g. `past_key_values.0.key`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// ONNX `TensorProto.DataType` number.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    /// The buffer's shape, with `dims[axis]` the capacity in positions.
    #[prost(uint64, repeated, tag = "3")]
    pub dims: Vec<u64>,
    #[prost(uint32, tag = "4")]
    pub axis: u32,
    #[prost(uint32, tag = "5")]
    pub past: u32,
    #[prost(uint32, tag = "6")]
    pub present: u32,
}

/// An output computed as separate pieces (each within the buffer limit) and concatenated along
/// `axis` when it is handed to the caller. Its slot in [`Program::outputs`] describes the whole
/// output and is never written by a step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AssembledOutput {
    /// Index into [`Program::outputs`].
    #[prost(uint32, tag = "1")]
    pub output: u32,
    #[prost(uint32, repeated, tag = "2")]
    pub pieces: Vec<u32>,
    #[prost(uint32, tag = "3")]
    pub axis: u32,
}

impl Program {
    /// The slots whose bytes make up output `i`: its pieces, or its own slot.
    pub fn output_slots(&self, i: usize) -> Vec<u32> {
        match self.assembled.iter().find(|a| a.output as usize == i) {
            Some(a) => a.pieces.clone(),
            None => self.outputs.get(i).map(|&o| vec![o]).unwrap_or_default(),
        }
    }
}

/// Every entry point's program, as stored in a bundle's `program.bin`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProgramSet {
    #[prost(message, repeated, tag = "1")]
    pub programs: Vec<Program>,
}

/// A symbolic dim and the largest value the plan allows for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SymbolBound {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub max: u64,
}

/// Where a constant's bytes are: an entry of the bundle (or, in memory, the index into the weight
/// list the compiler hands over) and a byte range inside it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WeightRef {
    #[prost(uint32, tag = "1")]
    pub entry: u32,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(uint64, tag = "3")]
    pub len: u64,
}

/// A value slot: its name in the source model, element type, shape, and storage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    /// ONNX `TensorProto.DataType` number.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    #[prost(message, repeated, tag = "3")]
    pub dims: Vec<DimInfo>,
    #[prost(message, optional, tag = "4")]
    pub storage: Option<Storage>,
}

/// One dimension as written for people and signatures: a number, or a symbolic expression.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DimInfo {
    #[prost(int64, tag = "1")]
    pub value: i64,
    /// Non-empty when the dim is symbolic; `value` then holds its planned upper bound (or -1).
    #[prost(string, tag = "2")]
    pub symbol: String,
}

/// How a slot's storage is provided.
#[derive(Clone, Copy, PartialEq, Eq, Debug, prost::Enumeration)]
#[repr(i32)]
pub enum StorageKind {
    /// Allocated by the runtime at run time, sized from the actual shape.
    Dynamic = 0,
    /// A planned range of an arena buffer.
    Arena = 1,
    /// A constant; `index` names the [`WeightRef`].
    Weight = 2,
    /// Shares the bytes of slot `index` (reshape-like views).
    Alias = 3,
    /// A view of state `index` ([`Program::states`]), which the caller owns.
    State = 4,
}

/// A slot's storage assignment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Storage {
    #[prost(enumeration = "StorageKind", tag = "1")]
    pub kind: i32,
    /// Arena buffer, weight number or aliased slot, by kind.
    #[prost(uint32, tag = "2")]
    pub index: u32,
    /// Byte offset inside the arena buffer.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// Bytes reserved (arena) — the value's size at the planned bounds.
    #[prost(uint64, tag = "4")]
    pub capacity: u64,
}

/// One kernel call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Step {
    /// ONNX op type, e.g. `MatMul`.
    #[prost(string, tag = "1")]
    pub op: String,
    /// ONNX domain; empty for the default domain.
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(uint32, repeated, tag = "3")]
    pub inputs: Vec<u32>,
    #[prost(uint32, repeated, tag = "4")]
    pub outputs: Vec<u32>,
    #[prost(message, repeated, tag = "5")]
    pub attrs: Vec<Attribute>,
    /// The source node's name, for messages.
    #[prost(string, tag = "6")]
    pub name: String,
    /// Opset version of the op's domain.
    #[prost(int64, tag = "7")]
    pub opset: i64,
    /// 1 + the index of the input whose bytes output 0 overwrites (an elementwise op writing over
    /// an input that dies at this step: the plan gives both the same arena range); 0 for none.
    #[prost(uint32, tag = "8")]
    pub in_place: u32,
    /// Where the step runs ([`Device`]): every step of a CPU program runs on CPU; a GPU program
    /// places each step when it is compiled, and its data crosses between devices only through
    /// `kiln::ToGpu` / `kiln::ToCpu` steps.
    #[prost(enumeration = "Device", tag = "9")]
    pub device: i32,
}

/// The device a step runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, prost::Enumeration)]
#[repr(i32)]
pub enum Device {
    Cpu = 0,
    Gpu = 1,
}

impl Step {
    /// Whether the step is placed on the GPU.
    pub fn on_gpu(&self) -> bool {
        self.device == Device::Gpu as i32
    }

    /// The input slot output 0 overwrites, if the plan made this step in place.
    pub fn in_place_input(&self) -> Option<u32> {
        let j = (self.in_place as usize).checked_sub(1)?;
        self.inputs.get(j).copied().filter(|&i| i != NO_VALUE)
    }
}

/// A node attribute; exactly one of the value fields is meaningful, as `kind` says.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attribute {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "AttrKind", tag = "2")]
    pub kind: i32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(float, tag = "4")]
    pub f: f32,
    #[prost(bytes = "vec", tag = "5")]
    pub s: Vec<u8>,
    #[prost(int64, repeated, tag = "6")]
    pub ints: Vec<i64>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub strings: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "9")]
    pub tensor: Option<TensorValue>,
}

/// Which field of an [`Attribute`] holds its value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, prost::Enumeration)]
#[repr(i32)]
pub enum AttrKind {
    Int = 0,
    Float = 1,
    String = 2,
    Ints = 3,
    Floats = 4,
    Strings = 5,
    Tensor = 6,
}

/// A small inline tensor (attribute values such as ConstantOfShape's fill value).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorValue {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(int64, repeated, tag = "2")]
    pub dims: Vec<i64>,
    /// Little-endian element bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

impl Attribute {
    pub fn int(name: &str, i: i64) -> Self {
        Attribute { name: name.into(), kind: AttrKind::Int as i32, i, ..Default::default() }
    }
    pub fn float(name: &str, f: f32) -> Self {
        Attribute { name: name.into(), kind: AttrKind::Float as i32, f, ..Default::default() }
    }
    pub fn string(name: &str, s: &str) -> Self {
        Attribute { name: name.into(), kind: AttrKind::String as i32, s: s.as_bytes().to_vec(), ..Default::default() }
    }
    pub fn ints(name: &str, ints: Vec<i64>) -> Self {
        Attribute { name: name.into(), kind: AttrKind::Ints as i32, ints, ..Default::default() }
    }
    pub fn floats(name: &str, floats: Vec<f32>) -> Self {
        Attribute { name: name.into(), kind: AttrKind::Floats as i32, floats, ..Default::default() }
    }
    pub fn tensor(name: &str, t: TensorValue) -> Self {
        Attribute { name: name.into(), kind: AttrKind::Tensor as i32, tensor: Some(t), ..Default::default() }
    }
}

impl ValueInfo {
    /// The element type, when the number is one kiln knows.
    pub fn dtype(&self) -> Option<DType> {
        DType::from_onnx_code(self.dtype)
    }
}

impl DimInfo {
    /// Writes a dim: numbers as numbers, symbolic dims as their expression with `bound` (or -1).
    pub fn from_dim(d: &Dim, bound: Option<i64>) -> Self {
        match d {
            Dim::Known(v) => DimInfo { value: *v, symbol: String::new() },
            Dim::Sym(_) => DimInfo { value: bound.unwrap_or(-1), symbol: d.to_string() },
        }
    }
}

impl Storage {
    pub fn dynamic() -> Self {
        Storage { kind: StorageKind::Dynamic as i32, ..Default::default() }
    }
    pub fn weight(index: u32) -> Self {
        Storage { kind: StorageKind::Weight as i32, index, ..Default::default() }
    }
    pub fn alias(of: u32) -> Self {
        Storage { kind: StorageKind::Alias as i32, index: of, ..Default::default() }
    }
    pub fn state(index: u32) -> Self {
        Storage { kind: StorageKind::State as i32, index, ..Default::default() }
    }
    pub fn arena(buffer: u32, offset: u64, capacity: u64) -> Self {
        Storage { kind: StorageKind::Arena as i32, index: buffer, offset, capacity }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn program_round_trips_through_bytes() {
        let p = Program {
            values: vec![ValueInfo {
                name: "x".into(),
                dtype: 1,
                dims: vec![],
                storage: Some(Storage::arena(0, 64, 128)),
            }],
            steps: vec![Step {
                op: "Relu".into(),
                inputs: vec![0, NO_VALUE],
                outputs: vec![0],
                attrs: vec![Attribute::ints("perm", vec![1, 0])],
                ..Default::default()
            }],
            inputs: vec![0],
            outputs: vec![0],
            buffers: vec![192],
            alignment: 64,
            ..Default::default()
        };
        let bytes = p.encode_to_vec();
        assert_eq!(Program::decode(bytes.as_slice()).unwrap(), p);
    }
}
