//! Who gets a place: caps on connections, in all and per client address.
//!
//! * [`ConnectionCount`]: HTTP connections. Past either cap a new
//!   connection is refused (closed at once).
//! * [`PendingAuth`]: sync connections that have not authenticated yet
//!   (a QUIC connection until its `Hello` is checked, a WebSocket until
//!   its token is). They never take places of authenticated connections
//!   ([`crate::AppState::connections`]). Past the per-address cap a new
//!   one is refused: that address is the crowd. Past the total cap the
//!   **oldest** waiting connection is evicted to make room, so that many
//!   addresses holding idle connections cannot lock real clients out: a
//!   real client authenticates within a round trip or two of connecting,
//!   an idle one waits for its deadline, so the idle ones are always the
//!   oldest (the policy of OpenSSH's `MaxStartups` in spirit, without the
//!   randomness).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Connections per address, for the caps.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    count: Arc<ConnectionCount>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = lock(&self.count.per_address);
        release(&mut map, self.address);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn release(map: &mut HashMap<IpAddr, usize>, address: IpAddr) {
    if let Some(n) = map.get_mut(&address) {
        *n -= 1;
        if *n == 0 {
            map.remove(&address);
        }
    }
}

impl ConnectionCount {
    /// Admits a connection from `address` if it stays within both caps.
    pub fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        total_max: usize,
        per_address_max: usize,
    ) -> Option<Admitted> {
        let mut map = lock(&self.per_address);
        let total: usize = map.values().sum();
        let here = map.get(&address).copied().unwrap_or(0);
        if total >= total_max || here >= per_address_max {
            return None;
        }
        *map.entry(address).or_default() += 1;
        Some(Admitted {
            count: self.clone(),
            address,
        })
    }

    /// Connections admitted now.
    pub fn total(&self) -> usize {
        lock(&self.per_address).values().sum()
    }
}

/// Connections waiting to authenticate; see the module documentation.
#[derive(Debug)]
pub struct PendingAuth {
    total_max: usize,
    per_address_max: usize,
    inner: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    next: u64,
    /// By admission order: the first is the oldest.
    entries: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    per_address: HashMap<IpAddr, usize>,
}

/// A place among connections waiting to authenticate; dropping it (once
/// authenticated, or gone) gives it back.
#[derive(Debug)]
pub struct Pending {
    owner: Arc<PendingAuth>,
    id: u64,
    evicted: Arc<Notify>,
}

/// Why a waiting place was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerAddressFull;

/// What [`PendingAuth::admit`] did.
#[derive(Debug)]
pub struct Admission {
    pub pending: Pending,
    /// Whether an older waiting connection was evicted to make room.
    pub evicted_another: bool,
}

impl PendingAuth {
    pub fn new(total_max: usize, per_address_max: usize) -> PendingAuth {
        PendingAuth {
            total_max: total_max.max(1),
            per_address_max: per_address_max.max(1),
            inner: Mutex::new(Waiting::default()),
        }
    }

    /// A place for a connection from `address`: refused past the
    /// per-address cap; past the total cap, the oldest waiting connection
    /// is told to go ([`Pending::evicted`]) and this one takes its place.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admission, PerAddressFull> {
        let mut w = lock(&self.inner);
        if w.per_address.get(&address).copied().unwrap_or(0) >= self.per_address_max {
            return Err(PerAddressFull);
        }
        let mut evicted_another = false;
        if w.entries.len() >= self.total_max
            && let Some((_, (old_address, notify))) = w.entries.pop_first()
        {
            release(&mut w.per_address, old_address);
            // Stored as a permit if its owner is not waiting yet.
            notify.notify_one();
            evicted_another = true;
        }
        let id = w.next;
        w.next += 1;
        let evicted = Arc::new(Notify::new());
        w.entries.insert(id, (address, evicted.clone()));
        *w.per_address.entry(address).or_default() += 1;
        Ok(Admission {
            pending: Pending {
                owner: self.clone(),
                id,
                evicted,
            },
            evicted_another,
        })
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Pending {
    /// Resolves when a newer connection took this place; the connection
    /// should then end (its client may retry).
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut w = lock(&self.owner.inner);
        // Absent if evicted: its place was given away already.
        if let Some((address, _)) = w.entries.remove(&self.id) {
            release(&mut w.per_address, address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let count = Arc::new(ConnectionCount::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = count.admit(a, 3, 2).unwrap();
        let _second = count.admit(a, 3, 2).unwrap();
        assert!(count.admit(a, 3, 2).is_none(), "per address");
        let _third = count.admit(b, 3, 2).unwrap();
        assert!(count.admit(b, 3, 2).is_none(), "in all");
        drop(first);
        let _fourth = count.admit(b, 3, 2).unwrap();
        assert_eq!(count.total(), 3);
    }

    #[tokio::test]
    async fn waiting_places_refuse_per_address_and_evict_the_oldest_in_all() {
        let pending = Arc::new(PendingAuth::new(3, 2));
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let a1 = pending.admit(ip(1)).unwrap();
        let a2 = pending.admit(ip(1)).unwrap();
        assert_eq!(pending.admit(ip(1)).unwrap_err(), PerAddressFull);
        let b1 = pending.admit(ip(2)).unwrap();
        assert!(!a1.evicted_another && !b1.evicted_another);
        // Full: the next one evicts the oldest, a1.
        let c1 = pending.admit(ip(3)).unwrap();
        assert!(c1.evicted_another);
        tokio::time::timeout(std::time::Duration::from_secs(1), a1.pending.evicted())
            .await
            .expect("the oldest is told to go");
        assert_eq!(pending.len(), 3);
        // Its address has a place again; dropping a1 now frees nothing twice.
        drop(a1);
        assert_eq!(pending.len(), 3);
        let a3 = pending.admit(ip(1)).unwrap();
        assert!(a3.evicted_another, "a2 was the oldest");
        tokio::time::timeout(std::time::Duration::from_secs(1), a2.pending.evicted())
            .await
            .unwrap();
        drop((a2, b1, c1, a3));
        assert!(pending.is_empty());
    }
}
