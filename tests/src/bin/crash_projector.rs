//! Child process for the projection crash test: appends counter events and
//! keeps the counter view current (background follower plus reads), slowly
//! enough that a SIGKILL often lands in the middle of a views transaction.
//!
//! Usage: `crash_projector <store-dir> <seed> <batch-events>`

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use strata::projection::counter::{self, CounterProjection};
use strata::projection::rusqlite::Connection;
use strata::projection::{HandlerError, Projection, ViewOptions, Views};
use strata::{EventRef, ExpectedVersion, Options, Store};

/// The counter projection, with a pause per event to widen the window in
/// which a kill interrupts a batch. Same name and version as the real one,
/// so every run continues the same view.
struct SlowCounter;

impl Projection for SlowCounter {
    fn name(&self) -> &str {
        CounterProjection.name()
    }
    fn version(&self) -> u32 {
        CounterProjection.version()
    }
    fn schema(&self) -> &str {
        CounterProjection.schema()
    }
    fn apply(&self, conn: &Connection, event: &EventRef<'_>) -> Result<(), HandlerError> {
        std::thread::sleep(Duration::from_micros(30));
        CounterProjection.apply(conn, event)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("store dir");
    let seed: u64 = args.next().expect("seed").parse().expect("a number");
    let batch: usize = args.next().expect("batch size").parse().expect("a number");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = Store::open(&dir, Options::default()).unwrap_or_else(|e| {
        eprintln!("open failed: {e}");
        std::process::exit(3)
    });
    let views = Views::open(
        &store,
        vec![Arc::new(SlowCounter)],
        ViewOptions {
            batch_events_max: batch,
            ..ViewOptions::default()
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("views failed: {e}");
        std::process::exit(4)
    });
    loop {
        let n = rng.random_range(1..=5);
        let agg = format!("counter-{}", rng.random_range(0..4));
        let events = (0..n)
            .map(|_| {
                if rng.random_bool(0.3) {
                    counter::decrement(rng.random_range(1..4))
                } else {
                    counter::increment(rng.random_range(1..4))
                }
            })
            .collect();
        store.append(&agg, ExpectedVersion::Any, events).unwrap();
        if rng.random_bool(0.2) {
            views.read(|c| counter::value(c, &agg)).unwrap();
        }
    }
}
