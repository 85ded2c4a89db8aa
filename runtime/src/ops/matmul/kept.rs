//! Buffers kept per thread between products: prefill runs hundreds of products, and a fresh
//! allocation of a packed operand (hundreds of KB) is an mmap and its page faults each time.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` on this thread's buffer in `slot` (a new one when the slot is in use, as when `f`
/// runs another product on this thread meanwhile), and keeps it there for the next call.
pub(super) fn with_kept<T, R>(slot: &'static LocalKey<RefCell<Vec<T>>>, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
    let mut buf = slot.with(|s| s.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default());
    let result = f(&mut buf);
    slot.with(|s| {
        if let Ok(mut kept) = s.try_borrow_mut() {
            *kept = buf;
        }
    });
    result
}
