//! The machine's memory read bandwidth, as `kiln bench --bandwidth` measures it: the ceiling of a
//! decoded token, which reads every weight once (a roofline for decode).
//!
//! The probe reads as many bytes per pass as a decoded token reads weights, again and again, as
//! decode does: on this project's 2-vCPU machine a 512 MB working set streams at 22–28 GB/s, a
//! 64 MB one at up to 52 GB/s (the host's last-level cache), so a small model's ceiling is not a
//! large one's.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes per second of the best pass over a buffer of `bytes` (at least 1 MiB), split into one
/// contiguous share per thread of the current rayon pool as decode's products split their
/// weights; passes enough to read 4 GiB in all, and at least 5.
pub fn read_bandwidth(bytes: u64) -> f64 {
    let words = (bytes.max(1 << 20) / 8) as usize;
    // Written once so that every page is mapped before the timed passes.
    let buf: Vec<u64> = (0..words as u64).collect();
    let share = words.div_ceil(rayon::current_num_threads());
    let passes = ((4usize << 30) / (words * 8)).max(5);
    let mut best = f64::INFINITY;
    for _ in 0..passes {
        let started = Instant::now();
        let sum = buf.par_chunks(share).map(sum_words).reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.min(started.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

/// A wrapping sum of `words`, with 256-bit loads where the CPU has AVX2 (the baseline build's
/// 128-bit ones measured a fifth below what the machine streams).
fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { sum_words_avx2(words) };
    }
    sum_lanes(words)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(words: &[u64]) -> u64 {
    sum_lanes(words)
}

/// Sixteen independent lanes, which the compiler turns into vector adds: the pass is bound by
/// loads, not by a chain of adds.
#[inline(always)]
fn sum_lanes(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 16];
    let chunks = words.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(0u64, |a, &w| a.wrapping_add(w));
    for c in chunks {
        for (l, &w) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(w);
        }
    }
    lanes.iter().fold(tail, |a, &l| a.wrapping_add(l))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lanes_sum_every_word() {
        let words: Vec<u64> = (0..1003).collect();
        assert_eq!(super::sum_words(&words), 1002 * 1003 / 2);
        assert_eq!(super::sum_lanes(&words), 1002 * 1003 / 2);
        assert_eq!(super::sum_words(&[u64::MAX, 2]), 1, "wrapping");
    }
}
