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
    strata_server::init_logging();
    let config = Cli::parse().args.into_config();
    match strata_server::serve(
        config,
        strata_server::print_ready,
        strata_server::shutdown_signal(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-server: {e}");
            ExitCode::from(3)
        }
    }
}
