// The M = 1 case of `matmul.wgsl` (decode: one row times a weight), one invocation per output
// column: a 16 x 16 tile would leave 15 of its 16 rows idle. Same parameters as `matmul.wgsl`,
// dispatched as a 1-D grid per batch (z).
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
@group(0) @binding(2) var<storage, read_write> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let col = (wid.y * nwg.x + wid.x) * WG + lid;
    let N = P[1];
    if (col >= N) {
        return;
    }
    let K = P[2];
    let b = wid.z;
    let a_off = P[16u + 2u * b];
    let b_off = P[17u + 2u * b] + col * P[7];
    var acc = 0.0;
    for (var k = 0u; k < K; k++) {
        acc += A[a_off + k * P[5]] * B[b_off + k * P[6]];
    }
    var r = pf(8u) * acc;
    if (P[10] != 0u) {
        r += pf(9u) * C[col * P[12]];
    }
    O[b * N + col] = r;
}
