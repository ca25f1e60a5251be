//! Scheduling priority of a store's background threads.
//!
//! The indexer and the index's checkpointer keep derived data (the SQLite
//! index) behind the log. When they compete for a core with the threads
//! that append, an append waits while derived work runs. On a machine with
//! few cores that is most of what separates a durable append from the
//! disk's limit (docs/BENCHMARKS.md, issue 16). So these threads run
//! "nicer" than the thread that opened the store, by
//! [`crate::Options::background_nice`] ([`BACKGROUND_NICE_DEFAULT`]).
//! They still get their share when the cores are busy (a nice value only
//! weighs the scheduler's choice), and the tail's bound
//! ([`crate::Options::tail_events_max`]) makes appends wait for them if
//! they fall far behind.
//!
//! Linux only: there a nice value belongs to a thread. Elsewhere the
//! setting is accepted and has no effect.
//!
//! What it costs: a thread can make itself nicer but not take it back
//! (that needs `CAP_SYS_NICE`), and an append that finds the tail full
//! (`tail_events_max`) waits for the indexer. So an application whose own
//! threads keep every core busy at the default priority would see its
//! appends stall at the indexer's small weighted share once the tail
//! fills: such an application should open its store with
//! `background_nice: 0`. Under the CFQ and BFQ disk schedulers a nice
//! value also lowers the thread's I/O priority (the index's writes and
//! checkpoints); `none` and `mq-deadline`, common on virtual and NVMe
//! disks, ignore it. Whatever runs on these threads inherits their
//! priority: the store's `Vfs` and `tracing` subscribers are called there,
//! and a thread that either of them starts there starts nicer too.

/// Default [`crate::Options::background_nice`].
pub const BACKGROUND_NICE_DEFAULT: i32 = 10;
/// The largest nice value (the lowest priority) a thread can have.
pub const NICE_MAX: i32 = 19;

/// Makes the calling thread `increment` nicer than it is (at most
/// [`NICE_MAX`]). A failure is logged and otherwise ignored: the thread
/// runs at the priority it had.
pub(crate) fn lower_this_thread(increment: i32) {
    #[cfg(target_os = "linux")]
    if increment > 0
        && let Err(e) = linux::lower(increment)
    {
        tracing::debug!(error = %e, increment, "could not lower a background thread's priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = increment;
}

/// The calling thread's nice value (Linux; 0 elsewhere).
pub fn this_thread_nice() -> std::io::Result<i32> {
    #[cfg(target_os = "linux")]
    return linux::get(linux::tid());
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

#[cfg(target_os = "linux")]
mod linux {
    pub(super) fn tid() -> libc::id_t {
        // SAFETY: gettid takes no argument and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
    }

    pub(super) fn get(tid: libc::id_t) -> std::io::Result<i32> {
        // getpriority returns -1 both for nice -1 and for an error: only
        // errno tells them apart.
        // SAFETY: errno is this thread's; getpriority reads a thread's
        // nice value and takes plain integers.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        };
        let err = std::io::Error::last_os_error();
        if nice == -1 && err.raw_os_error() != Some(0) {
            return Err(err);
        }
        Ok(nice)
    }

    pub(super) fn lower(increment: i32) -> std::io::Result<()> {
        let tid = tid();
        let nice = (get(tid)?.saturating_add(increment)).min(super::NICE_MAX);
        // SAFETY: as above; raising a thread's nice value needs no
        // privilege.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_that_much_nicer_and_others_are_not() {
        let before = this_thread_nice().unwrap();
        let (lowered, capped) = std::thread::spawn(|| {
            lower_this_thread(3);
            let lowered = this_thread_nice().unwrap();
            lower_this_thread(NICE_MAX);
            (lowered, this_thread_nice().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 3).min(NICE_MAX));
        assert_eq!(capped, NICE_MAX);
        assert_eq!(
            this_thread_nice().unwrap(),
            before,
            "only the thread that asked"
        );
        // Zero and negative increments leave the thread as it is.
        let same = std::thread::spawn(|| {
            lower_this_thread(0);
            lower_this_thread(-5);
            this_thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(same, before);
    }
}
