//! `strata demo`: the README's first command until the server lands.

use std::path::{Path, PathBuf};

use strata::{AggregateEvents, Error, ExpectedVersion, NewEvent, Options, Store};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the demo store (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the store afterwards (always kept with --dir).
    #[arg(long)]
    keep: bool,
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let temp;
    let dir: PathBuf = match &args.dir {
        Some(d) => {
            if d.join("log").exists() {
                return Err(Failure::usage(format!(
                    "{}: already holds a store; give a new directory",
                    d.display()
                )));
            }
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("strata-demo-")
                .tempdir()
                .map_err(|e| Failure::usage(format!("cannot create a temporary directory: {e}")))?;
            temp.path().join("store")
        }
    };
    let mut say = Narrator {
        json: cli.json,
        steps: Vec::new(),
    };
    let outcome = demo(&dir, &mut say);
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "dir": dir, "steps": say.steps, "ok": outcome.is_ok() })
        );
    }
    outcome?;
    if args.dir.is_none() {
        if args.keep {
            let kept = std::env::temp_dir().join(format!("strata-demo-{}", std::process::id()));
            copy_tree(&dir, &kept)
                .map_err(|e| Failure::usage(format!("cannot keep the store: {e}")))?;
            say.line(format!("kept the store in {}", kept.display()));
        } else {
            say.line(
                "removed the temporary store (run `strata demo --dir DIR` to keep one)".into(),
            );
        }
    }
    Ok(Code::Ok)
}

struct Narrator {
    json: bool,
    steps: Vec<String>,
}

impl Narrator {
    fn line(&mut self, text: String) {
        if !self.json {
            println!("{text}");
        }
        self.steps.push(text);
    }
}

fn counter_value(store: &Store, id: &str) -> Result<i64, Failure> {
    let mut value = 0i64;
    for e in store.read_aggregate(id, 1, usize::MAX)? {
        let data: serde_json::Value = e
            .data_json()
            .map_err(|err| Failure::damage(format!("event {}: {err}", e.event_id)))?;
        let n = data["value"].as_i64().unwrap_or(0);
        match e.event_type.as_str() {
            "CounterIncremented" => value += n,
            "CounterDecremented" => value -= n,
            _ => {}
        }
    }
    Ok(value)
}

fn demo(dir: &Path, say: &mut Narrator) -> Result<(), Failure> {
    let store = Store::open(dir, Options::default())?;
    say.line(format!(
        "opened a new store in {}\n  store id {}, HLC node {}, durability: sync (append returns after fdatasync)",
        dir.display(),
        store.store_id(),
        store.hlc().node()
    ));

    let inc = |n: i64| {
        NewEvent::json("CounterIncremented", &serde_json::json!({ "value": n })).expect("json")
    };
    let dec = |n: i64| {
        NewEvent::json("CounterDecremented", &serde_json::json!({ "value": n })).expect("json")
    };
    let batch = vec![inc(1), inc(1), inc(1), dec(1)];
    let retry = batch[1].clone();
    let c = store.append("counter-1", ExpectedVersion::NoStream, batch)?;
    say.line(format!(
        "appended 3 x CounterIncremented and 1 x CounterDecremented to counter-1 in one atomic batch\n  positions {}..{}, versions {}..{}",
        c[0].position, c[3].position, c[0].version, c[3].version
    ));

    let c = store.append_batch(&[
        AggregateEvents {
            aggregate_id: "counter-2".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![inc(5)],
        },
        AggregateEvents {
            aggregate_id: "counter-1".into(),
            expected: ExpectedVersion::Exact(4),
            events: vec![inc(1)],
        },
    ])?;
    say.line(format!(
        "appended to counter-2 and counter-1 together, atomically, with expected versions\n  positions {} and {}",
        c[0].position, c[1].position
    ));

    match store.append("counter-1", ExpectedVersion::Exact(4), vec![inc(1)]) {
        Err(e @ Error::Conflict { .. }) => {
            say.line(format!("a stale expected version is refused:\n  {e}"))
        }
        other => {
            return Err(Failure::damage(format!(
                "expected a conflict, got {other:?}"
            )));
        }
    }

    let again = store.append("counter-1", ExpectedVersion::Any, vec![retry])?;
    say.line(format!(
        "re-appending event {} is idempotent: existing position {}, nothing written (existed: {})",
        again[0].event_id, again[0].position, again[0].existed
    ));

    say.line("read back counter-1:".into());
    for e in store.read_aggregate("counter-1", 1, usize::MAX)? {
        say.line(format!(
            "  position {:>2}  version {}  {:<20} {}  {}",
            e.position,
            e.version,
            e.event_type,
            String::from_utf8_lossy(&e.data),
            e.timestamp
        ));
    }
    say.line(format!(
        "counter-1 = {}, counter-2 = {} (folded from their events)",
        counter_value(&store, "counter-1")?,
        counter_value(&store, "counter-2")?
    ));
    store.close()?;

    let store = Store::open(dir, Options::default())?;
    let (problems, _) = store.verify_index(10)?;
    let (aggregates, events) = store.index_counts()?;
    say.line(format!(
        "closed and reopened: {events} events in {aggregates} aggregates; index.sqlite agrees with the log: {}",
        if problems.is_empty() { "yes" } else { "NO" }
    ));
    if !problems.is_empty() {
        return Err(Failure::damage(problems.join("\n")));
    }
    store.close()?;
    let mut files = Vec::new();
    list_files(dir, dir, &mut files).map_err(|e| Failure::usage(e.to_string()))?;
    say.line("on disk:".into());
    for (name, len) in files {
        say.line(format!("  {name:<32} {len:>8} bytes"));
    }
    Ok(())
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push((name, e.metadata()?.len()));
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}
