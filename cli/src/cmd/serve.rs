//! `strata serve`: the sync server, from the CLI (same as `strata-server`).

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

pub fn run(_cli: &Cli, args: &strata_server::ServeArgs) -> CmdResult {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::usage(format!("starting the runtime: {e}")))?;
    let config = args.clone().into_config();
    runtime
        .block_on(strata_server::serve(
            config,
            strata_server::print_ready,
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        ))
        .map_err(|e| Failure {
            code: Code::Unavailable,
            message: e.to_string(),
        })?;
    Ok(Code::Ok)
}
