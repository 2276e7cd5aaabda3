//! Arbitrary bytes, cut at arbitrary points, fed to the server-side `MessageReader`
//! with and without permessage-deflate. It must never panic, never return a message
//! over the limit, and must produce the same events and verdict however the bytes
//! are split into reads.
//!
//! Input layout: `[flags, n, n × u16 cut points (LE), wire bytes...]`.
//! flags bit 0: deflate negotiated; bits 1-2: message size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendezvous_gateway::ws::deflate::DeflatePool;
use rendezvous_gateway::ws::reader::{Event, Message, MessageReader, Role};

const LIMITS: [usize; 4] = [0, 125, 4096, 1 << 20];

fn run(chunks: &[&[u8]], deflate: bool, limit: usize, pool: &DeflatePool) -> (Vec<Event>, Option<(u16, &'static str)>) {
    let mut reader = MessageReader::new(Role::Server, limit, deflate);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(v) = reader.feed(chunk, pool, &mut events) {
            return (events, Some((v.code.as_u16(), v.reason)));
        }
    }
    // What is held back (an incomplete frame or message) stays within the limit plus
    // what was fed, allowing for Vec growth.
    let fed: usize = chunks.iter().map(|c| c.len()).sum();
    assert!(reader.buffered() <= 2 * (limit + 14) + 2 * fed + 64);
    (events, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let deflate = flags & 1 != 0;
    let limit = LIMITS[usize::from((flags >> 1) & 3)];
    let Some((&n, mut rest)) = rest.split_first() else {
        return;
    };
    let mut cuts = Vec::new();
    for _ in 0..(n % 16) {
        let Some((c, r)) = rest.split_first_chunk::<2>() else {
            break;
        };
        cuts.push(usize::from(u16::from_le_bytes(*c)));
        rest = r;
    }
    let wire = rest;
    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for c in cuts {
        chunks.push(&wire[start..c]);
        start = c;
    }
    chunks.push(&wire[start..]);

    let pool = DeflatePool::new(6);
    let (events, verdict) = run(&chunks, deflate, limit, &pool);
    for e in &events {
        match e {
            Event::Message(Message::Text(t)) => assert!(t.len() <= limit),
            Event::Message(Message::Binary(b)) => assert!(b.len() <= limit),
            Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            Event::Close(_) => {}
        }
    }
    // The same bytes in one read must give the same result.
    let (whole_events, whole_verdict) = run(&[wire], deflate, limit, &pool);
    assert_eq!(events, whole_events);
    assert_eq!(verdict, whole_verdict);
});
