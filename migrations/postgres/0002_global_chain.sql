-- accrue PostgreSQL schema, version 2. Never edited once shipped: add a new file.

-- The global chain: each event's hash chained to the previous event of the
-- whole log (see hash.rs `chain_hash`). A store written before it gets the
-- chain computed at open.
ALTER TABLE events ADD COLUMN IF NOT EXISTS chain BYTEA;
