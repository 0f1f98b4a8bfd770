-- accrue SQLite schema, version 1. Never edited once shipped: add a new file.

-- The log. `pos` is the rowid, so appends are sequential B-tree inserts.
CREATE TABLE IF NOT EXISTS events (
    pos          INTEGER PRIMARY KEY,
    stream       TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    schema       INTEGER NOT NULL,
    occurred_us  INTEGER NOT NULL,
    recorded_us  INTEGER NOT NULL,
    payload      BLOB    NOT NULL,
    hash         BLOB    NOT NULL
);

-- Events are facts: never updated, never deleted.
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

-- (stream, version) → pos. Derived from `events` and written in large
-- batches (see sqlite.rs: "the stream index"), so it never sits on the
-- per-append random-write path. `meta.stream_index_pos` says how far it goes.
CREATE TABLE IF NOT EXISTS stream_index (
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    pos      INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS checkpoints (
    name  TEXT PRIMARY KEY,
    pos   INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
