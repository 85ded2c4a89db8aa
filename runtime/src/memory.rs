//! What the machine has: the bound a session puts on memory it sizes at run time, so that a
//! hostile or mistaken program is refused by name instead of exhausting the machine.

/// Physical memory of the machine (Linux: MemTotal); `None` where the platform does not say.
pub fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Default bound on the bytes a session allocates at run time for values the plan could not
/// size: half the machine's memory (none where the platform does not say).
pub fn default_dynamic_limit() -> Option<usize> {
    physical_memory().and_then(|m| usize::try_from(m / 2).ok())
}
