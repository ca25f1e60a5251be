//! Child process for tests/readers.rs: a writer in another process than
//! the readers. Opens (creating) a store with small segments and a small
//! index batch, so that segments roll and the index trails in steps, keeps
//! the counter view current in the background (for `strata counter show`
//! and `strata views status`), appends the pairs workload for the given
//! number of milliseconds, and prints `DONE <batches> <head>`.
//!
//! Usage: `pair_writer <store-dir> <millis>`

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use strata::projection::counter::CounterProjection;
use strata::projection::{ViewOptions, Views};
use strata_tests::append_pairs;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("store dir");
    let millis: u64 = args
        .next()
        .expect("millis")
        .parse()
        .expect("millis is a number");
    let store =
        strata::Store::open(&dir, strata_tests::pairs_writer_options()).unwrap_or_else(|e| {
            eprintln!("open failed: {e}");
            std::process::exit(3)
        });
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection)],
        ViewOptions::default(),
    )
    .expect("opening the views");
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(millis));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let batches = append_pairs(&store, &stop);
    timer.join().unwrap();
    views.catch_up().expect("views catch up");
    views.close();
    store.flush_index().expect("index flush");
    let head = store.head();
    store.close().expect("closing the store");
    println!("DONE {batches} {head}");
}
