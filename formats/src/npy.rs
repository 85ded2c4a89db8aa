//! NumPy `.npy` and `.npz` files: the tensor exchange format of `kiln run` and `kiln check`.

use crate::dtype::DType;
use crate::error::FormatError;
use crate::tensor::{byte_size, Tensor};
use std::io::{Read, Seek, Write};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(dtype: DType) -> Result<&'static str, FormatError> {
    Ok(match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::BF16 => {
            return Err(FormatError::Invalid("bfloat16 has no .npy type; cast the output to float32".into()))
        }
    })
}

fn dtype_of_descr(d: &str) -> Option<DType> {
    let d = d.strip_prefix(['<', '|', '=']).unwrap_or(d);
    Some(match d {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => return None,
    })
}

/// Serialises a tensor as `.npy` bytes (format version 1.0).
pub fn to_npy_bytes(t: &Tensor) -> Result<Vec<u8>, FormatError> {
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!("({})", t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", descr(t.dtype)?);
    // Pad so the data starts at a multiple of 64 bytes, newline-terminated as numpy writes it.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let hlen = u16::try_from(header.len()).map_err(|_| FormatError::Invalid("npy header too long".into()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + t.bytes().len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(t.bytes());
    Ok(out)
}

/// Parses `.npy` bytes; `what` names the source in errors.
pub fn from_npy_bytes(bytes: &[u8], what: &str) -> Result<Tensor, FormatError> {
    let bad = |reason: String| FormatError::Invalid(format!("{what}: not a valid .npy file: {reason}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(|| bad("truncated header".into()))?;
            (u32::from_le_bytes(b.try_into().unwrap()) as usize, 12)
        }
        v => return Err(bad(format!("unsupported version {v}"))),
    };
    let header = bytes.get(start..start.saturating_add(hlen)).ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        Some(header[i + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr =
        field("descr").and_then(|s| s.strip_prefix('\'')?.split('\'').next()).ok_or_else(|| bad("no descr".into()))?;
    let dtype = dtype_of_descr(descr)
        .ok_or_else(|| bad(format!("dtype '{descr}' is not supported (little-endian numbers and bool only)")))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("fortran_order arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let shape_txt =
        field("shape").and_then(|s| s.strip_prefix('(')?.split(')').next()).ok_or_else(|| bad("no shape".into()))?;
    let mut shape = Vec::new();
    for part in shape_txt.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(part.parse::<usize>().map_err(|_| bad(format!("bad shape entry '{part}'")))?);
    }
    let data = &bytes[start + hlen..];
    let want = byte_size(dtype, &shape).ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if data.len() != want {
        return Err(bad(format!("{dtype} shape {shape:?} needs {want} data bytes, file has {}", data.len())));
    }
    Tensor::from_bytes(dtype, &shape, data)
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor, FormatError> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    from_npy_bytes(&bytes, &path.display().to_string())
}

/// Writes a `.npy` file.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), FormatError> {
    std::fs::write(path, to_npy_bytes(t)?).map_err(|e| FormatError::io(path, e))
}

/// Reads every array of a `.npz` archive, in archive order, named without the `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    read_npz_from(file, &path.display().to_string())
}

/// Reads every array of a `.npz` archive held by `reader`; `what` names the source in errors.
pub fn read_npz_from(reader: impl Read + Seek, what: &str) -> Result<Vec<(String, Tensor)>, FormatError> {
    let bad = |reason: String| FormatError::Invalid(format!("{what}: not a valid .npz file: {reason}"));
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().to_string();
        let size = entry.size();
        let mut bytes = Vec::new();
        // Bound the read by the declared size so a lying header cannot exhaust memory.
        (&mut entry).take(size).read_to_end(&mut bytes).map_err(|e| bad(format!("entry {name}: {e}")))?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((key, from_npy_bytes(&bytes, &format!("{what}:{name}"))?));
    }
    Ok(out)
}

/// Writes tensors as an uncompressed `.npz` archive.
pub fn write_npz(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), FormatError> {
    let file = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let err = |e: String| FormatError::Invalid(format!("writing {}: {e}", path.display()));
    for (name, t) in tensors {
        zip.start_file(format!("{name}.npy"), opts).map_err(|e| err(e.to_string()))?;
        zip.write_all(&to_npy_bytes(t)?).map_err(|e| err(e.to_string()))?;
    }
    zip.finish().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_every_dtype_shape() {
        for shape in [vec![], vec![3], vec![2, 3], vec![0, 4]] {
            let n: usize = shape.iter().product();
            let t = Tensor::from_vec(&shape, (0..n as i64).collect::<Vec<i64>>());
            let back = from_npy_bytes(&to_npy_bytes(&t).unwrap(), "t").unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(back.bytes(), t.bytes());
        }
        let b = Tensor::from_bools(&[2], &[true, false]);
        assert_eq!(from_npy_bytes(&to_npy_bytes(&b).unwrap(), "b").unwrap().dtype, DType::Bool);
    }

    #[test]
    fn npy_rejects_bad_input() {
        assert!(from_npy_bytes(b"garbage", "x").is_err());
        let mut bytes = to_npy_bytes(&Tensor::from_vec(&[4], vec![1f32; 4])).unwrap();
        bytes.truncate(bytes.len() - 1);
        let err = from_npy_bytes(&bytes, "x").unwrap_err().to_string();
        assert!(err.contains("needs 16 data bytes"), "{err}");
    }

    #[test]
    fn npz_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let ts = vec![
            ("x".to_string(), Tensor::from_vec(&[2], vec![1.5f32, 2.5])),
            ("y".into(), Tensor::from_vec(&[1], vec![7i64])),
        ];
        write_npz(&p, &ts).unwrap();
        let back = read_npz(&p).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].0, "y");
        assert_eq!(back[0].1.as_slice::<f32>().unwrap(), &[1.5, 2.5]);
    }
}
