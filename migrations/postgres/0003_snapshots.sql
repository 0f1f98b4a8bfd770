-- accrue PostgreSQL schema, version 3: snapshots of derived state (SPEC §12).
-- Not events: a snapshot is a cache of what the log folds to at `pos`,
-- checked by hash on load and replaced by newer ones (the two newest kept).
CREATE TABLE IF NOT EXISTS snapshots (
    pos         BIGINT PRIMARY KEY,
    created_us  BIGINT NOT NULL,
    bytes       BYTEA  NOT NULL
);
