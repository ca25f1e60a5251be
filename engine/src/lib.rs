//! # Strata
//!
//! An embedded event store for local-first software.
//!
//! # Brief overview
//!
//! * [`Store`]: open a store directory, append events to aggregates with
//!   optimistic concurrency, read them back by aggregate, by id or by
//!   position, subscribe to new ones.
//! * [`log`]: the append-only, segmented, CRC-framed event log; the only
//!   module that touches log bytes. Byte layout in docs/FORMAT.md.
//! * [`index`]: the SQLite index mirroring the classic `events` table,
//!   derived from the log and rebuilt from it at will.
//! * [`hlc`]: hybrid logical clocks for ordering across devices.
//!
//! Invariants the tests prove are named S1–S8, H1 and Y1–Y6 in
//! docs/ARCHITECTURE.md.

pub mod backup;
#[cfg(feature = "bench")]
pub mod bench;
pub mod error;
pub mod event;
pub mod hlc;
pub mod index;
pub mod json;
pub mod lock;
pub mod log;
pub mod priority;
pub mod projection;
mod store;
pub mod sync;

pub use error::{Error, Result};
pub use event::{
    AggregateEvents, Committed, Event, EventRef, ExpectedVersion, InvalidInput, Limits, NewEvent,
};
pub use hlc::{Hlc, HlcError, LocalStamps, ManualClock, NodeId, SystemClock, Timestamp, WallClock};
pub use log::{Durability, RecoveryReport, TornTail};
pub use store::{
    BACKUP_INCOMPLETE_FILE, FOLLOW_POLL, Options, ProgressHook, REPLICA_LOG_FILE, ReadAll, Store,
    Subscription,
};
pub use uuid::Uuid;
