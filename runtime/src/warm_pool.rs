//! Keeps rayon's other workers awake, looking for work, for the length of one program run.
//!
//! A decoded token runs hundreds of products split across threads, each a few microseconds
//! long, with small single-threaded steps between them. Between two splits an idle rayon worker
//! yields, then sleeps on a futex; the next split then pays a wake-up (a syscall and a context
//! switch, several microseconds on a VM) before the helper starts its half. `perf` put the
//! scheduler at over 15% of SmolLM2 decode. onnxruntime and llama.cpp spin their intra-op threads
//! for the same reason; this does it within rayon: each other worker runs a task that takes any
//! pending split with [`rayon::yield_now`] and otherwise yields the core, until the run ends.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a thread of rayon's global pool, whatever its size, with the pool's other workers
/// spinning for its splits; on a pool thread already, runs it in place.
///
/// Kernels split their work with rayon. Called from a thread outside the pool, every split is
/// injected into the pool's queue and waited for through a lock: a futex round trip and an
/// allocation per product, hundreds per decoded token. With one thread that made SmolLM2 q8 decode
/// 55 tokens/s against 126 on the pool thread. On a pool thread the same splits are
/// work-stealing joins.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    with_warm_workers(f)
}

/// Runs `f` on a pool thread while every other worker of the current pool spins for work.
/// Waiting costs those cores while `f` runs single-threaded steps, as onnxruntime's default
/// intra-op spinning does, but each idle round yields the core to any other runnable thread;
/// they stop when `f` returns.
fn with_warm_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let others = rayon::current_num_threads().saturating_sub(1);
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let runner = rayon::current_thread_index();
        for _ in 0..others {
            let done = &done;
            s.spawn(move |_| {
                // The runner itself may pick up an unstarted spinner while it waits on a split;
                // spinning there would wait for its own run to end.
                if rayon::current_thread_index() == runner {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    // Yielding to the OS rather than spinning in place: on a machine whose cores
                    // are busy with other work, a pure spin took the runner's core half the time
                    // (SmolLM2 q8 decode 126 → 65 tokens/s beside a compiler).
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn splits_inside_run_on_every_worker_and_the_run_ends() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let sums: Vec<u64> = pool.install(|| {
            (0..50)
                .map(|round| with_warm_workers(|| (0..10_000u64).into_par_iter().map(|i| i * round).sum::<u64>()))
                .collect()
        });
        for (round, s) in sums.iter().enumerate() {
            assert_eq!(*s, 10_000 * 9_999 / 2 * round as u64);
        }
    }

    #[test]
    fn runs_on_a_pool_thread_from_outside_the_pool() {
        assert_eq!(rayon::current_thread_index(), None);
        assert!(on_pool(rayon::current_thread_index).is_some());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(pool.install(|| on_pool(rayon::current_thread_index)), Some(0));
    }

    #[test]
    fn a_single_thread_pool_runs_without_spinners() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(pool.install(|| with_warm_workers(|| 7)), 7);
    }
}
