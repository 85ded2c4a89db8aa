// LayerNormalization / RMSNormalization of each row of `len` elements, one workgroup per row:
// O = (X - mean) / sqrt(var + eps) * S + B, or X / sqrt(mean(X^2) + eps) * S (+ B).
// P: [rows, len, eps, has_bias, rms].
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> S: array<f32>;
@group(0) @binding(3) var<storage, read_write> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

var<workgroup> red: array<f32, 256>;

fn row_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    let len = select(0u, P[1], r < P[0]);
    let base = r * len;
    let n = f32(max(len, 1u));
    // Both sums run for RMS too: a barrier may not sit under a branch on a loaded value.
    var s = 0.0;
    for (var j = lid; j < len; j += WG) {
        s += X[base + j];
    }
    let mean = select(row_sum(s, lid) / n, 0.0, P[4] != 0u);
    var q = 0.0;
    for (var j = lid; j < len; j += WG) {
        let d = X[base + j] - mean;
        q += d * d;
    }
    let inv = 1.0 / sqrt(row_sum(q, lid) / n + pf(2u));
    for (var j = lid; j < len; j += WG) {
        var y = (X[base + j] - mean) * inv * S[j];
        if (P[3] != 0u) {
            y += B[j];
        }
        O[base + j] = y;
    }
}
