//! SQL functions on view connections, as the seed's client registers them.

use std::sync::Arc;

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::hlc::{Hlc, Timestamp};

/// Registers `hlc_now()` and `hlc_compare(a, b)` on `conn`.
///
/// * `hlc_now()` returns a fresh timestamp of the store's clock in the
///   fixed-width text form. `hlc_now(x)` is accepted too, for the seed's
///   one-argument signature; the argument is ignored, since timestamps are
///   always stamped with the store's own node id.
/// * `hlc_compare(a, b)` returns -1, 0 or 1 comparing two HLC texts as
///   clocks (physical, counter, node), in either the fixed-width or the
///   seed's unpadded form; malformed text is an SQL error.
pub fn register_hlc_functions(conn: &Connection, hlc: Arc<Hlc>) -> rusqlite::Result<()> {
    for n_arg in [0, 1] {
        let hlc = hlc.clone();
        conn.create_scalar_function("hlc_now", n_arg, FunctionFlags::SQLITE_UTF8, move |_ctx| {
            hlc.now()
                .map(|t| t.to_text())
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        })?;
    }
    conn.create_scalar_function(
        "hlc_compare",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let a: String = ctx.get(0)?;
            let b: String = ctx.get(1)?;
            let ordering = Timestamp::compare_text(&a, &b)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
            Ok(ordering as i64)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{ManualClock, NodeId};

    #[test]
    fn hlc_functions_work_in_sql() {
        let conn = Connection::open_in_memory().unwrap();
        let hlc = Arc::new(Hlc::new(
            NodeId::new("n").unwrap(),
            Arc::new(ManualClock::new(42)),
            1000,
        ));
        register_hlc_functions(&conn, hlc).unwrap();
        let now: String = conn
            .query_row("SELECT hlc_now()", [], |r| r.get(0))
            .unwrap();
        assert_eq!(now, "000000000000042:0000000000:n");
        let next: String = conn
            .query_row("SELECT hlc_now('seed-node')", [], |r| r.get(0))
            .unwrap();
        assert!(next > now);
        let cmp = |a: &str, b: &str| -> rusqlite::Result<i64> {
            conn.query_row("SELECT hlc_compare(?1, ?2)", [a, b], |r| r.get(0))
        };
        assert_eq!(cmp("9:0:A", "10:0:A").unwrap(), -1, "numeric, not textual");
        assert_eq!(cmp("10:0:B", "10:0:A").unwrap(), 1, "node breaks ties");
        assert_eq!(cmp("000000000000010:0000000000:A", "10:0:A").unwrap(), 0);
        assert!(cmp("garbage", "10:0:A").is_err());
    }
}
