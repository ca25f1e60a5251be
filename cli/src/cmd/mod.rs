//! One module per subcommand.

pub mod append;
pub mod backup;
#[cfg(feature = "bench")]
pub mod bench;
pub mod counter;
pub mod demo;
pub mod dump;
pub mod export;
pub mod import;
pub mod init;
pub mod reindex;
pub mod repair;
pub mod restore;
pub mod segments;
pub mod serve;
pub mod stats;
pub mod sync;
pub mod tail;
pub mod verify;
pub mod views;

use std::path::Path;

use strata::{Durability, Options, Store};

use crate::exit::Failure;

/// Parses `sync`, `none`, or `periodic:<N>ms` / `periodic:<N>s`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "none" => Ok(Durability::None),
        _ => {
            let spec = s.strip_prefix("periodic:").ok_or_else(|| {
                format!("unknown durability {s:?}: use sync, none or periodic:<N>ms")
            })?;
            let (digits, unit) = spec.split_at(
                spec.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(spec.len()),
            );
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("bad interval {spec:?}: use e.g. periodic:100ms"))?;
            let ms = match unit {
                "ms" => n,
                "s" => n * 1000,
                _ => return Err(format!("bad interval unit {unit:?}: use ms or s")),
            };
            if ms == 0 {
                return Err("the periodic interval must be above zero".into());
            }
            Ok(Durability::Periodic(std::time::Duration::from_millis(ms)))
        }
    }
}

/// Opens an existing store read-write (never creates one).
pub fn open_existing(dir: &Path) -> Result<Store, Failure> {
    Ok(Store::open(
        dir,
        Options {
            create_if_missing: false,
            ..Options::default()
        },
    )?)
}

/// Whether `dir` is a sync replica (made by `strata sync`): its log holds
/// only the server's events, and local appends go to its outbox.
pub fn is_replica(dir: &Path) -> bool {
    dir.join(strata::sync::local::OUTBOX_FILE).exists()
}

/// Opens an existing sync replica with the views the CLI knows.
pub fn open_replica(dir: &Path) -> Result<strata::sync::Replica, Failure> {
    use std::sync::Arc;
    use strata::projection::counter::CounterProjection;
    use strata::projection::todo::TodoProjection;
    Ok(strata::sync::Replica::open(
        dir,
        strata::sync::ReplicaOptions {
            store: Options {
                create_if_missing: false,
                ..Options::default()
            },
            projections: vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
            ..strata::sync::ReplicaOptions::default()
        },
    )?)
}

/// Opens an existing store read-only: no lock, no writes, works beside a
/// running writer and on a copy of a crashed store.
pub fn open_read_only(dir: &Path) -> Result<Store, Failure> {
    Ok(Store::open_read_only(dir)?)
}
