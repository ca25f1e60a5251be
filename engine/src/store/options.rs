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
    /// How much nicer than the thread that opens the store its background
    /// threads (the indexer and the index's checkpointer) run, so that
    /// appends are not kept waiting for a core by derived work (Linux;
    /// see [`crate::priority`]). 0 keeps them at the opener's priority,
    /// which an application whose own threads keep every core busy should
    /// choose (a full tail makes appends wait for the indexer); between 0
    /// and [`crate::priority::NICE_MAX`].
    pub background_nice: i32,
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
            background_nice: crate::priority::BACKGROUND_NICE_DEFAULT,
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
        if !(0..=crate::priority::NICE_MAX).contains(&self.background_nice) {
            return setting(
                "background_nice",
                format!(
                    "is {}, must be between 0 and {}",
                    self.background_nice,
                    crate::priority::NICE_MAX
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::NICE_MAX;

    #[test]
    fn a_background_nice_out_of_range_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [-1, NICE_MAX + 1] {
            let err = Store::open(
                dir.path(),
                Options {
                    background_nice: bad,
                    ..Options::default()
                },
            )
            .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("background_nice") && text.contains(&bad.to_string()),
                "{text}"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod linux_tests {
    use super::*;
    use crate::priority::{NICE_MAX, this_thread_nice};

    /// Nice values of this process's threads with the given name (which
    /// the kernel keeps to its first 15 bytes).
    fn nice_of_threads(name: &str) -> Vec<i32> {
        let name = &name[..name.len().min(15)];
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("stat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            if comm.trim_end() != name {
                continue;
            }
            // proc(5): after the command in parentheses, the fields from
            // the 3rd (state) on; nice is the 19th.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            found.push(after.split(' ').nth(19 - 3).unwrap().parse().unwrap());
        }
        found
    }

    #[test]
    fn background_threads_run_as_much_nicer_as_the_setting_says() {
        let base = this_thread_nice().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = |dir: &tempfile::TempDir, background_nice| {
            let options = Options {
                background_nice,
                ..Options::default()
            };
            Store::open(dir.path(), options).unwrap()
        };
        let (nicer, same) = (open(&a, 4), open(&b, 0));
        // Other tests of this process may have stores open (at the
        // default): both values must be among the threads. A thread names
        // and lowers itself once it runs, which may be after `open`
        // returned: look again for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for name in ["strata-indexer", "strata-checkpoint"] {
            loop {
                let nice = nice_of_threads(name);
                if nice.contains(&(base + 4).min(NICE_MAX)) && nice.contains(&base) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: {nice:?}, expected {base} and {}",
                    (base + 4).min(NICE_MAX)
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        assert_eq!(
            this_thread_nice().unwrap(),
            base,
            "the opener keeps its own"
        );
        nicer.close().unwrap();
        same.close().unwrap();
    }
}
