//! `strata serve`: the sync server, from the CLI (same as `strata-server`).

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

pub fn run(_cli: &Cli, args: &strata_server::ServeArgs) -> CmdResult {
    strata_server::init_logging();
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::usage(format!("starting the runtime: {e}")))?;
    let config = args.clone().into_config();
    runtime
        .block_on(strata_server::serve(
            config,
            strata_server::print_ready,
            strata_server::shutdown_signal(),
        ))
        .map_err(|e| Failure {
            code: Code::Unavailable,
            message: e.to_string(),
        })?;
    Ok(Code::Ok)
}
