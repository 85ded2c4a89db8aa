//! Lists the nodes whose outputs got fresh (data-dependent) dims during inference: where shape
//! arithmetic could not be followed. `cargo run -p kiln-compiler --example fresh_dims MODEL.onnx`
use kiln_compiler::{import_file, passes, CompileOptions};

fn main() {
    let path = std::env::args().nth(1).expect("usage: fresh_dims MODEL.onnx");
    let mut g = import_file(path.as_ref(), &CompileOptions::default()).expect("import");
    passes::infer::infer(&mut g).expect("infer");
    let fresh = |id: usize| g.values[id].shape.iter().flatten().any(|d| d.to_string().contains('#'));
    for n in &g.nodes {
        if n.outputs.iter().any(|&o| fresh(o)) && !n.inputs.iter().flatten().any(|&i| fresh(i)) {
            let ins: Vec<String> = n
                .inputs
                .iter()
                .flatten()
                .map(|&i| format!("{}: {:?} = {:?}", g.values[i].name, g.values[i].shape, g.values[i].sym_value))
                .collect();
            println!("{} '{}' <- {}", n.op, n.name, ins.join(" | "));
        }
    }
}
