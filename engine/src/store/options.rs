//! How a store is opened: [`Options`] and their checks.

use super::*;

/// How to open a store. Defaults: durability `Sync`, 64 MiB segments,
/// default [`Limits`], create if missing, read-write, node id derived from
/// the store id, 60 s maximum HLC drift, the system clock and file system.
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// A segment is sealed and a new one started when the next batch would
    /// take it past this size (a single larger batch gets a segment of its
    /// own). Between 4 KiB and 1 TiB.
    pub segment_bytes_max: u64,
    pub limits: Limits,
    pub create_if_missing: bool,
    /// Open without the writer lock; never writes any file. Appends fail
    /// with [`Error::ReadOnly`].
    pub read_only: bool,
    /// Node id in this store's HLC timestamps. Default: derived from the
    /// store id, so stable across restarts.
    pub node_id: Option<String>,
    /// Remote timestamps further ahead of the wall clock are refused.
    pub hlc_drift_ms_max: u64,
    pub clock: Arc<dyn WallClock>,
    pub vfs: Arc<dyn Vfs>,
    /// Most events the indexer writes in one SQLite transaction.
    pub index_batch_events_max: usize,
    /// Most events waiting for the indexer; appends wait beyond this.
    pub tail_events_max: usize,
    /// Called with (indexed, head) while `open` catches the index up (e.g.
    /// after the index was deleted).
    pub index_progress: Option<ProgressHook>,
}

/// A progress callback: `(done, total)`.
#[derive(Clone)]
pub struct ProgressHook(pub Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            limits: Limits::default(),
            create_if_missing: true,
            read_only: false,
            node_id: None,
            hlc_drift_ms_max: DRIFT_MS_MAX_DEFAULT,
            clock: Arc::new(SystemClock),
            vfs: Arc::new(OsVfs),
            index_batch_events_max: INDEX_BATCH_EVENTS_MAX_DEFAULT,
            tail_events_max: TAIL_EVENTS_MAX_DEFAULT,
            index_progress: None,
        }
    }
}

impl Options {
    /// Read-only options with defaults otherwise.
    pub fn read_only() -> Options {
        Options {
            read_only: true,
            create_if_missing: false,
            ..Options::default()
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        let setting =
            |name, reason: String| Err(Error::Invalid(InvalidInput::Setting { name, reason }));
        if !(crate::log::SEGMENT_BYTES_MIN..=crate::log::SEGMENT_BYTES_LIMIT)
            .contains(&self.segment_bytes_max)
        {
            return setting(
                "segment_bytes_max",
                format!(
                    "is {}, must be between {} and {}",
                    self.segment_bytes_max,
                    crate::log::SEGMENT_BYTES_MIN,
                    crate::log::SEGMENT_BYTES_LIMIT
                ),
            );
        }
        if self.index_batch_events_max == 0 {
            return setting("index_batch_events_max", "must be at least 1".into());
        }
        if self.tail_events_max < self.limits.batch_events_max {
            return setting(
                "tail_events_max",
                "must be at least limits.batch_events_max".into(),
            );
        }
        if let Durability::Periodic(d) = self.durability
            && d.is_zero()
        {
            return setting("durability", "Periodic needs a non-zero interval".into());
        }
        Ok(())
    }
}
