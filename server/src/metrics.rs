//! Prometheus metrics (`/metrics`, text exposition format 0.0.4): counters
//! and gauges of the whole server, and per hosted store its sync counters,
//! log syncs and a push-latency histogram. Written by hand: a few atomics
//! need no library.
//!
//! `/metrics` is served on its own listen address
//! ([`crate::Config::metrics`], for a private network or loopback, no
//! token), or on the HTTP port to a token that grants every store.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the push-latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS_SECS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: LATENCY_BUCKETS_SECS
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_SECS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes the histogram's lines for `name` with `labels` (`k="v",…`).
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, bound) in self.buckets.iter().zip(LATENCY_BUCKETS_SECS) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Counters of one transport.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Connections that authenticated.
    pub connections_total: AtomicU64,
    /// Connections open now, authenticated.
    pub connections_open: AtomicU64,
    /// Connections open now, not yet authenticated.
    pub unauthenticated_open: AtomicU64,
    /// Connections refused at a cap.
    pub refused_total: AtomicU64,
    pub bytes_in_total: AtomicU64,
    pub bytes_out_total: AtomicU64,
}

/// Counters of one hosted store's sync.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Group commits carried out.
    pub commits: AtomicU64,
    /// Pushes those commits held.
    pub pushes: AtomicU64,
    /// Pushes answered `Accepted`.
    pub accepted: AtomicU64,
    /// Pushes answered `PullRequired`.
    pub pull_required: AtomicU64,
    /// Events refused for good.
    pub rejections: AtomicU64,
    /// Pushes answered with an `Error`.
    pub errors: AtomicU64,
    /// From a push reaching the store's core to its final answer.
    pub push_latency: Histogram,
}

/// The server's own metrics (per store ones live with each store).
#[derive(Debug, Default)]
pub struct ServerMetrics {
    pub quic: TransportMetrics,
    pub ws: TransportMetrics,
    pub http_requests_total: AtomicU64,
    pub auth_failures_total: AtomicU64,
    /// Connections waiting to authenticate closed to make room for newer
    /// ones.
    pub unauthenticated_evicted_total: AtomicU64,
}

/// One unit of a gauge of [`ServerMetrics`], held while something is
/// open: added on creation, taken back on drop.
#[derive(Debug)]
pub struct Held {
    state: std::sync::Arc<crate::AppState>,
    gauge: fn(&ServerMetrics) -> &AtomicU64,
}

