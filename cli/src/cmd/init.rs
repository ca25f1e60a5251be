//! `strata init`

use strata::{Options, Store};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// sync (default), none, or periodic:<N>ms. Recorded nowhere: it is how
    /// this command syncs the empty store; applications choose their own.
    #[arg(long, default_value = "sync", value_parser = super::parse_durability)]
    durability: strata::Durability,
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    if cli.store.join("log").exists() {
        return Err(Failure::usage(format!(
            "{}: a store already exists here; pick another --store",
            cli.store.display()
        )));
    }
    let store = Store::open(
        &cli.store,
        Options {
            durability: args.durability,
            ..Options::default()
        },
    )?;
    let id = store.store_id();
    store.close()?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "store": cli.store, "store_id": id.to_string() })
        );
    } else {
        println!("created store {id} in {}", cli.store.display());
    }
    Ok(Code::Ok)
}
