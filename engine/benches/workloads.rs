//! `cargo bench -p strata --features bench`: the same workloads as
//! `strata bench`, printed as JSON lines. `STRATA_BENCH_EVENTS` sets the size
//! (default 1,000,000), `STRATA_BENCH_ONLY` a comma-separated workload list.

fn main() {
    let mut config = strata::bench::BenchConfig::default();
    if let Some(n) = std::env::var("STRATA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.events = n;
    }
    if let Ok(only) = std::env::var("STRATA_BENCH_ONLY") {
        config.only = only.split(',').map(str::to_owned).collect();
    }
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` asks harness-less benches what they hold.
        return;
    }
    let result = strata::bench::run(&config, |r| {
        println!("{}", serde_json::to_string(r).expect("results serialise"));
    });
    if let Err(e) = result {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}
