//! Child process for tests/sync_quic.rs and scale_out.rs: a replica, linked
//! with the client crate `strata-sync` as an application would be, that
//! appends counter increments and syncs them in the background until it is
//! killed.
//!
//! Usage: `sync_client <replica-dir> <server-addr> <fingerprint> <seed>`.
//! Prints `APPENDED <event-id>` after each append returned (the event is
//! then durable in the outbox), so the test knows every event it must find
//! exactly once on the server or among the rejections.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use strata::ExpectedVersion;
use strata::projection::counter::{self, CounterProjection};
use strata::sync::{Replica, ReplicaOptions};
use strata_sync::client::{ClientOptions, spawn_background};
use strata_sync::tls::Trust;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("replica dir");
    let server = args.next().expect("server address");
    let fingerprint = args.next().expect("fingerprint");
    let seed: u64 = args
        .next()
        .expect("seed")
        .parse()
        .expect("seed is a number");
    let replica = Replica::open(
        &dir,
        ReplicaOptions {
            projections: vec![Arc::new(CounterProjection)],
            ..ReplicaOptions::default()
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("sync_client: open failed: {e}");
        std::process::exit(3)
    });
    let replica = Arc::new(replica);
    let mut opts = ClientOptions::new(server, Trust::Pin(fingerprint));
    // The server is killed often: notice quickly and come back quickly.
    opts.idle_timeout = Duration::from_millis(1_000);
    opts.request_timeout = Duration::from_millis(2_000);
    opts.backoff_max = Duration::from_millis(200);
    let _sync = spawn_background(replica.clone(), opts).expect("sync starts");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let stdout = std::io::stdout();
    loop {
        std::thread::sleep(Duration::from_millis(rng.random_range(1..12)));
        let agg = format!("counter-{}", rng.random_range(0..3));
        let event = counter::increment(1);
        let id = event.event_id;
        replica
            .append(&agg, ExpectedVersion::Any, vec![event])
            .expect("local append");
        let mut out = stdout.lock();
        writeln!(out, "APPENDED {id}").expect("stdout");
        out.flush().expect("stdout");
    }
}
