// O = C ? X : Y with broadcasting; C is bool (one byte per element). P: [n, rank, shape[8],
// c_strides[8], x_strides[8], y_strides[8]].
@group(0) @binding(1) var<storage, read_write> C: array<u32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= P[0]) {
        return;
    }
    let ic = strided(i, P[1], 2u, 10u);
    let cond = (C[ic / 4u] >> ((ic % 4u) * 8u)) & 0xffu;
    O[i] = select(Y[strided(i, P[1], 2u, 26u)], X[strided(i, P[1], 2u, 18u)], cond != 0u);
}
