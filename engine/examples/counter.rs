//! The seed's distributed counter, locally: `cargo run --example counter`.
//!
//! Appends increments and decrements to two counters, reads the
//! `current_count` view after each write (reads see their own writes), then
//! reopens to show the view survives and nothing is applied twice.

use std::sync::Arc;

use strata::projection::counter::{self, CounterProjection};
use strata::projection::{ViewOptions, Views};
use strata::{ExpectedVersion, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    println!("store in {}", dir.path().display());
    {
        let store = Store::open(dir.path(), Options::default())?;
        let views = Views::open(
            &store,
            vec![Arc::new(CounterProjection)],
            ViewOptions::default(),
        )?;
        for (counter, event) in [
            ("counter", counter::increment(1)),
            ("counter", counter::increment(1)),
            ("counter", counter::decrement(1)),
            ("likes", counter::increment(5)),
            ("counter", counter::increment(1)),
        ] {
            let c = store.append(counter, ExpectedVersion::Any, vec![event])?;
            let value = views
                .read(|conn| counter::value(conn, counter))?
                .unwrap_or(0);
            println!(
                "{counter:<8} position {:>2} version {}  ->  value {value}",
                c[0].position, c[0].version
            );
        }
        let rows = views.read(|conn| {
            let mut stmt = conn.prepare("SELECT id, value FROM current_count ORDER BY id")?;
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })?;
        println!("current_count rows (id, value): {rows:?}  -- id 1 is the first counter used");
        views.close();
        store.close()?;
    }
    // Reopen: the checkpoint (a log position) carries over; nothing is
    // applied twice.
    let store = Store::open(dir.path(), Options::default())?;
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection)],
        ViewOptions::default(),
    )?;
    let value = views.read(|conn| counter::value(conn, "counter"))?;
    println!(
        "after reopen: counter = {value:?}, checkpoint {}",
        views.status()[0].position
    );
    Ok(())
}
