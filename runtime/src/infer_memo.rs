//! What a step's shape inference answered the last time it ran, so that a step whose input shapes
//! and shape-giving values are unchanged skips inference: most of decode's steps, token after
//! token. Inference at run time allocates its shapes and answer (about 29 allocations per step
//! measured on SmolLM2's decode, 43 thousand per token) for an answer that rarely changes.

/// Inputs at most this many bytes long are part of the key whole, besides the kernel's value
/// inputs: scalars such as Range's bounds and CumSum's axis, which their inference reads as data.
/// (No kernel's inference reads a larger input's data.)
const SMALL_INPUT: usize = 64;

/// A present input as a memo's key holds it.
struct KeyInput {
    shape: Vec<usize>,
    /// Its bytes, for keyed inputs.
    bytes: Option<Vec<u8>>,
}

/// One step's last inference: the key it was made from and its answer.
pub(crate) struct InferMemo {
    /// Per input: absent, or present.
    inputs: Vec<Option<KeyInput>>,
    /// Shapes inference gave the step's outputs.
    pub outputs: Vec<Vec<usize>>,
    /// Bytes each output needs stored (`None` for a view of its input).
    pub lens: Vec<Option<usize>>,
}

/// The bytes of input `k` that key a memo, if it is keyed.
fn keyed<'a>(k: usize, data: Option<&'a [u8]>, value_inputs: &[usize]) -> Option<&'a [u8]> {
    data.filter(|d| value_inputs.contains(&k) || d.len() <= SMALL_INPUT)
}

impl InferMemo {
    /// A memo keyed by the step's current inputs (`slots[k]` the value of input `k`, `data[k]` its
    /// bytes), before its outputs are known.
    pub fn key(shapes: &[Vec<usize>], slots: &[Option<usize>], data: &[Option<&[u8]>], value_inputs: &[usize]) -> Self {
        let inputs = slots
            .iter()
            .zip(data)
            .enumerate()
            .map(|(k, (s, d))| {
                s.map(|s| KeyInput { shape: shapes[s].clone(), bytes: keyed(k, *d, value_inputs).map(<[u8]>::to_vec) })
            })
            .collect();
        InferMemo { inputs, outputs: Vec::new(), lens: Vec::new() }
    }

    /// Whether the step's current inputs are the ones this memo was made from.
    pub fn matches(
        &self,
        shapes: &[Vec<usize>],
        slots: &[Option<usize>],
        data: &[Option<&[u8]>],
        value_inputs: &[usize],
    ) -> bool {
        self.inputs.len() == slots.len()
            && self.inputs.iter().zip(slots).zip(data).enumerate().all(|(k, ((m, s), d))| match (m, s) {
                (None, None) => true,
                (Some(m), Some(s)) => shapes[*s] == m.shape && m.bytes.as_deref() == keyed(k, *d, value_inputs),
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_matches_only_the_same_shapes_and_keyed_bytes() {
        let shapes = vec![vec![1, 4], vec![2], vec![1000]];
        let (small, big) = ([1u8, 2], vec![0u8; 4000]);
        let slots = [Some(0), None, Some(1), Some(2)];
        let data = [Some(&[0u8; 16][..]), None, Some(&small[..]), Some(&big[..])];
        let memo = InferMemo::key(&shapes, &slots, &data, &[]);
        assert!(memo.matches(&shapes, &slots, &data, &[]));
        // A changed shape, a changed small input, an absent input given: no match.
        let mut other = shapes.clone();
        other[0] = vec![1, 5];
        assert!(!memo.matches(&other, &slots, &data, &[]));
        let changed = [7u8, 2];
        assert!(!memo.matches(&shapes, &slots, &[data[0], None, Some(&changed[..]), data[3]], &[]));
        assert!(!memo.matches(&shapes, &[Some(0), Some(1), Some(1), Some(2)], &data, &[]));
        // A large input's bytes are not part of the key unless it is a value input.
        let big2 = vec![9u8; 4000];
        let data2 = [data[0], None, data[2], Some(&big2[..])];
        assert!(memo.matches(&shapes, &slots, &data2, &[]));
        let valued = InferMemo::key(&shapes, &slots, &data, &[3]);
        assert!(!valued.matches(&shapes, &slots, &data2, &[3]));
    }
}
