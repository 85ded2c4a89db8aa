//! `kiln run MODEL.onnx --input NAME=FILE.npy ...`: run a model on tensors.

use anyhow::{bail, Context, Result};
use kiln_compiler::CompileOptions;
use kiln_formats::{npy, Dim, Tensor};
use kiln_runtime::{Model, Session, TensorRef};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An .onnx model.
    model: PathBuf,
    /// An input tensor, as NAME=FILE.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// All inputs from one .npz archive (array names = input names).
    #[arg(long = "inputs", value_name = "FILE.npz")]
    npz: Option<PathBuf>,
    /// Write NAME.npy per output here instead of printing a summary.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

pub fn main(args: Args) -> Result<()> {
    let mut given: HashMap<String, Tensor> = HashMap::new();
    if let Some(npz) = &args.npz {
        for (name, t) in npy::read_npz(npz)? {
            given.insert(name, t);
        }
    }
    for spec in &args.inputs {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--input '{spec}' must look like NAME=FILE.npy"))?;
        given.insert(name.to_string(), npy::read_npy(file.as_ref())?);
    }
    let opts = CompileOptions::default();
    let mut graph = kiln_compiler::import_file(&args.model, &opts)
        .with_context(|| format!("importing {}", args.model.display()))?;
    // The inputs fix every symbolic dim, so the plan is exact for this run.
    graph.fix_dims(&dims_from_inputs(&graph, &given)?);
    let compiled = kiln_compiler::compile_graph(graph, &opts)
        .with_context(|| format!("compiling {}", args.model.display()))?;
    let model = Model::new(compiled.program, &compiled.weights)?;
    let names: Vec<String> = model.input_names().iter().map(|s| s.to_string()).collect();
    let mut ordered = Vec::with_capacity(names.len());
    for n in &names {
        match given.get(n) {
            Some(t) => ordered.push(TensorRef::from_tensor(t)),
            None => bail!(
                "input '{n}' was not given; pass --input {n}=FILE.npy (the model takes: {})",
                names.join(", ")
            ),
        }
    }
    if let Some(extra) = given.keys().find(|k| !names.contains(k)) {
        bail!(
            "the model has no input named '{extra}' (it takes: {})",
            names.join(", ")
        );
    }
    let outputs = Session::new(model.clone()).run(&ordered)?;
    let out_names: Vec<String> = model.output_names().iter().map(|s| s.to_string()).collect();
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, t) in out_names.iter().zip(&outputs) {
                let path = dir.join(format!("{}.npy", sanitize(name)));
                npy::write_npy(&path, t).with_context(|| format!("writing output '{name}'"))?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            for (name, t) in out_names.iter().zip(&outputs) {
                let shown: Vec<String> = (0..t.numel().min(8))
                    .map(|i| format!("{}", t.get_f64(i)))
                    .collect();
                let more = if t.numel() > 8 { ", ..." } else { "" };
                println!(
                    "{name}: {} {:?} [{}{more}]",
                    t.dtype,
                    t.shape,
                    shown.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Values of the symbolic input dims, read off the given tensors.
fn dims_from_inputs(
    g: &kiln_compiler::Graph,
    given: &HashMap<String, Tensor>,
) -> Result<HashMap<String, i64>> {
    let mut fixed: HashMap<String, i64> = HashMap::new();
    for &i in &g.inputs {
        let v = &g.values[i];
        let (Some(t), Some(shape)) = (given.get(&v.name), &v.shape) else {
            continue;
        };
        if t.shape.len() != shape.len() {
            bail!(
                "input '{}' must have rank {} (shape [{}]), got shape {:?}",
                v.name,
                shape.len(),
                join(shape),
                t.shape
            );
        }
        for (d, &got) in shape.iter().zip(&t.shape) {
            let syms = d.symbols();
            if let (Some(name), true) = (
                syms.first(),
                syms.len() == 1 && *d == Dim::sym(syms.first().unwrap()),
            ) {
                if let Some(prev) = fixed
                    .insert(name.clone(), got as i64)
                    .filter(|&p| p != got as i64)
                {
                    bail!(
                        "dim '{name}' is {prev} in one input and {got} in '{}'",
                        v.name
                    );
                }
            }
        }
    }
    Ok(fixed)
}

fn join(shape: &[Dim]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Output names can hold '/' or ':' (e.g. `present.0/key`); keep file names flat.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
