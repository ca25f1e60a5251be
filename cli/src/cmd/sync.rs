//! `strata sync`: the --store directory, as a replica, syncs with a server
//! over QUIC: until idle (default), or continuously with --watch; --status
//! prints the local state without connecting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata::projection::counter::CounterProjection;
use strata::projection::todo::TodoProjection;
use strata::sync::{Replica, ReplicaConfig, ReplicaCore, ReplicaOptions, SyncError, SyncStatus};
use strata_server::client::{ClientError, ClientOptions, SyncClient, SyncReport};
use strata_server::tls::Trust;

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

/// How often --watch looks at the status.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's QUIC address, host:port (printed by `strata serve`);
    /// several nodes of one deployment separated by commas, tried in turn
    /// after a failure.
    #[arg(long, required_unless_present = "status")]
    server: Option<String>,
    /// Hosted store on the server to follow (the local directory is the
    /// global --store).
    #[arg(long, default_value = strata_server::DEFAULT_STORE)]
    remote_store: String,
    /// Pin the server's certificate: its SHA-256 fingerprint in hex, as the
    /// server prints it at start.
    #[arg(long, conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust the certificates in this PEM or DER file (e.g. the server's
    /// .tls/cert.pem, or a CA) instead of pinning.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name the server's certificate must hold (checked with --ca).
    #[arg(long, default_value = strata_server::client::SERVER_NAME_DEFAULT)]
    server_name: String,
    /// The server's token.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Stay connected and push local changes as they happen, printing
    /// status changes, until Ctrl-C.
    #[arg(long, conflicts_with = "status")]
    watch: bool,
    /// Print the local sync status (pending events, committed position,
    /// rejections) without connecting.
    #[arg(long)]
    status: bool,
    /// Seconds a push may go unanswered before the connection counts as
    /// dead.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

fn open_replica(cli: &Cli, create: bool) -> Result<Arc<Replica>, Failure> {
    if !create && !cli.store.exists() {
        return Err(Failure::usage(format!(
            "{}: no such replica; run `strata sync --server HOST:PORT` first",
            cli.store.display()
        )));
    }
    let replica = Replica::open(
        &cli.store,
        ReplicaOptions {
            projections: vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
            ..ReplicaOptions::default()
        },
    )?;
    Ok(Arc::new(replica))
}

fn close_replica(replica: Arc<Replica>) -> Result<(), Failure> {
    match Arc::try_unwrap(replica) {
        Ok(r) => Ok(r.close()?),
        // A sync task still holds it; dropping closes it.
        Err(_) => Ok(()),
    }
}

/// Exit code and message for a client error.
fn failure(e: ClientError) -> Failure {
    let code = match &e {
        _ if e.is_unavailable() => Code::Unavailable,
        ClientError::Options(_) | ClientError::Tls(_) | ClientError::FingerprintMismatch(_) => {
            Code::Usage
        }
        ClientError::Sync(SyncError::Refused { .. }) => Code::Usage,
        ClientError::Sync(SyncError::Version { .. }) => Code::Usage,
        ClientError::Sync(
            SyncError::WrongStore { .. } | SyncError::ServerBehind { .. } | SyncError::Storage(_),
        ) => Code::Damage,
        _ => Code::Unavailable,
    };
    Failure {
        code,
        message: e.to_string(),
    }
}

