//! `strata-server`: serves Strata stores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Serve Strata stores over HTTP.
#[derive(Debug, Parser)]
#[command(name = "strata-server", version, about)]
struct Args {
    /// Directory with one sub-directory per store (created if missing).
    #[arg(long, env = "STRATA_DATA", default_value = "./strata-server-data")]
    data: PathBuf,
    /// HTTP listen address.
    #[arg(long, env = "STRATA_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = strata_server::Config {
        data_dir: args.data,
        http: args.http,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    let result = strata_server::serve(
        config,
        |addr| {
            println!(
                "strata-server: serving http://{addr}/ (GET /health, GET /events?from=1&limit=100)"
            )
        },
        shutdown,
    )
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-server: {e}");
            ExitCode::from(3)
        }
    }
}
