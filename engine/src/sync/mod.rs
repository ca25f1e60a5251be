//! Sync between replicas and a server (invariants Y1–Y6).
//!
//! # Brief overview
//!
//! * [`proto`]: the messages, independent of transport.
//! * [`server::ServerCore`] and [`replica::ReplicaCore`]: the protocol as
//!   state machines without sockets or clocks; transports (QUIC, and the
//!   seed's JSON over WebSocket through [`seed`]) only move bytes.
//! * [`local::Replica`]: a local-first store with a durable outbox, views
//!   that show pending events on top of committed ones, and rejections.
//! * [`wire`]: the binary encoding used over QUIC.
//!
//! The protocol is specified in docs/PROTOCOL.md.

pub mod local;
pub mod proto;
pub mod replica;
pub mod seed;
pub mod server;
pub mod wire;

pub use local::{
    KeepAll, LocalEvent, PendingEvent, RebaseDecision, RebaseHook, Rejection, Replica,
    ReplicaOptions,
};
pub use replica::{ReplicaConfig, ReplicaCore, ReplicaStorage, SyncError, SyncStatus};
pub use server::{CanonicalLog, ClientId, PushPolicy, ServerConfig, ServerCore, token_accepted};
