//! Strategies for the property tests that fuzz every decoder of bytes
//! another process or the network wrote (cargo-fuzz needs a nightly
//! toolchain; these run under `cargo test`, bounded by `PROPTEST_CASES`,
//! and longer with `make fuzz`).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Any bytes, at most `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// What a buggy or hostile writer makes of a `valid` encoding: a few bytes
/// changed, then cut short or followed by more.
pub fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (
        vec((any::<Index>(), any::<u8>()), 0..4),
        any::<Index>(),
        bytes(16),
        any::<bool>(),
    )
        .prop_map(move |(edits, cut, more, extend)| {
            let mut out = valid.clone();
            for (at, byte) in edits {
                if !out.is_empty() {
                    let i = at.index(out.len());
                    out[i] = byte;
                }
            }
            if extend {
                out.extend_from_slice(&more);
            } else {
                out.truncate(cut.index(out.len() + 1));
            }
            out
        })
}
