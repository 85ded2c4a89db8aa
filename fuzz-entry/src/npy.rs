//! `.npy` and `.npz` input files, as `kiln run --input`/`--inputs` and `kiln check` read them.

use std::io::Cursor;

/// The first byte picks the reader (even: `.npy`, odd: `.npz`); the rest is the file.
pub fn read_tensors(data: &[u8]) -> Result<(), String> {
    let Some((&which, file)) = data.split_first() else { return Err("empty input".into()) };
    if which % 2 == 0 {
        kiln_formats::npy::from_npy_bytes(file, "fuzz.npy").map_err(|e| e.to_string())?;
    } else {
        kiln_formats::npy::read_npz_from(Cursor::new(file), "fuzz.npz").map_err(|e| e.to_string())?;
    }
    Ok(())
}
