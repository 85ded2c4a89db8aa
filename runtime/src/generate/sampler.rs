//! Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p
//! (nucleus) filtering from a seeded generator, so one seed always gives one text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen. The default is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); higher flattens the distribution.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least p (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// A [`Sampling`] with its random state.
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Sampler {
        let rng = StdRng::seed_from_u64(sampling.seed);
        Sampler { sampling, rng }
    }

    /// The next token. NaN logits never win.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let s = &self.sampling;
        if s.temperature <= 0.0 || s.top_k == 1 {
            return argmax(logits);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).filter(|&i| !logits[i as usize].is_nan()).collect();
        if order.is_empty() {
            return 0;
        }
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if s.top_k > 0 {
            order.truncate(s.top_k);
        }
        let top = logits[order[0] as usize];
        let mut probs: Vec<f64> =
            order.iter().map(|&i| (((logits[i as usize] - top) / s.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if s.top_p < 1.0 {
            let mut sum = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    sum += p;
                    sum >= s.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            order.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (&tok, &p) in order.iter().zip(&probs) {
            if r < p {
                return tok;
            }
            r -= p;
        }
        *order.last().unwrap_or(&0)
    }
}

/// Index of the largest logit; the first one on ties, as `torch.argmax` and onnxruntime do.
pub fn argmax(logits: &[f32]) -> u32 {
    // The largest value first, eight lanes at a time (a vocabulary-long compare-and-branch chain
    // measured 2% of SmolLM2's q8 decode), then where it first occurs. `f32::max` skips NaNs.
    let (chunks, rest) = logits.as_chunks::<8>();
    let mut lanes = [f32::NEG_INFINITY; 8];
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = rest.iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let first = logits.iter().position(|&v| v == max);
    // Only NaNs: the last index, as a scan replacing a NaN best with every next value gives.
    first.unwrap_or(logits.len().saturating_sub(1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), 1);
        assert_eq!(Sampler::new(Sampling::default()).pick(&[0.5, 0.1, 0.9]), 2);
    }

    /// The lane-wise argmax against the plain scan, on lengths off the lane count, ties in
    /// different lanes, NaNs and infinities.
    #[test]
    fn argmax_equals_the_plain_scan() {
        let scan = |l: &[f32]| {
            let mut best = 0;
            for (i, &v) in l.iter().enumerate() {
                if v > l[best] || l[best].is_nan() {
                    best = i;
                }
            }
            best as u32
        };
        for n in [1, 7, 8, 9, 31, 100] {
            for seed in 0..20usize {
                let l: Vec<f32> = (0..n)
                    .map(|i| match (i * 31 + seed * 17) % 23 {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        r => (r % (3 + seed % 5)) as f32,
                    })
                    .collect();
                assert_eq!(argmax(&l), scan(&l), "{l:?}");
            }
        }
        assert_eq!(argmax(&[f32::NAN; 11]), scan(&[f32::NAN; 11]));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }

    #[test]
    fn one_seed_gives_one_sequence() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 42 };
        let run = |s: &Sampling| {
            let mut sm = Sampler::new(s.clone());
            (0..20).map(|_| sm.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(&s), run(&s));
        assert_ne!(run(&s), run(&Sampling { seed: 43, ..s.clone() }));
    }

    #[test]
    fn top_k_and_top_p_only_pick_from_the_head() {
        let logits = [5.0, 4.9, 0.0, -1.0, -2.0, 4.8];
        let mut k = Sampler::new(Sampling { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 1 });
        let mut p = Sampler::new(Sampling { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 1 });
        for _ in 0..200 {
            assert!([0, 1].contains(&k.pick(&logits)));
            assert!([0, 1].contains(&p.pick(&logits)));
        }
    }
}
