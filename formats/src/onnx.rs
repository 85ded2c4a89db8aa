//! ONNX decoding: `ModelProto` through onnx-protobuf, tensor data inline or in external files
//! mapped with memmap2. External data is never copied; every offset and length is checked
//! against the file before a byte is touched.

use crate::bytes::{AlignedBuf, SharedBytes, BUFFER_ALIGN};
use crate::dtype::DType;
use crate::error::FormatError;
use crate::tensor::byte_size;
use onnx_protobuf::{tensor_proto::DataLocation, Message, ModelProto, TensorProto};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use onnx_protobuf as proto;

/// A decoded model and the means to resolve its tensors' bytes.
pub struct OnnxModel {
    pub proto: ModelProto,
    /// Folder external-data locations are relative to.
    base_dir: Option<PathBuf>,
    /// Display name for messages (the model's path).
    pub source: String,
    external: Mutex<HashMap<String, SharedBytes>>,
}

/// A tensor's type, shape and bytes (inline data copied once, external data mapped).
#[derive(Clone, Debug)]
pub struct TensorData {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub bytes: SharedBytes,
}

/// Reads and decodes an ONNX file; external data is resolved relative to its folder on demand.
pub fn load(path: &Path) -> Result<OnnxModel, FormatError> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: the map is read once by the decoder and dropped before this function returns.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    let base = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).map(Path::to_path_buf);
    parse(&map, base, &path.display().to_string())
}

/// Decodes ONNX bytes; `base_dir` is where external data files are looked up (none: refuse them).
pub fn parse(bytes: &[u8], base_dir: Option<PathBuf>, source: &str) -> Result<OnnxModel, FormatError> {
    let not_onnx = |reason: String| FormatError::NotOnnx { path: source.into(), reason };
    let proto = ModelProto::parse_from_bytes(bytes).map_err(|e| not_onnx(format!("protobuf decoding failed: {e}")))?;
    if proto.graph.is_none() {
        return Err(not_onnx("the ModelProto has no graph".into()));
    }
    if proto.ir_version <= 0 {
        return Err(not_onnx(format!("ir_version is {} (must be positive)", proto.ir_version)));
    }
    Ok(OnnxModel { proto, base_dir, source: source.into(), external: Mutex::new(HashMap::new()) })
}

