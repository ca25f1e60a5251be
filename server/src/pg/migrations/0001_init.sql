-- Strata's canonical logs in PostgreSQL, schema version 1.
-- Applied by server/src/pg/schema.rs in one transaction, under an advisory
-- lock, and recorded in strata_schema. Never edit a released migration:
-- add the next one. docs/POSTGRES.md explains every table and column.

-- One row per hosted store. `head` is the last committed position; a
-- commit takes this row FOR UPDATE (the store's position lock), so commits
-- of one store are serialised across every node and positions stay gapless.
CREATE TABLE strata_stores (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    store_id uuid NOT NULL UNIQUE,
    head bigint NOT NULL DEFAULT 0 CHECK (head >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
)
-- Every commit updates its store's row: free room on each page lets
-- PostgreSQL write the new row version beside the old one (a HOT update,
-- no index change) instead of growing the table.
WITH (fillfactor = 50);

-- Every event of every store. Text columns use the "C" collation: compared
-- byte by byte, so `hlc` (the fixed-width text form) sorts like the clock
-- and names compare as the engine compares them, whatever the database's
-- locale.
CREATE TABLE strata_events (
    store integer NOT NULL REFERENCES strata_stores (id),
    position bigint NOT NULL CHECK (position >= 1),
    -- Last position of the push that appended this event: reads hand out
    -- whole pushes, as the embedded log hands out whole batches.
    batch_end bigint NOT NULL,
    event_id uuid NOT NULL,
    aggregate_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    event_type text COLLATE "C" NOT NULL,
    -- The client's bytes, verbatim.
    event_data bytea NOT NULL,
    metadata bytea,
    -- `PPPPPPPPPPPPPPP:CCCCCCCCCC:node` (engine/src/hlc.rs).
    hlc text COLLATE "C" NOT NULL,
    PRIMARY KEY (store, position),
    UNIQUE (store, aggregate_id, version),
    UNIQUE (store, event_id),
    CHECK (batch_end >= position)
);