fn options(args: &Args) -> Result<ClientOptions, Failure> {
    let server = args
        .server
        .clone()
        .ok_or_else(|| Failure::usage("pass --server HOST:PORT"))?;
    let trust = match (&args.fingerprint, &args.ca) {
        (Some(fp), None) => Trust::Pin(fp.clone()),
        (None, Some(path)) => Trust::CaFile(path.clone()),
        _ => {
            return Err(Failure::usage(
                "pass --fingerprint HEX (printed by the server at start) or --ca FILE",
            ));
        }
    };
    if args.timeout_secs == 0 {
        return Err(Failure::usage("--timeout-secs must be above zero"));
    }
    let mut opts = ClientOptions::new(server, trust);
    opts.store = args.remote_store.clone();
    opts.server_name = args.server_name.clone();
    opts.token = args.token.clone();
    opts.request_timeout = Duration::from_secs(args.timeout_secs);
    Ok(opts)
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    if args.status {
        let replica = open_replica(cli, false)?;
        let core = ReplicaCore::new(ReplicaConfig::new(args.remote_store.clone(), ""));
        let mut status = core.status(&replica.storage(), strata_server::quic::now_ms());
        // What the last `strata sync` saw, if any.
        let last = replica.last_sync()?;
        if let Some((head, at)) = last {
            status.server_head = status.server_head.max(head);
            status.last_sync_ms = Some(at);
        }
        let rejections = replica.rejections()?.len();
        print_summary(cli, None, &status, rejections, None, last.is_some());
        close_replica(replica)?;
        return Ok(Code::Ok);
    }
    let opts = options(args)?;
    let server = opts.server.clone();
    let replica = open_replica(cli, true)?;
    let client = Arc::new(SyncClient::new(replica.clone(), opts).map_err(failure)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("starting the runtime: {e}")))?;
    let result = if args.watch {
        runtime.block_on(watch(cli, &client))
    } else {
        runtime.block_on(client.sync_until_idle()).map(|_| ())
    };
    let status = client.status();
    let report = client.report();
    if let Some(at) = status.last_sync_ms {
        replica.record_last_sync(status.server_head, at)?;
    }
    let rejections = replica.rejections()?.len();
    drop(client);
    drop(runtime);
    close_replica(replica)?;
    result.map_err(failure)?;
    print_summary(cli, Some(&server), &status, rejections, Some(&report), true);
    Ok(Code::Ok)
}

/// Runs sync until Ctrl-C, printing each change of the status.
async fn watch(cli: &Cli, client: &Arc<SyncClient>) -> Result<(), ClientError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let c = client.clone();
    let mut task = tokio::spawn(async move { c.run(stop_rx).await });
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut last: Option<(bool, usize, u64, u64)> = None;
    loop {
        let s = client.status();
        let key = (s.connected, s.pending, s.committed, s.server_head);
        if last != Some(key) {
            last = Some(key);
            if cli.json {
                crate::out::json_line(&s);
            } else {
                println!(
                    "{} pending={} committed={}/{}",
                    if s.connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    s.pending,
                    s.committed,
                    s.server_head
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = &mut ctrl_c => break,
            r = &mut task => {
                return r.map_err(|e| ClientError::Runtime(e.to_string()))?;
            }
        }
    }
    let _ = stop_tx.send(true);
    task.await
        .map_err(|e| ClientError::Runtime(e.to_string()))?
}

fn print_summary(
    cli: &Cli,
    server: Option<&str>,
    s: &SyncStatus,
    rejections: usize,
    report: Option<&SyncReport>,
    head_known: bool,
) {
    let now = strata_server::quic::now_ms();
    if cli.json {
        crate::out::json_line(&serde_json::json!({
            "server": server,
            "connected": s.connected || report.is_some_and(|r| r.connections > 0),
            "pending": s.pending,
            "oldest_pending_ms": s.oldest_pending_ms,
            "committed": s.committed,
            "server_head": head_known.then_some(s.server_head),
            "last_sync_ms": s.last_sync_ms,
            "rejections": rejections,
            "report": report,
        }));
        return;
    }
    match server {
        Some(server) => println!("synced with {server}"),
        None => println!("local sync status (not connected)"),
    }
    let age = s
        .oldest_pending_ms
        .map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
    let connected = s.connected || report.is_some_and(|r| r.connections > 0);
    println!("  connected:      {}", if connected { "yes" } else { "no" });
    let head = if head_known {
        let then = if server.is_some() {
            ""
        } else {
            " at the last sync"
        };
        format!("{}{then}", s.server_head)
    } else {
        "unknown".to_owned()
    };
    println!("  committed:      {} (server head {head})", s.committed);
    let last = s.last_sync_ms.map_or("never".to_owned(), |at| {
        format!("{:.1} s ago", now.saturating_sub(at) as f64 / 1000.0)
    });
    println!("  last sync:      {last}");
    println!("  pending:        {}", s.pending);
    println!("  oldest pending: {age}");
    println!("  rejections:     {rejections}");
    if let Some(r) = report {
        println!(
            "  this run:       {} pushes ({} events accepted, {} PULL_REQUIRED), {} events received",
            r.pushes, r.accepted_events, r.pull_required, r.received_events
        );
    }
}
