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
    let rank = P[1];
    var rem = i;
    var ic = 0u;
    var ix = 0u;
    var iy = 0u;
    for (var d = 0u; d < rank; d++) {
        let ax = rank - 1u - d;
        let c = rem % P[2u + ax];
        rem = rem / P[2u + ax];
        ic += c * P[10u + ax];
        ix += c * P[18u + ax];
        iy += c * P[26u + ax];
    }
    let cond = (C[ic / 4u] >> ((ic % 4u) * 8u)) & 0xffu;
    O[i] = select(Y[iy], X[ix], cond != 0u);
}
