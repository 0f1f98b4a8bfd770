-- accrue SQLite schema, version 4: snapshots of derived state (SPEC §12).
-- Not events: a snapshot is a cache of what the log folds to at `pos`,
-- checked by hash on load and replaced by newer ones (the two newest kept).
CREATE TABLE IF NOT EXISTS snapshots (
    pos         INTEGER PRIMARY KEY,
    created_us  INTEGER NOT NULL,
    bytes       BLOB    NOT NULL
);
