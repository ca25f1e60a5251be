//! Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks",
//! 2014), invariant H1.
//!
//! # Brief overview
//!
//! * [`Timestamp`]: `(physical_ms, counter, node)`, totally ordered in that
//!   order. Its text form is fixed width, `PPPPPPPPPPPPPPP:CCCCCCCCCC:node`
//!   (15 and 10 digits), so that comparing two texts byte by byte gives the
//!   same answer as comparing the clocks. The parser also takes the seed's
//!   unpadded form (`1700000000000:0:nodeA`).
//! * [`Hlc`]: one node's clock. [`Hlc::now`] stamps a local event,
//!   [`Hlc::receive`] merges a remote timestamp (and refuses one too far in
//!   the future).
//! * [`WallClock`]: where physical time comes from; [`SystemClock`] in
//!   production, [`ManualClock`] in tests and simulations.
//!
//! When the wall clock steps back the physical part is kept and the counter
//! advances; the physical part never runs ahead of the largest wall-clock (or
//! accepted remote) reading. The only exception is counter overflow: after
//! 2^32 timestamps within one millisecond the counter carries into the
//! physical part, exactly as if `(physical, counter)` were one 80-bit number.
//! Local stamping cannot get there; only a remote timestamp whose counter is
//! already at its maximum can, and such a timestamp passed the drift check.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest physical part, in milliseconds since the Unix epoch: 15 decimal
/// digits (the year 33658). The text form depends on it.
pub const PHYSICAL_MS_MAX: u64 = 999_999_999_999_999;
/// Digits of the physical part in the fixed-width text form.
pub const PHYSICAL_DIGITS: usize = 15;
/// Digits of the counter in the fixed-width text form (`u32::MAX` has 10).
pub const COUNTER_DIGITS: usize = 10;
/// Longest node id, in bytes.
pub const NODE_BYTES_MAX: usize = 64;
/// Default for [`Hlc::drift_ms_max`]: a remote timestamp more than one minute
/// ahead of the local wall clock is refused.
pub const DRIFT_MS_MAX_DEFAULT: u64 = 60_000;
/// Longest text form: both numbers, two colons and the longest node.
pub const TEXT_BYTES_MAX: usize = PHYSICAL_DIGITS + 1 + COUNTER_DIGITS + 1 + NODE_BYTES_MAX;

const _: () = assert!(PHYSICAL_MS_MAX == 10u64.pow(PHYSICAL_DIGITS as u32) - 1);
const _: () = assert!((u32::MAX as u64) < 10u64.pow(COUNTER_DIGITS as u32));
const _: () = assert!(NODE_BYTES_MAX <= u8::MAX as usize); // stored in one byte in the log

/// What is wrong with a timestamp or a clock reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlcError {
    #[error(
        "HLC text {text:?} is malformed: {reason}; expected `physical:counter:node`, e.g. `1700000000000:0:nodeA`"
    )]
    Malformed { text: String, reason: &'static str },
    #[error(
        "HLC node id {node:?} is invalid: {reason}; use 1 to {NODE_BYTES_MAX} bytes without spaces or control characters"
    )]
    BadNode { node: String, reason: &'static str },
    #[error(
        "HLC physical time {physical_ms} is beyond the largest supported value {PHYSICAL_MS_MAX}"
    )]
    PhysicalTooLarge { physical_ms: u64 },
    #[error(
        "remote timestamp {remote} is {ahead_ms} ms ahead of the local clock, more than the allowed drift of {drift_ms_max} ms; check the remote node's clock"
    )]
    DriftExceeded {
        remote: String,
        ahead_ms: u64,
        drift_ms_max: u64,
    },
    #[error(
        "the HLC is exhausted: it has reached physical time {PHYSICAL_MS_MAX} with counter {max}, so no later timestamp exists; a timestamp this large came from a remote node or an imported event, find and remove it",
        max = u32::MAX
    )]
    Exhausted,
}

