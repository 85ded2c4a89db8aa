// Batched O[b] = alpha * A[b] B[b] (+ beta * C), tiled 16 x 16 through workgroup memory. A and B
// are read through (row, column) strides, so transposed operands need no copy. P: [M, N, K,
// batches, a_row, a_col, b_row, b_col, alpha, beta, has_c, c_row, c_col, -, -, -, then per batch
// (a_offset, b_offset)]. O is dense [batches, M, N].
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
@group(0) @binding(2) var<storage, read_write> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

var<workgroup> ta: array<f32, 256>;
var<workgroup> tb: array<f32, 256>;
var<workgroup> k_shared: u32;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // The K loop holds barriers, so its bound must be uniform: loaded once through workgroup memory.
    if (lid.x == 0u && lid.y == 0u) {
        k_shared = P[2];
    }
    let K = workgroupUniformLoad(&k_shared);
    let M = P[0];
    let N = P[1];
    let b = wid.z;
    let a_off = P[16u + 2u * b];
    let b_off = P[17u + 2u * b];
    let row = wid.y * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < K; k0 += 16u) {
        let ka = k0 + lid.x;
        var av = 0.0;
        if (row < M && ka < K) {
            av = A[a_off + row * P[4] + ka * P[5]];
        }
        ta[lid.y * 16u + lid.x] = av;
        let kb = k0 + lid.y;
        var bv = 0.0;
        if (kb < K && col < N) {
            bv = B[b_off + kb * P[6] + col * P[7]];
        }
        tb[lid.y * 16u + lid.x] = bv;
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            acc += ta[lid.y * 16u + kk] * tb[kk * 16u + lid.x];
        }
        workgroupBarrier();
    }
    if (row < M && col < N) {
        var r = pf(8u) * acc;
        if (P[10] != 0u) {
            r += pf(9u) * C[row * P[11] + col * P[12]];
        }
        O[b * M * N + row * N + col] = r;
    }
}
