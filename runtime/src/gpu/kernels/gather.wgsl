// Gather along one axis: X viewed as [outer, axis_len, inner], indices I (m of them, int64 as
// word pairs or int32), O as [outer, m, inner]. A negative index counts from the end; one out of
// range yields 0 (the loader cannot fail a dispatch; the CPU kernel reports it instead).
// P: [n, m, axis_len, inner, indices_are_int64].
@group(0) @binding(1) var<storage, read_write> X: array<u32>;
@group(0) @binding(2) var<storage, read_write> I: array<u32>;
@group(0) @binding(3) var<storage, read_write> O: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= P[0]) {
        return;
    }
    let m = P[1];
    let len = i32(P[2]);
    let inner = P[3];
    let e = i % inner;
    let t = i / inner;
    let j = t % m;
    let outer = t / m;
    var idx = 0i;
    var ok = true;
    if (P[4] != 0u) {
        let lo = I[2u * j];
        let hi = I[2u * j + 1u];
        idx = bitcast<i32>(lo);
        // Only values that fit in 32 bits can be in range.
        ok = (hi == 0u && idx >= 0) || (hi == 0xffffffffu && idx < 0);
    } else {
        idx = bitcast<i32>(I[j]);
    }
    if (idx < 0) {
        idx += len;
    }
    if (!ok || idx < 0 || idx >= len) {
        O[i] = 0u;
        return;
    }
    O[i] = X[(outer * u32(len) + u32(idx)) * inner + e];
}
