// O = f32(X). P: [n, from] with from 0 = f32, 1 = int32, 2 = bool (one byte per element).
@group(0) @binding(1) var<storage, read_write> X: array<u32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= P[0]) {
        return;
    }
    switch P[1] {
        case 1u: { O[i] = f32(bitcast<i32>(X[i])); }
        case 2u: { O[i] = select(0.0, 1.0, ((X[i / 4u] >> ((i % 4u) * 8u)) & 0xffu) != 0u); }
        default: { O[i] = bitcast<f32>(X[i]); }
    }
}
