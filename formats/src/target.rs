//! Target limits: what a device allows, as the planner and the verifier see it.

use serde::{Deserialize, Serialize};

/// The memory limits of one execution target (as IREE's resource config, or wgpu's `Limits`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLimits {
    /// `cpu` or `gpu`.
    pub name: String,
    /// Every arena offset is a multiple of this many bytes.
    pub alignment: u64,
    /// Largest single buffer the device can allocate.
    pub max_buffer: u64,
    /// Largest range one binding (one kernel argument) may cover.
    pub max_binding: u64,
}

impl TargetLimits {
    /// The CPU: cache-line alignment (covers AVX-512), no practical buffer limit.
    pub fn cpu() -> Self {
        TargetLimits { name: "cpu".into(), alignment: 64, max_buffer: i64::MAX as u64, max_binding: i64::MAX as u64 }
    }

    /// A GPU with wgpu's default limits (256 MiB buffers, 128 MiB bindings, 256 B alignment);
    /// the runtime probes the real device and re-checks at load.
    pub fn gpu_default() -> Self {
        TargetLimits { name: "gpu".into(), alignment: 256, max_buffer: 256 << 20, max_binding: 128 << 20 }
    }

    /// The largest tensor or arena buffer a plan may use: a buffer must also fit in one binding.
    pub fn largest_buffer(&self) -> u64 {
        self.max_buffer.min(self.max_binding)
    }

    /// Overrides the buffer limit (`--max-buffer`): both the buffer and binding limits.
    pub fn with_max_buffer(mut self, bytes: u64) -> Self {
        self.max_buffer = bytes;
        self.max_binding = bytes;
        self
    }
}

/// Parses a size such as `64KiB`, `128MiB`, `4GiB`, `1GB` or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("'{text}' is not a size (examples: 65536, 64KiB, 128MiB, 4GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        u => return Err(format!("unknown size unit '{u}' in '{text}' (use KiB, MiB, GiB or bytes)")),
    };
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(|| format!("size '{text}' is zero or too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}