/// A node's identity inside timestamps: 1 to [`NODE_BYTES_MAX`] bytes of
/// UTF-8 without whitespace or control characters. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Checks and wraps a node id.
    pub fn new(node: &str) -> Result<NodeId, HlcError> {
        validate_node(node)?;
        Ok(NodeId(Arc::from(node)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a node id without allocating.
pub fn validate_node(node: &str) -> Result<(), HlcError> {
    let bad = |reason| {
        Err(HlcError::BadNode {
            node: node.chars().take(NODE_BYTES_MAX + 8).collect(),
            reason,
        })
    };
    if node.is_empty() {
        return bad("it is empty");
    }
    if node.len() > NODE_BYTES_MAX {
        return bad("it is too long");
    }
    if node.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or a control character");
    }
    Ok(())
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A hybrid logical clock reading. Ordered by physical part, then counter,
/// then node (byte order), which is a total order: two timestamps of
/// different nodes never compare equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    // Field order is the comparison order of the derived `Ord`.
    physical_ms: u64,
    counter: u32,
    node: NodeId,
}

impl Timestamp {
    pub fn new(physical_ms: u64, counter: u32, node: NodeId) -> Result<Timestamp, HlcError> {
        if physical_ms > PHYSICAL_MS_MAX {
            return Err(HlcError::PhysicalTooLarge { physical_ms });
        }
        Ok(Timestamp {
            physical_ms,
            counter,
            node,
        })
    }

    /// Builds a timestamp from parts read back from storage.
    pub fn from_parts(physical_ms: u64, counter: u32, node: &str) -> Result<Timestamp, HlcError> {
        Timestamp::new(physical_ms, counter, NodeId::new(node)?)
    }

    pub fn physical_ms(&self) -> u64 {
        self.physical_ms
    }

    pub fn counter(&self) -> u32 {
        self.counter
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The fixed-width text form, `001700000000000:0000000000:nodeA`
    /// style: 15-digit physical part, 10-digit counter, node.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Parses the fixed-width form or the seed's unpadded form.
    pub fn parse(text: &str) -> Result<Timestamp, HlcError> {
        let (physical_ms, counter, node) = parse_parts(text)?;
        Timestamp::new(physical_ms, counter, NodeId::new(node)?)
    }

    /// Compares two texts as clocks; both must parse.
    pub fn compare_text(a: &str, b: &str) -> Result<Ordering, HlcError> {
        let (pa, ca, na) = parse_parts(a)?;
        let (pb, cb, nb) = parse_parts(b)?;
        Ok((pa, ca, na).cmp(&(pb, cb, nb)))
    }
}

/// Splits `physical:counter:node` without allocating. The node is checked.
pub fn parse_parts(text: &str) -> Result<(u64, u32, &str), HlcError> {
    let malformed = |reason| HlcError::Malformed {
        text: text.chars().take(TEXT_BYTES_MAX + 8).collect(),
        reason,
    };
    if text.len() > TEXT_BYTES_MAX {
        return Err(malformed("it is too long"));
    }
    let mut parts = text.splitn(3, ':');
    let physical = parts.next().unwrap_or_default();
    let counter = parts.next().ok_or_else(|| malformed("it has no counter"))?;
    let node = parts.next().ok_or_else(|| malformed("it has no node"))?;
    let physical_ms = parse_digits(physical, PHYSICAL_DIGITS)
        .ok_or_else(|| malformed("the physical part is not 1 to 15 decimal digits"))?;
    let counter = parse_digits(counter, COUNTER_DIGITS)
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| malformed("the counter is not a decimal number up to 4294967295"))?;
    validate_node(node)?;
    Ok((physical_ms, counter, node))
}

fn parse_digits(text: &str, digits_max: usize) -> Option<u64> {
    if text.is_empty() || text.len() > digits_max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_text(f, self.physical_ms, self.counter, self.node.as_str())
    }
}

/// Writes the fixed-width text form of a clock reading given as parts.
pub fn write_text(
    out: &mut impl fmt::Write,
    physical_ms: u64,
    counter: u32,
    node: &str,
) -> fmt::Result {
    write!(
        out,
        "{physical_ms:0pw$}:{counter:0cw$}:{node}",
        pw = PHYSICAL_DIGITS,
        cw = COUNTER_DIGITS
    )
}

/// The fixed-width text form of a clock reading given as parts (the
/// `timestamp` column of the seed's table).
pub fn timestamp_text(physical_ms: u64, counter: u32, node: &str) -> String {
    let mut text = String::with_capacity(PHYSICAL_DIGITS + COUNTER_DIGITS + 2 + node.len());
    let _ = write_text(&mut text, physical_ms, counter, node);
    text
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.physical_ms, self.counter, self.node)
    }
}

