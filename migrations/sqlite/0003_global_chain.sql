-- accrue SQLite schema, version 3. Never edited once shipped: add a new file.

-- The global chain: each event's hash chained to the previous event of the
-- whole log (see hash.rs `chain_hash`). Applied once, when the column is
-- missing; a store written before it gets the chain computed at open.
ALTER TABLE events ADD COLUMN chain BLOB;
