//! Child process for the crash test: appends batches to a store in `Sync`
//! durability until it is killed, and reports on stdout, line by line:
//!
//! * `BEGIN <id> <id> ...` before an append (the batch's event ids),
//! * `ACK <first_position> <last_position>` after `append` returned.
//!
//! Usage: `crash_writer <store-dir> <seed> <segment-bytes-max>`

use std::io::Write;

use rand::{Rng, SeedableRng};
use strata::{Durability, ExpectedVersion, NewEvent, Options, Store};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("store dir");
    let seed: u64 = args
        .next()
        .expect("seed")
        .parse()
        .expect("seed is a number");
    let segment_bytes_max: u64 = args
        .next()
        .expect("segment size")
        .parse()
        .expect("a number");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = Store::open(
        &dir,
        Options {
            durability: Durability::Sync,
            segment_bytes_max,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("open failed: {e}");
        std::process::exit(3)
    });
    let stdout = std::io::stdout();
    loop {
        let n = rng.random_range(1..=8);
        let agg = format!("agg-{}", rng.random_range(0..5));
        let events: Vec<NewEvent> = (0..n)
            .map(|i| {
                let pad = "x".repeat(rng.random_range(0..200));
                NewEvent::new(
                    "Crashy",
                    format!("{{\"i\":{i},\"pad\":\"{pad}\"}}").into_bytes(),
                )
            })
            .collect();
        {
            let mut out = stdout.lock();
            write!(out, "BEGIN").unwrap();
            for e in &events {
                write!(out, " {}", e.event_id).unwrap();
            }
            writeln!(out).unwrap();
            out.flush().unwrap();
        }
        let committed = store.append(&agg, ExpectedVersion::Any, events).unwrap();
        let mut out = stdout.lock();
        writeln!(
            out,
            "ACK {} {}",
            committed[0].position,
            committed[n - 1].position
        )
        .unwrap();
        out.flush().unwrap();
    }
}
