//! The last line of an error: what the user can change. Most messages already end with the flag
//! to pass; for the rest (missing files, wrong kinds of file, damaged bundles, buffer limits) a
//! `hint:` line is derived from the error's causes.

use kiln_compiler::CompileError;
use kiln_formats::bundle::BundleError;
use kiln_formats::FormatError;
use kiln_runtime::bundle::LoadError;
use std::io::ErrorKind;

const INPUT_KINDS: &str = "an .onnx file, an export folder holding model.onnx, or a .kiln bundle";
const RECOMPILE: &str =
    "the bundle is damaged or was written by another kiln: recompile it with `kiln compile MODEL -o OUT.kiln` (bundles are never repaired in place)";

/// A hint for `e`, unless its message already says what to do.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    let text = format!("{e:#}");
    let acts = ["; pass ", "pass --", "recompile", "upgrade kiln", "regenerate"];
    if acts.iter().any(|a| text.contains(a)) {
        return None;
    }
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::NotFound => {
                    return Some(format!(
                        "no such file: check the path (kiln reads {INPUT_KINDS}; tensors as .npy/.npz)"
                    ))
                }
                ErrorKind::PermissionDenied => {
                    return Some("permission denied: check the file's permissions or use another path".into())
                }
                _ => {}
            }
        }
        let bundle = cause.downcast_ref::<BundleError>().or(match cause.downcast_ref::<LoadError>() {
            Some(LoadError::Bundle(b)) => Some(b),
            _ => None,
        });
        match bundle {
            Some(BundleError::NotBundle(_)) => {
                return Some(
                    "this command takes a .kiln bundle: make one with `kiln compile MODEL.onnx -o MODEL.kiln`".into(),
                )
            }
            Some(BundleError::Checksum { .. } | BundleError::Entry { .. } | BundleError::Manifest(_)) => {
                return Some(RECOMPILE.into())
            }
            _ => {}
        }
        if matches!(
            cause.downcast_ref::<LoadError>(),
            Some(LoadError::Program { .. } | LoadError::Misaligned { .. } | LoadError::Manifest(_))
        ) {
            return Some(RECOMPILE.into());
        }
        let format = cause.downcast_ref::<FormatError>().or(match cause.downcast_ref::<CompileError>() {
            Some(CompileError::Format(f)) => Some(f),
            _ => None,
        });
        if let Some(FormatError::NotOnnx { .. }) = format {
            return Some(format!("kiln reads {INPUT_KINDS}: pass one of those"));
        }
        if let Some(CompileError::Unsupported(_)) = cause.downcast_ref::<CompileError>() {
            return Some("`kiln inspect MODEL` lists the ops kiln cannot run; re-export the model without them".into());
        }
    }
    if text.contains("holds no model.onnx") {
        return Some("pass the .onnx file itself, or a folder holding model.onnx".into());
    }
    if text.contains("largest buffer") {
        return Some(
            "pass a larger --max-buffer (at least one column of the weight named above), or --target cpu, which has no buffer limit"
                .into(),
        );
    }
    None
}
