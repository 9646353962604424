//! Ids this process makes for itself: a request's server id, a batched
//! script call's id (the key a re-sent call is recognised by).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// 64 random bits drawn once per process, then a counter, hex (32 chars).
/// Unique within the process, and across restarts but with probability
/// 2^-64 per pair, without a random-number syscall per id.
pub fn unique_id() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random source is available");
        u64::from_le_bytes(b)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&PREFIX.to_be_bytes());
    id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    crate::domain::hex::lower(&id)
}

#[cfg(test)]
mod tests {
    use super::unique_id;

    #[test]
    fn ids_share_the_process_prefix_and_never_repeat() {
        let (a, b) = (unique_id(), unique_id());
        assert_eq!(a.len(), 32);
        assert_eq!(a[..16], b[..16]);
        assert_ne!(a, b);
    }
}
