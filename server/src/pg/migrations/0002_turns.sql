-- Strata's canonical logs in PostgreSQL, schema version 2: the fairness
-- turn of each store, kept where every node's commits meet (server/src/pg/
-- turn.rs). Read and written by each commit under the store's row lock.
-- NULL: nobody holds the turn and nobody waits. Otherwise JSON:
--   {"holder": {"client": "<node session>/<connection>",
--               "aggregates": ["…"], "until_ms": <database clock, ms>},
--    "queue":  [{"client": "…", "aggregates": ["…"], "seen_ms": <ms>}, …]}
-- Losing it loses nothing but order: a node that sees NULL lets pushes
-- race as a store without contention does.
ALTER TABLE strata_stores ADD COLUMN turn jsonb;