impl OnnxModel {
    /// Opset version imported for `domain` ("" or "ai.onnx" for the default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| {
            if d == "ai.onnx" {
                String::new()
            } else {
                d.to_string()
            }
        };
        self.proto.opset_import.iter().find(|o| norm(&o.domain) == norm(domain)).map(|o| o.version)
    }

    /// The bytes of `t`, taking its inline data out of the proto (no copy when aligned) or mapping
    /// its external file.
    pub fn take_tensor(&self, t: &mut TensorProto) -> Result<TensorData, FormatError> {
        let name = t.name.clone();
        let dtype = DType::from_onnx_code(t.data_type).ok_or_else(|| {
            FormatError::tensor(&name, format!("data type {} is not supported", DType::onnx_name(t.data_type)))
        })?;
        let mut dims = Vec::with_capacity(t.dims.len());
        for &d in &t.dims {
            dims.push(
                usize::try_from(d)
                    .map_err(|_| FormatError::tensor(&name, format!("negative dim {d} in {:?}", t.dims)))?,
            );
        }
        let want = byte_size(dtype, &dims)
            .ok_or_else(|| FormatError::tensor(&name, format!("dims {:?} overflow the address space", t.dims)))?;
        if !t.segment.is_none() {
            return Err(FormatError::tensor(&name, "segmented tensors are not supported"));
        }
        let bytes = if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
            self.external_bytes(t, want)?
        } else if !t.raw_data.is_empty() || want == 0 {
            let raw = std::mem::take(&mut t.raw_data);
            if raw.len() != want {
                return Err(FormatError::tensor(
                    &name,
                    format!("raw_data holds {} bytes but {dtype} dims {:?} need {want}", raw.len(), t.dims),
                ));
            }
            if (raw.as_ptr() as usize).is_multiple_of(BUFFER_ALIGN) {
                SharedBytes::new(Arc::new(raw))
            } else {
                SharedBytes::new(Arc::new(AlignedBuf::from_bytes(&raw)))
            }
        } else {
            SharedBytes::new(Arc::new(typed_fields(t, dtype, want)?))
        };
        Ok(TensorData { dtype, dims, bytes })
    }

    fn external_bytes(&self, t: &TensorProto, want: usize) -> Result<SharedBytes, FormatError> {
        let name = &t.name;
        let mut location = None;
        let (mut offset, mut length) = (0u64, None);
        for kv in &t.external_data {
            let parse = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| FormatError::tensor(name, format!("external_data {} = '{v}' is not a number", kv.key)))
            };
            match kv.key.as_str() {
                "location" => location = Some(kv.value.clone()),
                "offset" => offset = parse(&kv.value)?,
                "length" => length = Some(parse(&kv.value)?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| FormatError::tensor(name, "external data has no location"))?;
        let rel = Path::new(&location);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(FormatError::tensor(
                name,
                format!("external data location '{location}' must be a plain relative path inside the model's folder"),
            ));
        }
        let file = self.map_external(&location, name)?;
        let length = length.unwrap_or(want as u64);
        if length != want as u64 {
            return Err(FormatError::tensor(
                name,
                format!("external data length is {length} bytes but its dims need {want}"),
            ));
        }
        let end = offset.checked_add(length).filter(|&e| e <= file.len() as u64).ok_or_else(|| {
            FormatError::tensor(
                name,
                format!(
                    "external data bytes {offset}..{} lie outside '{location}' ({} bytes)",
                    offset.saturating_add(length),
                    file.len()
                ),
            )
        })?;
        let range = offset as usize..end as usize;
        let bytes = file.slice(range).expect("range checked against the file length");
        if (bytes.as_slice().as_ptr() as usize).is_multiple_of(16) {
            Ok(bytes)
        } else {
            // Mapped data at an unaligned offset would fault in SIMD kernels; copy it once.
            Ok(SharedBytes::copy_from(bytes.as_slice()))
        }
    }

    fn map_external(&self, location: &str, tensor: &str) -> Result<SharedBytes, FormatError> {
        let mut cache = self.external.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.get(location) {
            return Ok(b.clone());
        }
        let base = self.base_dir.as_ref().ok_or_else(|| {
            FormatError::tensor(tensor, format!("external data '{location}' but the model was not read from a file"))
        })?;
        let path = base.join(location);
        let file = File::open(&path).map_err(|e| {
            FormatError::tensor(tensor, format!("cannot open external data file {}: {e}", path.display()))
        })?;
        // SAFETY: read-only map; kiln documents that model files must not be truncated while in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
        let bytes = SharedBytes::new(Arc::new(map));
        cache.insert(location.to_string(), bytes.clone());
        Ok(bytes)
    }
}

/// Decodes a serialized `TensorProto` (the `input_0.pb` files of ONNX test data) into a named
/// tensor; external data is refused.
pub fn read_tensor_proto(bytes: &[u8], source: &str) -> Result<(String, crate::Tensor), FormatError> {
    let mut t = TensorProto::parse_from_bytes(bytes)
        .map_err(|e| FormatError::Invalid(format!("{source}: not a TensorProto: {e}")))?;
    let holder = OnnxModel {
        proto: ModelProto::new(),
        base_dir: None,
        source: source.into(),
        external: Mutex::new(HashMap::new()),
    };
    let data = holder.take_tensor(&mut t)?;
    Ok((t.name.clone(), crate::Tensor::from_bytes(data.dtype, &data.dims, data.bytes.as_slice())?))
}

