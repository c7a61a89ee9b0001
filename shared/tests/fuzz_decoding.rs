//! Decoding of untrusted request and cursor bytes, fuzzed with a seeded mutation loop (bounded in
//! count and time): whatever the bytes, decoding returns a value or an error and never panics,
//! and whatever decodes also validates, re-encodes and decodes to the same value.

use std::time::{Duration, Instant};

use flightlm_shared::{Cursor, StreamRequest};

const CASES: usize = 30_000;
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// splitmix64: a tiny seeded generator, enough to drive mutations reproducibly.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

const SEEDS: [&str; 3] = [
    r#"{"version":2,"split":"train","seq_len":128,"batch_size":32,"epochs":null}"#,
    r#"{"version":2,"split":"valid","seq_len":64,"batch_size":8,"shard":{"index":1,"count":4}}"#,
    r#"{"version":2,"split":"train","seq_len":64,"batch_size":8,"cursor":{"state":{"fingerprint":"00ff","block_seq":64,"draws":64,"sources":[{"source":"books","pass":1,"file":"a.txt","row":3,"token":7}]},"skip":5}}"#,
];

/// Fragments that steer mutations toward interesting JSON: numbers at the edges of their types,
/// nesting, escapes and odd Unicode.
const FRAGMENTS: [&str; 14] = [
    "-1",
    "18446744073709551616",
    "1e309",
    "null",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[[[[[[[[",
    "}}}}",
    ",",
    ":",
    "\"epochs\":0",
    "\u{feff}",
];

fn mutate(random: &mut Random, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + random.below(4) {
        let at = random.below(bytes.len() + 1);
        match random.below(5) {
            0 if !bytes.is_empty() => {
                let index = random.below(bytes.len());
                bytes[index] ^= 1 << random.below(8);
            }
            1 => bytes.truncate(at),
            2 => {
                let fragment = FRAGMENTS[random.below(FRAGMENTS.len())].as_bytes();
                bytes.splice(at..at, fragment.iter().copied());
            }
            3 if !bytes.is_empty() => {
                let end = (at + random.below(8)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            _ => bytes.insert(at, random.next() as u8),
        }
    }
    bytes
}

#[test]
fn request_and_cursor_decoding_never_panic() {
    let started = Instant::now();
    let mut random = Random(2026);
    let mut accepted = 0;
    let mut cases = 0;
    while cases < CASES && started.elapsed() < TIME_LIMIT {
        cases += 1;
        let bytes = if random.below(4) == 0 {
            let length = random.below(64);
            (0..length).map(|_| random.next() as u8).collect()
        } else {
            let seed = SEEDS[random.below(SEEDS.len())].as_bytes();
            mutate(&mut random, seed)
        };
        if let Ok(request) = StreamRequest::from_ticket_bytes(&bytes) {
            accepted += 1;
            request.validate().expect("a decoded request is valid");
            let again = StreamRequest::from_ticket_bytes(&request.to_ticket_bytes())
                .expect("a decoded request re-decodes");
            assert_eq!(again, request);
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(cursor) = Cursor::from_json(text) {
                assert_eq!(Cursor::from_json(&cursor.to_json()).ok(), Some(cursor));
            }
        }
    }
    assert!(cases >= 1000, "only {cases} cases ran");
    // Mutations keep some requests valid, so the accepting path is exercised too.
    assert!(
        accepted > 0,
        "no mutated request was accepted in {cases} cases"
    );
}
