//! Sync between replicas and a server (invariants Y1–Y6).
//!
//! # Brief overview
//!
//! * [`proto`]: the messages, independent of transport.
//! * [`server::ServerCore`] and [`replica::ReplicaCore`]: the protocol as
//!   state machines without sockets, clocks or storage calls; transports
//!   (QUIC, and the seed's JSON over WebSocket through [`seed`]) only move
//!   bytes and carry out what the cores ask.
//! * [`storage::CanonicalLog`]: the server's log as sync needs it (group
//!   commit with per-push checks, reads), implemented by [`crate::Store`].
//! * [`rebase`]: what a replica does to its pending events when the
//!   committed log moved under them.
//! * [`local::Replica`]: a local-first store with a durable outbox, views
//!   that show pending events on top of committed ones, and rejections.
//! * [`wire`]: the binary encoding used over QUIC.
//!
//! The protocol is specified in docs/PROTOCOL.md.

pub mod local;
pub mod proto;
pub mod rebase;
pub mod replica;
pub mod seed;
pub mod server;
pub mod storage;
pub mod wire;

pub use local::{
    KeepAll, LocalEvent, PendingEvent, RebaseDecision, RebaseHook, Rejection, Replica,
    ReplicaOptions,
};
pub use replica::{ReplicaConfig, ReplicaCore, ReplicaStorage, SyncError, SyncStatus};
pub use server::{ClientId, ClientInfo, Commit, CoreEvent, PushPolicy, ServerConfig, ServerCore};
pub use storage::{CanonicalLog, CommitResult, Push, PushOutcome, StorageError};
