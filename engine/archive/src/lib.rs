//! Continuous archive of a Strata store's log, and restore from it.
//!
//! A server's log lives on one disk; the archive copies it, as it grows,
//! to another place: a directory (another disk, a network mount) or an
//! object store (S3 and S3-compatible services, GCS, Azure, through the
//! `object_store` crate: see [`target`]). Only the log is archived: the
//! index and the views are derived from it and rebuilt when the restored
//! store first opens.
//!
//! * [`Archiver::step`] copies what the archive lacks: every sealed
//!   segment (whole, or the part not archived yet), and the new bytes of
//!   the active segment as one more chunk, ending at the segment's
//!   readable end (with [`strata::Durability::Sync`], a server's, that is
//!   the durable end, a batch boundary). Each object is read back after
//!   the upload and its CRC-32 compared with what was sent; only then is
//!   the record of what the archive holds, `ARCHIVE.json` ([`Manifest`]),
//!   rewritten to include it.
//! * [`spawn`] runs the steps on a thread of their own, every
//!   [`ArchiveOptions::interval`], retrying failures with a backoff: the
//!   store's appends never wait for the archive. [`ArchiveStatus`] says how
//!   far it got.
//! * [`restore()`] rebuilds a store directory from an archive; the result
//!   opens as a store, read-write, and `strata verify` passes on it.
//!
//! The layout of an archive is specified in docs/FORMAT.md, section 13.

pub mod target;

mod archiver;
mod manifest;
mod restore;

pub use archiver::{
    ArchiveHandle, ArchiveOptions, ArchiveStatus, Archiver, CHUNK_MERGE_FANOUT, INTERVAL_DEFAULT,
    RETRY_MAX_DEFAULT, RETRY_MIN_DEFAULT, spawn,
};
pub use manifest::{
    ARCHIVE_FORMAT, CHUNK_BYTES_MAX, MANIFEST_KEY, Manifest, SegmentEntry, WHOLE_BYTES_MAX,
    chunk_key, parse_chunk_key, segment_key,
};
pub use restore::{RestoreOptions, RestoreReport, restore};
pub use target::Target;

use std::io;
use std::path::PathBuf;

/// What went wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "{url:?} is not an archive location: {reason}. Give a directory path, file:///dir, \
         or an object store URL (s3://bucket/prefix needs strata built with the archive-s3 feature)"
    )]
    Url { url: String, reason: String },
    #[error("archive {url}: {action}: {source}")]
    Target {
        url: String,
        action: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "archive {url}: object {key} is not what was {what}: {detail}; \
         the archive copy is damaged (restore from another copy, or let the archiver upload it again)"
    )]
    Corrupt {
        url: String,
        key: String,
        what: &'static str,
        detail: String,
    },
    #[error(
        "the archive at {url} holds store {archived}, not this store ({store}): \
         archive each store to a location of its own"
    )]
    OtherStore {
        url: String,
        archived: String,
        store: String,
    },
    #[error(
        "the archive at {url} is format {found}; this strata reads format {ARCHIVE_FORMAT}: upgrade strata"
    )]
    Format { url: String, found: u32 },
    #[error(
        "the log is not the one archived at {url}: {detail}. This happens when a store is replaced \
         by an older copy, or loses writes it had not synced (a durability other than sync): \
         archive it to a new location (the old archive stays as it is)"
    )]
    Diverged { url: String, detail: String },
    #[error(
        "another archiver writes to {url}: its ARCHIVE.json changed under this one. \
         Each store, and each server, needs an archive location of its own"
    )]
    Contended { url: String },
    #[error("archive {url}: ARCHIVE.json cannot be read: {detail}")]
    Manifest { url: String, detail: String },
    #[error("there is no archive at {url} (no ARCHIVE.json there): check the URL")]
    NoArchive { url: String },
    #[error(
        "{dest} is not empty: restore into a new or empty directory \
         (move the old store away first)"
    )]
    DestNotEmpty { dest: PathBuf },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] strata::Error),
}

impl ArchiveError {
    fn target(target: &dyn Target, action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let url = target.url().to_owned();
        let action = action.into();
        move |source| ArchiveError::Target {
            url,
            action,
            source,
        }
    }
}
