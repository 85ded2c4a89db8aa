// Reduction over any set of axes, one invocation per output element. The input is read through
// its strides twice: over the kept axes (the reduced ones set to 1) for the output element's
// start, and over the reduced axes (the kept ones set to 1) for the elements it folds.
// P: [n, rank, kind (0 sum, 1 mean, 2 max, 3 min), count, kept[8], reduced[8], strides[8]].
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= P[0]) {
        return;
    }
    let rank = P[1];
    let kind = P[2];
    let base = strided(i, rank, 4u, 20u);
    var acc = 0.0;
    // -inf and +inf, as the CPU kernels and ONNX give for an empty reduction.
    if (kind == 2u) {
        acc = bitcast<f32>(0xff800000u);
    } else if (kind == 3u) {
        acc = bitcast<f32>(0x7f800000u);
    }
    for (var r = 0u; r < P[3]; r++) {
        let x = X[base + strided(r, rank, 12u, 20u)];
        switch kind {
            case 2u: { acc = max(acc, x); }
            case 3u: { acc = min(acc, x); }
            default: { acc += x; }
        }
    }
    if (kind == 1u) {
        acc = acc / f32(P[3]);
    }
    O[i] = acc;
}