/// Tensor bytes from the typed repeated fields (`float_data`, `int64_data`, ...).
fn typed_fields(t: &TensorProto, dtype: DType, want: usize) -> Result<AlignedBuf, FormatError> {
    let n = want / dtype.size();
    // Not `with_capacity(want)`: `want` comes from the dims, which may claim far more than the
    // field holds (found by fuzzing: 10^16 bytes for an empty field). Each branch checks the
    // field's count first, so `out` only ever grows to data that is there.
    let mut out: Vec<u8> = Vec::new();
    let count_err = |field: &str, got: usize| {
        FormatError::tensor(&t.name, format!("{field} holds {got} values but dims {:?} need {n}", t.dims))
    };
    match dtype {
        DType::F32 => {
            if t.float_data.len() != n {
                return Err(count_err("float_data", t.float_data.len()));
            }
            t.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::F64 => {
            if t.double_data.len() != n {
                return Err(count_err("double_data", t.double_data.len()));
            }
            t.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::I64 => {
            if t.int64_data.len() != n {
                return Err(count_err("int64_data", t.int64_data.len()));
            }
            t.int64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::U32 | DType::U64 => {
            if t.uint64_data.len() != n {
                return Err(count_err("uint64_data", t.uint64_data.len()));
            }
            for &v in &t.uint64_data {
                out.extend_from_slice(&v.to_le_bytes()[..dtype.size()]);
            }
        }
        _ => {
            // int32_data carries every narrower type, f16 and bf16 as their bit patterns.
            if t.int32_data.len() != n {
                return Err(count_err("int32_data", t.int32_data.len()));
            }
            for &v in &t.int32_data {
                out.extend_from_slice(&v.to_le_bytes()[..dtype.size()]);
            }
        }
    }
    Ok(AlignedBuf::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{GraphProto, StringStringEntryProto};

    fn model_with(t: TensorProto) -> (OnnxModel, TensorProto) {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.graph = Some(GraphProto::new()).into();
        let bytes = m.write_to_bytes().unwrap();
        let dir = std::env::temp_dir();
        (parse(&bytes, Some(dir), "test.onnx").unwrap(), t)
    }

    #[test]
    fn rejects_non_onnx_bytes() {
        assert!(parse(b"hello world, this is not onnx", None, "x").is_err());
        assert!(parse(&[], None, "x").is_err());
    }

    #[test]
    fn typed_fields_decode() {
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.data_type = 7;
        t.dims = vec![2];
        t.int64_data = vec![-1, 5];
        let (m, mut t) = model_with(t);
        let d = m.take_tensor(&mut t).unwrap();
        assert_eq!(d.bytes.as_slice(), [(-1i64).to_le_bytes(), 5i64.to_le_bytes()].concat());
    }

    #[test]
    fn huge_dims_over_an_empty_typed_field_are_named_not_allocated() {
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.data_type = 1;
        t.dims = vec![1_000_000, 1_000_000, 1_000];
        let (m, mut t) = model_with(t);
        let err = m.take_tensor(&mut t).unwrap_err().to_string();
        assert!(err.contains("'w'") && err.contains("float_data holds 0 values"), "{err}");
    }

    #[test]
    fn external_data_out_of_range_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.graph = Some(GraphProto::new()).into();
        let model = parse(&m.write_to_bytes().unwrap(), Some(dir.path().to_path_buf()), "m.onnx").unwrap();
        let mut t = TensorProto::new();
        t.name = "big".into();
        t.data_type = 1;
        t.dims = vec![8];
        t.data_location = DataLocation::EXTERNAL.into();
        for (k, v) in [("location", "w.bin"), ("offset", "0"), ("length", "32")] {
            let mut e = StringStringEntryProto::new();
            e.key = k.into();
            e.value = v.into();
            t.external_data.push(e);
        }
        let err = model.take_tensor(&mut t.clone()).unwrap_err().to_string();
        assert!(err.contains("'big'") && err.contains("0..32") && err.contains("16 bytes"), "{err}");
        t.external_data[0].value = "../w.bin".into();
        assert!(model.take_tensor(&mut t.clone()).unwrap_err().to_string().contains("plain relative path"));
        t.external_data[0].value = "missing.bin".into();
        assert!(model.take_tensor(&mut t).unwrap_err().to_string().contains("cannot open external data"));
    }
}
