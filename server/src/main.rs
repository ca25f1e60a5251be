//! `strata-server`: hosts Strata stores and syncs replicas with them.

use std::process::ExitCode;

use clap::Parser;

/// Serve Strata stores: QUIC sync, WebSocket JSON sync at /ws, the web demo.
#[derive(Debug, Parser)]
#[command(name = "strata-server", version, about)]
struct Cli {
    #[command(flatten)]
    args: strata_server::ServeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Cli::parse().args.into_config();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match strata_server::serve(config, strata_server::print_ready, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-server: {e}");
            ExitCode::from(3)
        }
    }
}