impl Held {
    pub fn new(
        state: &std::sync::Arc<crate::AppState>,
        gauge: fn(&ServerMetrics) -> &AtomicU64,
    ) -> Held {
        gauge(&state.metrics).fetch_add(1, Ordering::Relaxed);
        Held {
            state: state.clone(),
            gauge,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.gauge)(&self.state.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

/// One counter of a transport's metrics.
type TransportField = fn(&TransportMetrics) -> &AtomicU64;
/// One counter of a store's metrics.
type StoreField = fn(&StoreMetrics) -> &AtomicU64;

fn counter(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the metrics of the server and of `stores` (name, metrics, log
/// syncs, head, connected clients).
/// One hosted store's row of the exposition.
#[derive(Debug)]
pub struct StoreRow<'a> {
    pub name: String,
    pub stats: &'a StoreMetrics,
    /// `fdatasync` calls of an embedded log (`None` on PostgreSQL).
    pub syncs: Option<u64>,
    pub head: u64,
    pub clients: usize,
    /// PostgreSQL: the position this node's mirror holds (its views' source).
    pub mirrored: Option<u64>,
    /// The store's continuous archive, when it has one.
    pub archive: Option<ArchiveRow>,
}

/// One archive series' value for a store.
type ArchiveField = fn(&StoreRow<'_>, ArchiveRow) -> u64;

/// How far a store's archive got.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveRow {
    /// Every position up to this one is archived.
    pub head: u64,
    /// Archive steps that failed (each retried).
    pub failures: u64,
    /// Bytes uploaded and verified.
    pub bytes: u64,
}

/// A PostgreSQL node's listener for other nodes' commits.
#[derive(Debug, Clone, Copy)]
pub struct ListenerRow {
    pub connected: bool,
    pub connections: u64,
}

pub fn render(
    server: &ServerMetrics,
    stores: &[StoreRow<'_>],
    listener: Option<ListenerRow>,
) -> String {
    let mut out = String::new();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let transports = [("quic", &server.quic), ("ws", &server.ws)];
    let per_transport: [(&str, &str, &str, TransportField); 6] = [
        (
            "strata_connections_total",
            "Sync connections that authenticated.",
            "counter",
            |t| &t.connections_total,
        ),
        (
            "strata_connections_open",
            "Authenticated sync connections open now.",
            "gauge",
            |t| &t.connections_open,
        ),
        (
            "strata_unauthenticated_connections_open",
            "Sync connections open now that have not authenticated yet.",
            "gauge",
            |t| &t.unauthenticated_open,
        ),
        (
            "strata_connections_refused_total",
            "Sync connections refused at a cap.",
            "counter",
            |t| &t.refused_total,
        ),
        (
            "strata_bytes_in_total",
            "Bytes of sync messages received.",
            "counter",
            |t| &t.bytes_in_total,
        ),
        (
            "strata_bytes_out_total",
            "Bytes of sync messages sent.",
            "counter",
            |t| &t.bytes_out_total,
        ),
    ];
    for (name, help, kind, field) in per_transport {
        counter(&mut out, name, help, kind);
        for (transport, t) in transports {
            let _ = writeln!(
                out,
                "{name}{{transport=\"{transport}\"}} {}",
                load(field(t))
            );
        }
    }
    counter(
        &mut out,
        "strata_http_requests_total",
        "HTTP requests served.",
        "counter",
    );
    let _ = writeln!(
        out,
        "strata_http_requests_total {}",
        load(&server.http_requests_total)
    );
    counter(
        &mut out,
        "strata_auth_failures_total",
        "Failed authentications.",
        "counter",
    );
    let _ = writeln!(
        out,
        "strata_auth_failures_total {}",
        load(&server.auth_failures_total)
    );
    counter(
        &mut out,
        "strata_unauthenticated_evicted_total",
        "Connections waiting to authenticate closed to make room for newer ones.",
        "counter",
    );
    let _ = writeln!(
        out,
        "strata_unauthenticated_evicted_total {}",
        load(&server.unauthenticated_evicted_total)
    );

    let per_store: [(&str, &str, StoreField); 6] = [
        ("strata_commits_total", "Group commits.", |m| &m.commits),
        (
            "strata_pushes_total",
            "Pushes written by group commits.",
            |m| &m.pushes,
        ),
        (
            "strata_pushes_accepted_total",
            "Pushes answered Accepted.",
            |m| &m.accepted,
        ),
        (
            "strata_pull_required_total",
            "Pushes answered PullRequired.",
            |m| &m.pull_required,
        ),
        ("strata_rejections_total", "Events refused for good.", |m| {
            &m.rejections
        }),
        (
            "strata_push_errors_total",
            "Pushes answered with an Error.",
            |m| &m.errors,
        ),
    ];
    for (name, help, field) in per_store {
        counter(&mut out, name, help, "counter");
        for r in stores {
            let _ = writeln!(
                out,
                "{name}{{store=\"{}\"}} {}",
                r.name,
                load(field(r.stats))
            );
        }
    }
    counter(
        &mut out,
        "strata_fsyncs_total",
        "fdatasync calls of the store's log (embedded stores).",
        "counter",
    );
    for r in stores {
        if let Some(syncs) = r.syncs {
            let _ = writeln!(out, "strata_fsyncs_total{{store=\"{}\"}} {syncs}", r.name);
        }
    }
    counter(
        &mut out,
        "strata_head",
        "The store's last committed position (as this node knows it).",
        "gauge",
    );
    for r in stores {
        let _ = writeln!(out, "strata_head{{store=\"{}\"}} {}", r.name, r.head);
    }
    counter(
        &mut out,
        "strata_clients",
        "Clients connected to the store's core.",
        "gauge",
    );
    for r in stores {
        let _ = writeln!(out, "strata_clients{{store=\"{}\"}} {}", r.name, r.clients);
    }
    if stores.iter().any(|r| r.mirrored.is_some()) {
        counter(
            &mut out,
            "strata_mirror_position",
            "PostgreSQL: the position this node's copy of the log (the views' source) holds.",
            "gauge",
        );
        for r in stores {
            if let Some(m) = r.mirrored {
                let _ = writeln!(out, "strata_mirror_position{{store=\"{}\"}} {m}", r.name);
            }
        }
    }
    if stores.iter().any(|r| r.archive.is_some()) {
        let series: [(&str, &str, &str, ArchiveField); 4] = [
            (
                "strata_archive_head",
                "Every position up to this one is in the store's archive.",
                "gauge",
                |_, a| a.head,
            ),
            (
                "strata_archive_lag_events",
                "Events committed but not archived yet.",
                "gauge",
                |r, a| r.head.saturating_sub(a.head),
            ),
            (
                "strata_archive_failures_total",
                "Archive steps that failed (each is retried).",
                "counter",
                |_, a| a.failures,
            ),
            (
                "strata_archive_bytes_total",
                "Bytes uploaded to the archive and verified.",
                "counter",
                |_, a| a.bytes,
            ),
        ];
        for (name, help, kind, value) in series {
            counter(&mut out, name, help, kind);
            for r in stores {
                if let Some(a) = r.archive {
                    let _ = writeln!(out, "{name}{{store=\"{}\"}} {}", r.name, value(r, a));
                }
            }
        }
    }
    if let Some(l) = listener {
        counter(
            &mut out,
            "strata_pg_listener_connected",
            "PostgreSQL: 1 while this node listens for other nodes' commits.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "strata_pg_listener_connected {}",
            u8::from(l.connected)
        );
        counter(
            &mut out,
            "strata_pg_listener_connections_total",
            "PostgreSQL: connections the listener made (more than 1: it reconnected).",
            "counter",
        );
        let _ = writeln!(
            out,
            "strata_pg_listener_connections_total {}",
            l.connections
        );
    }
    counter(
        &mut out,
        "strata_push_latency_seconds",
        "From a push reaching the store's core to its final answer.",
        "histogram",
    );
    for r in stores {
        r.stats.push_latency.write(
            &mut out,
            "strata_push_latency_seconds",
            &format!("store=\"{}\"", r.name),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_series_and_cumulative_buckets() {
        let server = ServerMetrics::default();
        server
            .quic
            .connections_total
            .fetch_add(3, Ordering::Relaxed);
        let store = StoreMetrics::default();
        store.pushes.fetch_add(5, Ordering::Relaxed);
        store.push_latency.observe(Duration::from_micros(700));
        store.push_latency.observe(Duration::from_millis(30));
        let row = StoreRow {
            name: "default".into(),
            stats: &store,
            syncs: Some(2),
            head: 9,
            clients: 1,
            mirrored: Some(8),
            archive: Some(ArchiveRow {
                head: 7,
                failures: 1,
                bytes: 4096,
            }),
        };
        let listener = ListenerRow {
            connected: true,
            connections: 2,
        };
        let text = render(&server, &[row], Some(listener));
        for line in [
            "strata_connections_total{transport=\"quic\"} 3",
            "strata_pushes_total{store=\"default\"} 5",
            "strata_fsyncs_total{store=\"default\"} 2",
            "strata_head{store=\"default\"} 9",
            "strata_mirror_position{store=\"default\"} 8",
            "strata_archive_head{store=\"default\"} 7",
            "strata_archive_lag_events{store=\"default\"} 2",
            "strata_archive_failures_total{store=\"default\"} 1",
            "strata_archive_bytes_total{store=\"default\"} 4096",
            "strata_pg_listener_connected 1",
            "strata_pg_listener_connections_total 2",
            "strata_push_latency_seconds_bucket{store=\"default\",le=\"0.0005\"} 0",
            "strata_push_latency_seconds_bucket{store=\"default\",le=\"0.001\"} 1",
            "strata_push_latency_seconds_bucket{store=\"default\",le=\"0.05\"} 2",
            "strata_push_latency_seconds_bucket{store=\"default\",le=\"+Inf\"} 2",
            "strata_push_latency_seconds_count{store=\"default\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
