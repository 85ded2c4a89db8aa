// O = A op B with numpy broadcasting. P: [n, op, rank, shape[8], a_strides[8], b_strides[8]]
// (element strides, 0 along broadcast axes).
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
@group(0) @binding(2) var<storage, read_write> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

// Pow as C's powf: a negative base takes integer exponents only.
fn pow_(a: f32, b: f32) -> f32 {
    if (b == 2.0) {
        return a * a;
    }
    if (b == 1.0) {
        return a;
    }
    if (b == 0.0) {
        return 1.0;
    }
    if (b == 0.5) {
        return sqrt(a);
    }
    if (a >= 0.0) {
        return pow(a, b);
    }
    if (b != floor(b)) {
        return bitcast<f32>(0x7fc00000u);
    }
    let m = pow(-a, b);
    return select(m, -m, (abs(b) % 2.0) == 1.0);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= P[0]) {
        return;
    }
    let a = A[strided(i, P[2], 3u, 11u)];
    let b = B[strided(i, P[2], 3u, 19u)];
    var r = 0.0;
    switch P[1] {
        case 0u: { r = a + b; }
        case 1u: { r = a - b; }
        case 2u: { r = a * b; }
        case 3u: { r = a / b; }
        case 4u: { r = pow_(a, b); }
        case 5u: { r = max(a, b); }
        case 6u: { r = min(a, b); }
        default: {}
    }
    O[i] = r;
}
