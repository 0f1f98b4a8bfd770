-- accrue PostgreSQL schema, version 4: the usage idempotency index's older
-- keys (SPEC §12), so that the writer's memory does not grow with history.
-- Derived data, not events: a 32-bit fingerprint of the key's hash and the
-- position of its event; every candidate found here is confirmed against
-- the stored event. A pair stored twice is one.
CREATE TABLE IF NOT EXISTS usage_keys (
    fp   BIGINT NOT NULL,
    pos  BIGINT NOT NULL,
    PRIMARY KEY (fp, pos)
);
