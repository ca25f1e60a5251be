//! Child process for tests/sync_quic.rs and tests/scale_out.rs: a sync
//! server that runs until it is killed (so the test can crash it at any
//! point) or stopped with SIGTERM or Ctrl-C (a graceful shutdown, as
//! `strata-server`'s).
//!
//! Usage: `sync_server <data-dir> <quic-addr> [<database-url>]`; with a
//! database URL the stores' logs are in that PostgreSQL database. Prints
//! `READY <quic-addr> <fingerprint>` once it listens.

use std::io::Write;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let data = args.next().expect("data dir");
    let quic: std::net::SocketAddr = args.next().expect("quic addr").parse().expect("an address");
    let mut config = strata_server::Config::new(
        data.into(),
        "127.0.0.1:0".parse().expect("an address"),
        Some(quic),
    );
    config.database = args.next().map(strata_server::pg::PgConfig::new);
    let result = strata_server::serve(
        config,
        |bound: &strata_server::Bound| {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "READY {} {}",
                bound.quic.expect("QUIC is on"),
                bound.fingerprint.as_deref().expect("QUIC is on")
            )
            .expect("stdout");
            out.flush().expect("stdout");
        },
        strata_server::shutdown_signal(),
    )
    .await;
    if let Err(e) = result {
        eprintln!("sync_server: {e}");
        std::process::exit(3);
    }
}
