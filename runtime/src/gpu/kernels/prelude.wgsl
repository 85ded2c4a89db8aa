// Shared by every kernel: binding 0 holds the call's parameters as 32-bit words (sizes, strides,
// f32 constants by their bits). Data bindings are read_write even when only read: wgpu forbids a
// read-only and a writable binding of the same buffer in one dispatch, and arena values share
// buffers.
@group(0) @binding(0) var<storage, read_write> P: array<u32>;

const WG: u32 = 256u;

// The invocation's index in a 1-D launch spread over a 2-D grid (a grid side is at most 65535).
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn pf(i: u32) -> f32 {
    return bitcast<f32>(P[i]);
}

fn pi(i: u32) -> i32 {
    return bitcast<i32>(P[i]);
}

// The element offset of flat index `i` of the shape at P[shape_at..] read through the strides at
// P[strides_at..] (rank `rank`): how broadcasting, transposed and reduced reads find their element.
fn strided(i: u32, rank: u32, shape_at: u32, strides_at: u32) -> u32 {
    var rem = i;
    var at = 0u;
    for (var d = 0u; d < rank; d++) {
        let ax = rank - 1u - d;
        at += (rem % P[shape_at + ax]) * P[strides_at + ax];
        rem = rem / P[shape_at + ax];
    }
    return at;
}

// [`strided`] with signed strides (reversed slices) from a signed base.
fn strided_signed(i: u32, rank: u32, base: i32, shape_at: u32, strides_at: u32) -> i32 {
    var rem = i;
    var at = base;
    for (var d = 0u; d < rank; d++) {
        let ax = rank - 1u - d;
        at += i32(rem % P[shape_at + ax]) * pi(strides_at + ax);
        rem = rem / P[shape_at + ax];
    }
    return at;
}
