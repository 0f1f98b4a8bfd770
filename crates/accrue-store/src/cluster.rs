//! A cluster's directory on PostgreSQL (`accrue serve --partitions N`):
//! the partition count, fixed at creation, and which node owns each
//! partition and where it answers. The lease itself is not here: it is
//! the session advisory lock the partition's store holds on the very
//! session it appends with ([`crate::postgres::PgStore::try_open_in_schema`]),
//! so the engine, not accrue, decides who may write. A row here only says
//! where to forward; only the lock holder writes its partition's row, and
//! a stale row (its owner died) is answered "retry" until the new owner
//! writes its own.

use parking_lot::Mutex;

use crate::postgres::{connect, off_runtime};
use crate::StoreError;

/// The schema of partition `p` under `base` (`accrue_p00`, …).
pub fn partition_schema(base: &str, p: u32) -> String {
    format!("{base}_p{p:02}")
}

pub struct Directory {
    client: Mutex<postgres::Client>,
}

impl Directory {
    /// Opens (creating) `{base}_cluster`; refuses a partition count other
    /// than the one the cluster was created with.
    pub fn open(url: &str, base: &str, partitions: u32) -> Result<Directory, StoreError> {
        off_runtime(|| {
            let schema = format!("{base}_cluster");
            let mut c = connect(url, None)?;
            // Several nodes start at once: creating is serialised.
            let mut tx = c.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&0x6163_6372_7565_0003_i64],
            )?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.settings (k TEXT PRIMARY KEY, v TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS {schema}.owners (
                   partition INTEGER PRIMARY KEY, node TEXT NOT NULL, url TEXT NOT NULL,
                   since TIMESTAMPTZ NOT NULL DEFAULT now())"
            ))?;
            tx.execute(
                &format!(
                    "INSERT INTO {schema}.settings (k, v) VALUES ('partitions', $1) ON CONFLICT DO NOTHING"
                ),
                &[&partitions.to_string()],
            )?;
            let have: String = tx
                .query_one(
                    &format!("SELECT v FROM {schema}.settings WHERE k = 'partitions'"),
                    &[],
                )?
                .get(0);
            tx.commit()?;
            if have != partitions.to_string() {
                return Err(StoreError::Backend(format!(
                    "this cluster was created with {have} partitions, not {partitions} \
                     (an account's partition is fixed by the count)"
                )));
            }
            c.batch_execute(&format!("SET search_path TO {schema}"))?;
            Ok(Directory {
                client: Mutex::new(c),
            })
        })
    }

    /// Records that `node` (answering at `url`) now owns `partition`.
    /// Call only while holding the partition's lease.
    pub fn claim(&self, partition: u32, node: &str, url: &str) -> Result<(), StoreError> {
        off_runtime(|| {
            self.client.lock().execute(
                "INSERT INTO owners (partition, node, url, since) VALUES ($1, $2, $3, now())
                 ON CONFLICT (partition) DO UPDATE SET node = $2, url = $3, since = now()",
                &[&(partition as i32), &node, &url],
            )?;
            Ok(())
        })
    }

    /// Whether some session holds the writer lock of `schema` (a look at
    /// `pg_locks`, taking nothing): a node tries to take only partitions
    /// whose lease is free, instead of opening a store to find out.
    pub fn leased(&self, schema: &str) -> Result<bool, StoreError> {
        off_runtime(|| {
            let row = self.client.lock().query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND objsubid = 2 AND classid = $1 AND objid = hashtext($2)::oid)",
                &[&(crate::postgres::WRITER_LOCK_CLASS as u32), &schema],
            )?;
            Ok(row.get(0))
        })
    }

    /// [`Directory::leased`] for several schemas in one query, in order.
    pub fn leased_many(&self, schemas: &[String]) -> Result<Vec<bool>, StoreError> {
        off_runtime(|| {
            let rows = self.client.lock().query(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND objsubid = 2 AND classid = $1 AND objid = hashtext(s.name)::oid)
                 FROM unnest($2::text[]) WITH ORDINALITY AS s(name, n) ORDER BY s.n",
                &[&(crate::postgres::WRITER_LOCK_CLASS as u32), &schemas],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// (partition, node, url) of every partition that has had an owner.
    pub fn owners(&self) -> Result<Vec<(u32, String, String)>, StoreError> {
        off_runtime(|| {
            let rows = self.client.lock().query(
                "SELECT partition, node, url FROM owners ORDER BY partition",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get(1), r.get(2)))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::{drop_schema, schema_for, test_url, PgStore};

    #[test]
    fn a_partition_is_leased_exactly_while_a_store_holds_its_writer_lock() {
        let dir = tempfile::tempdir().unwrap();
        let base = schema_for(dir.path());
        let url = test_url();
        let directory = Directory::open(&url, &base, 2).unwrap();
        let schemas = vec![partition_schema(&base, 0), partition_schema(&base, 1)];
        assert_eq!(directory.leased_many(&schemas).unwrap(), vec![false, false]);
        let store = PgStore::open_in_schema(&url, &schemas[1]).unwrap();
        assert_eq!(directory.leased_many(&schemas).unwrap(), vec![false, true]);
        assert!(directory.leased(&schemas[1]).unwrap());
        drop(store);
        // The lock goes with the store's session.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while directory.leased_many(&schemas).unwrap() != vec![false, false] {
            assert!(
                std::time::Instant::now() < deadline,
                "the lease outlived its store"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(directory);
        for s in schemas.iter().chain([&format!("{base}_cluster")]) {
            drop_schema(&url, s);
        }
    }
}