impl FromStr for Timestamp {
    type Err = HlcError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Source of physical time, in milliseconds since the Unix epoch.
pub trait WallClock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The operating system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 reads as 0: the HLC then runs on its counter.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now_ms))
    }
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, AtomicOrdering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, AtomicOrdering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(AtomicOrdering::SeqCst)
    }
}

/// One node's hybrid logical clock. Thread-safe; every method takes `&self`.
#[derive(Debug)]
pub struct Hlc {
    node: NodeId,
    clock: Arc<dyn WallClock>,
    drift_ms_max: u64,
    // (physical_ms, counter) of the last timestamp handed out or received.
    last: Mutex<(u64, u32)>,
}

impl Hlc {
    pub fn new(node: NodeId, clock: Arc<dyn WallClock>, drift_ms_max: u64) -> Hlc {
        Hlc {
            node,
            clock,
            drift_ms_max,
            last: Mutex::new((0, 0)),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn drift_ms_max(&self) -> u64 {
        self.drift_ms_max
    }

    fn wall_ms(&self) -> u64 {
        // Clamp rather than fail: a wall clock past the year 33658 is broken,
        // and the counter keeps the clock monotonic in the meantime.
        self.clock.now_ms().min(PHYSICAL_MS_MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u32)> {
        // The guarded value is two integers that are always consistent, so a
        // panic elsewhere while holding the lock cannot leave it torn.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A timestamp for a local event: greater than every timestamp this clock
    /// has handed out or received.
    ///
    /// Fails only when the clock has reached its largest value
    /// ([`HlcError::Exhausted`]), which takes a timestamp from elsewhere
    /// at the very end of the range: the clock itself never gets there.
    pub fn now(&self) -> Result<Timestamp, HlcError> {
        let wall = self.wall_ms();
        let mut last = self.lock();
        let next = if wall > last.0 {
            (wall, 0)
        } else {
            // The wall clock has not moved on (or stepped back): keep the
            // physical part and count.
            tick(*last)?
        };
        *last = next;
        Ok(self.stamp(next))
    }

    /// `n` timestamps for local events, in increasing order, with one
    /// reading of the wall clock and one turn of the lock: what `n` calls
    /// of [`Hlc::now`] give when the wall clock does not move between
    /// them. An appender stamps a batch with it (a clock reading costs tens
    /// of nanoseconds in a VM, as much as the rest of planning an event).
    /// Stamps left unused are skipped: later ones are greater still.
    ///
    /// Fails, leaving the clock as it was, when fewer than `n` timestamps
    /// are left ([`HlcError::Exhausted`]).
    pub fn now_many(&self, n: usize) -> Result<LocalStamps, HlcError> {
        let wall = self.wall_ms();
        let mut last = self.lock();
        if n == 0 {
            return Ok(LocalStamps {
                next: *last,
                left: 0,
                node: self.node.clone(),
            });
        }
        let first = if wall > last.0 {
            (wall, 0)
        } else {
            tick(*last)?
        };
        *last = advance(first, n as u64 - 1)?;
        Ok(LocalStamps {
            next: first,
            left: n,
            node: self.node.clone(),
        })
    }

    /// Merges a remote timestamp (the receive rule) and returns a local
    /// timestamp greater than both the remote one and everything before.
    ///
    /// Refuses a remote timestamp more than [`Hlc::drift_ms_max`] ahead of the
    /// local wall clock, leaving the clock unchanged.
    pub fn receive(&self, remote: &Timestamp) -> Result<Timestamp, HlcError> {
        let wall = self.wall_ms();
        if remote.physical_ms > wall.saturating_add(self.drift_ms_max) {
            return Err(HlcError::DriftExceeded {
                remote: remote.to_string(),
                ahead_ms: remote.physical_ms - wall,
                drift_ms_max: self.drift_ms_max,
            });
        }
        let mut last = self.lock();
        let physical = wall.max(last.0).max(remote.physical_ms);
        let next = match (physical == last.0, physical == remote.physical_ms) {
            (true, true) => tick((physical, last.1.max(remote.counter)))?,
            (true, false) => tick(*last)?,
            (false, true) => tick((physical, remote.counter))?,
            (false, false) => (physical, 0),
        };
        *last = next;
        Ok(self.stamp(next))
    }

    /// Merges a remote timestamp without handing out a new one (used when
    /// replaying events whose timestamps were already assigned).
    pub fn observe(&self, remote: &Timestamp) -> Result<(), HlcError> {
        self.receive(remote).map(drop)
    }

    /// Moves the clock to at least `(physical_ms, counter)` without the drift
    /// check: used on open with the largest timestamp already in the log, so
    /// that a restart after the wall clock stepped back stays monotonic.
    pub fn restore(&self, physical_ms: u64, counter: u32) {
        let mut last = self.lock();
        *last = (*last).max((physical_ms.min(PHYSICAL_MS_MAX), counter));
    }

    /// The last timestamp this clock handed out, without advancing it.
    pub fn last(&self) -> Timestamp {
        let last = *self.lock();
        self.stamp(last)
    }

    fn stamp(&self, (physical_ms, counter): (u64, u32)) -> Timestamp {
        debug_assert!(physical_ms <= PHYSICAL_MS_MAX);
        Timestamp {
            physical_ms,
            counter,
            node: self.node.clone(),
        }
    }
}

/// Timestamps handed out together by [`Hlc::now_many`], in order.
#[derive(Debug)]
pub struct LocalStamps {
    next: (u64, u32),
    left: usize,
    node: NodeId,
}

impl Iterator for LocalStamps {
    type Item = Timestamp;

    fn next(&mut self) -> Option<Timestamp> {
        if self.left == 0 {
            return None;
        }
        let (physical_ms, counter) = self.next;
        self.left -= 1;
        if self.left > 0 {
            // Reserved by `now_many`: cannot run out.
            self.next = tick(self.next).expect("reserved timestamps");
        }
        Some(Timestamp {
            physical_ms,
            counter,
            node: self.node.clone(),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for LocalStamps {}

/// The clock value `steps` ticks after `(physical, counter)`, as that many
/// [`tick`]s would leave it.
fn advance((physical, counter): (u64, u32), steps: u64) -> Result<(u64, u32), HlcError> {
    // Each physical millisecond holds 2^32 counter values.
    let total = u128::from(counter) + u128::from(steps);
    let physical = u128::from(physical) + (total >> 32);
    if physical > u128::from(PHYSICAL_MS_MAX) {
        return Err(HlcError::Exhausted);
    }
    Ok((physical as u64, (total & u128::from(u32::MAX)) as u32))
}

/// The next clock value after `(physical, counter)`: the counter plus one,
/// carrying into the physical part when the counter is exhausted.
fn tick((physical, counter): (u64, u32)) -> Result<(u64, u32), HlcError> {
    match counter.checked_add(1) {
        Some(counter) => Ok((physical, counter)),
        None if physical < PHYSICAL_MS_MAX => Ok((physical + 1, 0)),
        None => Err(HlcError::Exhausted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn clock_at(ms: u64) -> (Arc<ManualClock>, Hlc) {
        let wall = Arc::new(ManualClock::new(ms));
        let hlc = Hlc::new(node("A"), wall.clone(), DRIFT_MS_MAX_DEFAULT);
        (wall, hlc)
    }

    #[test]
    fn h1_text_is_fixed_width_and_reads_as_physical_counter_node() {
        let ts = Timestamp::from_parts(1_700_000_000_000, 7, "nodeA").unwrap();
        assert_eq!(ts.to_text(), "001700000000000:0000000007:nodeA");
        assert_eq!(Timestamp::parse(&ts.to_text()).unwrap(), ts);
    }

    #[test]
    fn h1_parser_accepts_the_seed_unpadded_form() {
        let ts = Timestamp::parse("1700000000000:0:nodeA").unwrap();
        assert_eq!(ts.physical_ms(), 1_700_000_000_000);
        assert_eq!(ts.counter(), 0);
        assert_eq!(ts.node().as_str(), "nodeA");
    }

    #[test]
    fn h1_parser_rejects_malformed_text_with_a_reason() {
        for bad in [
            "",
            "1",
            "1:2",
            "x:0:n",
            "1:x:n",
            "1:0:",
            "-1:0:n",
            "1:4294967296:n",
            "1234567890123456:0:n",
            "1:0:has space",
            " 1:0:n",
        ] {
            let err = Timestamp::parse(bad).unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad:?}");
        }
        let long_node = "n".repeat(NODE_BYTES_MAX + 1);
        assert!(Timestamp::parse(&format!("1:0:{long_node}")).is_err());
    }

    #[test]
    fn h1_node_breaks_ties_so_distinct_events_never_compare_equal() {
        // The seed's Go comparison ignored the node.
        let a = Timestamp::from_parts(5, 1, "A").unwrap();
        let b = Timestamp::from_parts(5, 1, "B").unwrap();
        assert_eq!(a.cmp(&b), Ordering::Less);
        assert_ne!(a, b);
    }

    #[test]
    fn h1_text_comparison_is_numeric_unlike_the_seed() {
        // As text, "9:..." > "10:..." in the seed's unpadded form.
        let nine = Timestamp::from_parts(9, 0, "A").unwrap();
        let ten = Timestamp::from_parts(10, 0, "A").unwrap();
        assert!(nine < ten);
        assert!(nine.to_text() < ten.to_text());
        assert_eq!(
            Timestamp::compare_text("9:0:A", "10:0:A").unwrap(),
            Ordering::Less
        );
    }

    #[test]
    fn h1_wall_clock_step_back_keeps_physical_and_bumps_counter() {
        let (wall, hlc) = clock_at(1_000);
        let t1 = hlc.now().unwrap();
        wall.set(400); // NTP stepped the clock back
        let t2 = hlc.now().unwrap();
        let t3 = hlc.now().unwrap();
        assert_eq!((t2.physical_ms(), t2.counter()), (1_000, 1));
        assert_eq!((t3.physical_ms(), t3.counter()), (1_000, 2));
        assert!(t1 < t2 && t2 < t3);
        wall.set(1_001);
        let t4 = hlc.now().unwrap();
        assert_eq!((t4.physical_ms(), t4.counter()), (1_001, 0));
    }

    #[test]
    fn h1_receive_follows_the_remote_when_it_is_ahead() {
        let (_wall, hlc) = clock_at(1_000);
        hlc.now().unwrap();
        let remote = Timestamp::from_parts(1_500, 3, "B").unwrap();
        let t = hlc.receive(&remote).unwrap();
        assert_eq!((t.physical_ms(), t.counter()), (1_500, 4));
        assert!(t > remote);
        let t2 = hlc.now().unwrap();
        assert_eq!((t2.physical_ms(), t2.counter()), (1_500, 5));
    }

    #[test]
    fn h1_receive_of_an_older_remote_still_advances_the_local_clock() {
        let (_wall, hlc) = clock_at(2_000);
        let before = hlc.now().unwrap();
        let remote = Timestamp::from_parts(100, 9, "B").unwrap();
        let t = hlc.receive(&remote).unwrap();
        assert!(t > before && t > remote);
        assert_eq!((t.physical_ms(), t.counter()), (2_000, 1));
    }

    #[test]
    fn h1_receive_refuses_a_remote_beyond_the_drift_and_leaves_the_clock_alone() {
        let (_wall, hlc) = clock_at(1_000);
        let before = hlc.now().unwrap();
        let remote = Timestamp::from_parts(1_000 + DRIFT_MS_MAX_DEFAULT + 1, 0, "B").unwrap();
        let err = hlc.receive(&remote).unwrap_err();
        assert!(
            matches!(err, HlcError::DriftExceeded { ahead_ms, .. } if ahead_ms == DRIFT_MS_MAX_DEFAULT + 1)
        );
        assert!(err.to_string().contains("drift"));
        assert_eq!(hlc.last(), before);
        let at_limit = Timestamp::from_parts(1_000 + DRIFT_MS_MAX_DEFAULT, 0, "B").unwrap();
        assert!(hlc.receive(&at_limit).is_ok());
    }

    #[test]
    fn h1_counter_overflow_carries_and_stays_monotonic() {
        let (_wall, hlc) = clock_at(1_000);
        let remote = Timestamp::from_parts(1_000, u32::MAX, "B").unwrap();
        let t = hlc.receive(&remote).unwrap();
        assert_eq!((t.physical_ms(), t.counter()), (1_001, 0));
        assert!(t > remote);
        let t2 = hlc.now().unwrap();
        assert!(t2 > t);
    }

    #[test]
    fn h1_an_exhausted_clock_is_an_error_and_stays_where_it_is() {
        let (_wall, hlc) = clock_at(1_000);
        hlc.restore(PHYSICAL_MS_MAX, u32::MAX);
        let before = hlc.last();
        assert!(matches!(hlc.now(), Err(HlcError::Exhausted)));
        let remote = Timestamp::from_parts(1_000, 0, "B").unwrap();
        let err = hlc.receive(&remote).unwrap_err();
        assert!(matches!(err, HlcError::Exhausted));
        assert!(err.to_string().contains("no later timestamp"));
        assert_eq!(hlc.last(), before);
        // One step short of the end still ticks, to the very last value.
        let (_wall, hlc) = clock_at(1_000);
        hlc.restore(PHYSICAL_MS_MAX, u32::MAX - 1);
        let t = hlc.now().unwrap();
        assert_eq!((t.physical_ms(), t.counter()), (PHYSICAL_MS_MAX, u32::MAX));
    }

    #[test]
    fn h1_stamps_taken_together_are_what_as_many_calls_of_now_give() {
        let (wall, a) = clock_at(1_000);
        let (_, b) = clock_at(1_000);
        let before = a.now().unwrap();
        b.now().unwrap();
        let many: Vec<Timestamp> = a.now_many(5).unwrap().collect();
        let one_by_one: Vec<Timestamp> = (0..5).map(|_| b.now().unwrap()).collect();
        assert_eq!(many, one_by_one);
        assert!(many.windows(2).all(|w| w[0] < w[1]));
        assert!(many[0] > before);
        assert!(a.now().unwrap() > many[4], "the clock moved past them");
        assert!(a.now_many(0).unwrap().next().is_none());
        // A wall clock that moved on starts the next ones afresh.
        wall.set(2_000);
        let t = a.now_many(2).unwrap().next().unwrap();
        assert_eq!((t.physical_ms(), t.counter()), (2_000, 0));
    }

    #[test]
    fn h1_stamps_taken_together_carry_into_the_next_millisecond_and_stop_at_the_end() {
        let (_wall, hlc) = clock_at(1_000);
        hlc.restore(1_000, u32::MAX - 1);
        let got: Vec<(u64, u32)> = hlc
            .now_many(3)
            .unwrap()
            .map(|t| (t.physical_ms(), t.counter()))
            .collect();
        assert_eq!(got, [(1_000, u32::MAX), (1_001, 0), (1_001, 1)]);
        let t = hlc.now().unwrap();
        assert_eq!((t.physical_ms(), t.counter()), (1_001, 2));
        // Not enough left: refused, and the clock stays where it was.
        let (_wall, hlc) = clock_at(1_000);
        hlc.restore(PHYSICAL_MS_MAX, u32::MAX - 2);
        let before = hlc.last();
        assert!(matches!(hlc.now_many(4), Err(HlcError::Exhausted)));
        assert_eq!(hlc.last(), before);
        assert_eq!(hlc.now_many(2).unwrap().count(), 2);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let ts = Timestamp::from_parts(12, 3, "n").unwrap();
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(json, "\"000000000000012:0000000003:n\"");
        let back: Timestamp = serde_json::from_str("\"12:3:n\"").unwrap();
        assert_eq!(back, ts);
    }

    fn arb_node() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:-]{1,12}"
    }

    fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
        (0..=PHYSICAL_MS_MAX, any::<u32>(), arb_node())
            .prop_map(|(p, c, n)| Timestamp::from_parts(p, c, &n).unwrap())
    }

    #[derive(Debug, Clone)]
    enum Step {
        SetWall(u64),
        Now,
        Receive(u64, u32, String),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..5_000).prop_map(Step::SetWall),
            Just(Step::Now),
            (
                0u64..5_000,
                prop_oneof![0u32..4, Just(u32::MAX - 1), Just(u32::MAX)],
                arb_node()
            )
                .prop_map(|(p, c, n)| Step::Receive(p, c, n)),
        ]
    }

    proptest! {
        #[test]
        fn h1_text_order_equals_clock_order(a in arb_timestamp(), b in arb_timestamp()) {
            prop_assert_eq!(a.cmp(&b), a.to_text().cmp(&b.to_text()));
        }

        #[test]
        fn h1_text_round_trips(a in arb_timestamp()) {
            prop_assert_eq!(Timestamp::parse(&a.to_text()).unwrap(), a.clone());
            // The unpadded (seed) form parses to the same clock.
            let seed = format!("{}:{}:{}", a.physical_ms(), a.counter(), a.node());
            prop_assert_eq!(Timestamp::parse(&seed).unwrap(), a);
        }

        #[test]
        fn h1_clock_is_monotonic_under_arbitrary_wall_clock_and_remotes(
            steps in proptest::collection::vec(arb_step(), 1..200)
        ) {
            let wall = Arc::new(ManualClock::new(0));
            let hlc = Hlc::new(node("local"), wall.clone(), 1_000);
            let mut prev: Option<Timestamp> = None;
            let mut wall_max = 0u64;
            let mut remote_max = 0u64;
            for step in steps {
                let t = match step {
                    Step::SetWall(ms) => { wall.set(ms); wall_max = wall_max.max(ms); continue }
                    Step::Now => hlc.now().unwrap(),
                    Step::Receive(p, c, n) => {
                        let remote = Timestamp::from_parts(p, c, &n).unwrap();
                        match hlc.receive(&remote) {
                            Ok(t) => { prop_assert!(t > remote); remote_max = remote_max.max(p); t }
                            Err(HlcError::DriftExceeded { .. }) => {
                                prop_assert!(p > wall.now_ms() + 1_000);
                                continue
                            }
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                };
                if let Some(prev) = &prev {
                    prop_assert!(t > *prev, "{t:?} after {prev:?}");
                }
                // The physical part never runs away from real time: at most
                // the largest reading seen, plus one per counter carry.
                prop_assert!(t.physical_ms() <= wall_max.max(remote_max) + 1);
                prev = Some(t);
            }
        }
    }
}
