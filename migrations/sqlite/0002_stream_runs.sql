-- accrue SQLite schema, version 2. Never edited once shipped: add a new file.

-- The stream index as runs: one row per stream per index flush, holding the
-- positions of versions first_version..=last_version (LEB128 varints, the
-- first absolute, then deltas). Writing one row per stream instead of one
-- per event keeps the flush off the ingest path's profile. Derived from
-- `events` like the old `stream_index` (which 0001 created and which is no
-- longer written: an old store's rows there are dropped and rebuilt as runs
-- at open). `meta.stream_index_pos` says how far the runs go.
CREATE TABLE IF NOT EXISTS stream_runs (
    stream         TEXT    NOT NULL,
    first_version  INTEGER NOT NULL,
    last_version   INTEGER NOT NULL,
    positions      BLOB    NOT NULL,
    PRIMARY KEY (stream, first_version)
) WITHOUT ROWID;
