// The one data-movement kernel: for every index c of `shape`, O[out_base + c . out_strides] =
// X[in_base + c . in_strides]. Transpose permutes the input strides, Slice offsets and scales
// them, Expand zeroes them along broadcast axes, Concat and Split move one piece per launch.
// Elements are any 4-byte type. P: [n, rank, in_base, out_base, shape[8], in_strides[8],
// out_strides[8]] (bases and strides signed).
@group(0) @binding(1) var<storage, read_write> X: array<u32>;
@group(0) @binding(2) var<storage, read_write> O: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= P[0]) {
        return;
    }
    let src = strided_signed(i, P[1], pi(2u), 4u, 12u);
    let dst = strided_signed(i, P[1], pi(3u), 4u, 20u);
    O[u32(dst)] = X[u32(src)];
}
