// The counter page's projections, imported by the Strata worker of every
// tab (any tab may come to own the database). Counters are aggregates;
// their name is the aggregate id.

/** @type {import('./client/src/engine.js').Projection[]} */
export const projections = [
  {
    name: 'counters',
    // Bump when the schema or apply changes: the view is rebuilt by replay.
    version: 1,
    schema: 'CREATE TABLE counters (id TEXT PRIMARY KEY, value INTEGER NOT NULL, events INTEGER NOT NULL)',
    apply(db, e) {
      const sign = { CounterIncremented: 1, CounterDecremented: -1, CounterCreated: 0 }[e.type];
      if (sign === undefined) return;
      db.exec(
        `INSERT INTO counters (id, value, events) VALUES (?, ?, 1)
         ON CONFLICT (id) DO UPDATE SET value = value + excluded.value, events = events + 1`,
        [e.aggregateId, sign * Number(e.data?.value ?? 0)],
      );
    },
  },
];
