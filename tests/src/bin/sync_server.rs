//! Child process for tests/sync_quic.rs and tests/scale_out.rs: a sync
//! server that runs until it is killed (so the test can crash it at any
//! point) or stopped with SIGTERM or Ctrl-C (a graceful shutdown, as
//! `strata-server`'s).
//!
//! Usage: `sync_server <data-dir> <quic-addr> [<database-url>]`; with a
//! database URL the stores' logs are in that PostgreSQL database. With
//! `SYNC_SERVER_ARCHIVE=<url>` it archives its stores there, a step every
//! `SYNC_SERVER_ARCHIVE_INTERVAL_MS` (default 1000). Prints
//! `READY <quic-addr> <fingerprint> <http-addr>` once it listens.

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
    if let Ok(url) = std::env::var("SYNC_SERVER_ARCHIVE") {
        let mut options = strata_archive::ArchiveOptions::default();
        if let Ok(ms) = std::env::var("SYNC_SERVER_ARCHIVE_INTERVAL_MS") {
            options.interval = std::time::Duration::from_millis(ms.parse().expect("milliseconds"));
        }
        config.archive = Some(strata_server::registry::ArchiveConfig { url, options });
    }
    let result = strata_server::serve(
        config,
        |bound: &strata_server::Bound| {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "READY {} {} {}",
                bound.quic.expect("QUIC is on"),
                bound.fingerprint.as_deref().expect("QUIC is on"),
                bound.http
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
