//! permessage-deflate: arbitrary bytes to `DeflatePool::decompress` under a size limit,
//! and compress → decompress round trips for arbitrary data, window bits 9..=15 and
//! levels 0..=9, with (de)compressors reused from the pool after failures.
//!
//! Input layout: `[mode, bits, level, limit selector, limit (u32 LE), data...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendezvous_gateway::ws::deflate::{DeflatePool, InflateError};

fuzz_target!(|input: &[u8]| {
    let Some((head, data)) = input.split_first_chunk::<8>() else {
        return;
    };
    let [mode, bits, level, sel, l0, l1, l2, l3] = *head;
    let bits = 9 + bits % 7;
    let pool = DeflatePool::new(u32::from(level % 10));
    let limit = match sel % 4 {
        0 => usize::from(u16::from_le_bytes([l0, l1])),
        1 => (u32::from_le_bytes([l0, l1, l2, l3]) % (8 << 20)) as usize,
        2 => 0,
        _ => usize::MAX,
    };

    // Arbitrary bytes as a compressed message: never panic, never exceed the limit.
    match pool.decompress(data, limit) {
        Ok(out) => assert!(out.len() <= limit),
        Err(InflateError::TooBig | InflateError::Corrupt) => {}
    }
    if mode & 1 == 0 {
        return;
    }

    // Round trip, using the pool's (now reused) decompressor.
    let packed = pool.compress(data, bits);
    assert_eq!(pool.decompress(&packed, data.len()).as_deref(), Ok(data));
    if !data.is_empty() {
        assert_eq!(pool.decompress(&packed, data.len() - 1), Err(InflateError::TooBig));
    }
    // A pooled compressor comes back clean: same input, same output.
    assert_eq!(pool.compress(data, bits), packed);
    assert_eq!(pool.decompress(&packed, usize::MAX).as_deref(), Ok(data));
});
