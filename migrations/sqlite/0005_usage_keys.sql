-- accrue SQLite schema, version 5: the usage idempotency index's older keys
-- (SPEC §12), in a file of their own (`<file>.keys`) so that spilling them
-- never holds up an append. Derived data, not events: a 32-bit fingerprint
-- of the key's hash and the position of its event; every candidate found
-- here is confirmed against the stored event. A pair stored twice is one.
CREATE TABLE IF NOT EXISTS usage_keys (
    fp   INTEGER NOT NULL,
    pos  INTEGER NOT NULL,
    PRIMARY KEY (fp, pos)
) WITHOUT ROWID;
