//! Random numbers that are not secrets: backoff jitter, id prefixes, nonces.
//!
//! They come from std's randomly keyed SipHash (seeded from the OS), which saves the size of
//! a second `rand` copy (tungstenite brings its own) on small targets. Must not: make keys.

/// 64 bits from std's randomly keyed SipHash, mixed with the clock.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A uniform number in [0, 1).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}
