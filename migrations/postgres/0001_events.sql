-- accrue PostgreSQL schema, version 1. Never edited once shipped: add a new file.

CREATE TABLE IF NOT EXISTS events (
    pos          BIGINT  PRIMARY KEY,
    stream       TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    type         TEXT    NOT NULL,
    schema       INTEGER NOT NULL,
    occurred_us  BIGINT  NOT NULL,
    recorded_us  BIGINT  NOT NULL,
    payload      BYTEA   NOT NULL,
    hash         BYTEA   NOT NULL,
    UNIQUE (stream, version)
);

-- Events are facts: never updated, never deleted.
CREATE OR REPLACE FUNCTION accrue_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION accrue_events_append_only();

CREATE TABLE IF NOT EXISTS checkpoints (
    name  TEXT PRIMARY KEY,
    pos   BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
