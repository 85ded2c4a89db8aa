// Softmax (or LogSoftmax) of each row: X viewed as [outer, len, inner], one workgroup per
// (outer, inner) row. P: [rows, len, inner, log].
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // No early return: every invocation must reach the barriers.
    let r = wid.y * nwg.x + wid.x;
    let valid = r < P[0];
    let len = select(0u, P[1], valid);
    let inner = P[2];
    let base = (r / inner) * len * inner + r % inner;
    // f32::MIN exactly (a row of it, as a fully masked attention row, must find it as its max).
    var m = -3.4028234663852886e38;
    for (var j = lid; j < len; j += WG) {
        m = max(m, X[base + j * inner]);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var j = lid; j < len; j += WG) {
        sum += exp(X[base + j * inner] - m);
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    sum = red[0];
    for (var j = lid; j < len; j += WG) {
        let e = X[base + j * inner] - m;
        if (P[3] != 0u) {
            O[base + j * inner] = e - log(sum);
        } else {
            O[base + j * inner] = exp(e) / sum;
        }
    }
}
