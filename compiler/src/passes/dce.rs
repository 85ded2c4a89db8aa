//! Dead code elimination: drops nodes none of whose outputs reach a graph output.

use crate::ir::Graph;

/// Removes dead nodes; returns how many were removed.
pub fn eliminate(g: &mut Graph) -> usize {
    let mut live = vec![false; g.values.len()];
    for &o in &g.outputs {
        live[o] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|&o| live[o]) {
            keep[i] = true;
            for id in n.inputs.iter().flatten() {
                live[*id] = true;
            }
        }
    }
    let before = g.nodes.len();
    let mut i = 0;
    g.nodes.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    before - g.nodes.len()
}
