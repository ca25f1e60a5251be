//! Strata's sync client over QUIC, for applications that embed a replica
//! ([`strata::sync::Replica`]) and sync it with a `strata-server`.
//!
//! This crate is what such an application links: the client
//! ([`client::sync_until_idle`], [`client::run`],
//! [`client::spawn_background`]), the framing both ends of a QUIC
//! connection share ([`transport`]), and the client's trust in the server
//! ([`tls`]). It has no HTTP or WebSocket server, no certificate
//! generation and no web assets; `strata-server` depends on it for the
//! shared parts and re-exports them (`strata_server::client`,
//! `strata_server::tls`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use strata::sync::{Replica, ReplicaOptions};
//! use strata_sync::client::{ClientOptions, sync_until_idle};
//! use strata_sync::tls::Trust;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let replica = Arc::new(Replica::open("./replica", ReplicaOptions::default())?);
//! let fingerprint = "…the 64 hex digits strata-server printed…".to_owned();
//! let opts = ClientOptions::new("sync.example.com:8443", Trust::Pin(fingerprint));
//! sync_until_idle(replica, opts).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod tls;
pub mod transport;

/// Longest store name.
pub const STORE_NAME_BYTES_MAX: usize = 64;
/// Store served when a client names none.
pub const DEFAULT_STORE: &str = "default";

/// A store name that is not 1 to 64 bytes of `[a-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store name {name:?} is invalid: use 1 to 64 characters of a-z, 0-9, _ and -")]
pub struct BadStoreName {
    /// The name given (its first 80 characters).
    pub name: String,
}

/// Checks a store name: 1 to [`STORE_NAME_BYTES_MAX`] bytes of
/// `[a-z0-9_-]`, so that it is a safe directory name everywhere.
pub fn check_store_name(name: &str) -> Result<(), BadStoreName> {
    let ok = !name.is_empty()
        && name.len() <= STORE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BadStoreName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// Milliseconds since the Unix epoch: the shells own the clock the sync
/// cores see.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
