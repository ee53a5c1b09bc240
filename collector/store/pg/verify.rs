//! `verify --store postgres://…`: the rows `store/verify.rs` checks, read from a PostgreSQL store in
//! one repeatable-read, read-only transaction (one snapshot, as on SQLite).

use tokio_postgres::types::ToSql;

use super::read::Reader;
use crate::seal::SealKey;
use crate::store::StoreError;
use crate::store::alert_chain::{self, Entry};
use crate::store::prune::Mark;
use crate::store::verify::{AgentRow, Batch, EventRow, FindingRow, Source};

/// A PostgreSQL store read for `verify`.
pub struct PgSource<'a> {
    reader: &'a Reader,
}

impl<'a> PgSource<'a> {
    /// Starts the snapshot every read of this source sees.
    pub fn begin(reader: &'a Reader) -> Result<PgSource<'a>, StoreError> {
        reader.block_on(
            reader
                .client()
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )?;
        Ok(PgSource { reader })
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        Ok(self
            .reader
            .block_on(self.reader.client().query(sql, params))?)
    }
}

impl Drop for PgSource<'_> {
    fn drop(&mut self) {
        let _ = self
            .reader
            .block_on(self.reader.client().batch_execute("COMMIT"));
    }
}

fn seq(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Source for PgSource<'_> {
    /// PostgreSQL has no counterpart of SQLite's integrity check that needs no extension.
    fn integrity(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        Ok(self
            .query(
                "SELECT no, id, signing_key, last_seq, head_hash, head_signature, certificate
                 FROM agents ORDER BY no",
                &[],
            )?
            .iter()
            .map(|r| AgentRow {
                no: r.get(0),
                id: r.get(1),
                key: r.get(2),
                last_seq: seq(r.get(3)),
                head: r.get(4),
                head_signature: r.get(5),
                certificate: r.get(6),
            })
            .collect())
    }

    fn missing_token_agents(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(
                "SELECT used_by FROM tokens WHERE used_by IS NOT NULL
                   AND used_by NOT IN (SELECT id FROM agents) ORDER BY used_ts",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn findings(&self, agent_no: i64) -> Result<Vec<FindingRow>, StoreError> {
        Ok(self
            .query(
                "SELECT id, ts, kind, first_seq, last_seq, detail, signature FROM findings
                 WHERE agent_no = $1 ORDER BY id",
                &[&agent_no],
            )?
            .iter()
            .map(|r| FindingRow {
                id: r.get(0),
                ts: r.get(1),
                kind: r.get(2),
                first: seq(r.get(3)),
                last: seq(r.get(4)),
                detail: r.get(5),
                signature: r.get(6),
            })
            .collect())
    }

    fn batches(&self, agent_no: i64) -> Result<Vec<Batch>, StoreError> {
        Ok(self
            .query(
                "SELECT first_seq, last_seq, prev_hash, head_hash, signature FROM batches
                 WHERE agent_no = $1 ORDER BY first_seq, last_seq",
                &[&agent_no],
            )?
            .iter()
            .map(|r| Batch {
                first: seq(r.get(0)),
                last: seq(r.get(1)),
                prev: r.get(2),
                head: r.get(3),
                signature: r.get(4),
            })
            .collect())
    }

    fn events(&self, agent_no: i64, each: &mut dyn FnMut(EventRow)) -> Result<(), StoreError> {
        // In pages by sequence number, so memory stays that of one page whatever the store holds.
        const PAGE: i64 = 10_000;
        let mut after = i64::MIN;
        loop {
            let rows = self.query(
                "SELECT seq, ts, kind, path, payload, hash FROM events
                 WHERE agent_no = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&agent_no, &after, &PAGE],
            )?;
            let full = rows.len() as i64 == PAGE;
            for r in &rows {
                after = r.get(0);
                each(EventRow {
                    seq: seq(r.get(0)),
                    ts: r.get(1),
                    kind: r.get(2),
                    path: r.get(3),
                    payload: r.get(4),
                    hash: r.get(5),
                });
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn pruned(&self, agent_no: i64) -> Result<Option<Mark>, StoreError> {
        Ok(self
            .query(
                "SELECT through_seq, pruned_ts, signature FROM pruned WHERE agent_no = $1",
                &[&agent_no],
            )?
            .first()
            .map(|r| Mark {
                through_seq: seq(r.get(0)),
                ts: r.get(1),
                signature: r.get(2),
            }))
    }

    fn alert_chain(&self, key: Option<&SealKey>) -> Result<Vec<String>, StoreError> {
        let entries = self
            .query(
                "SELECT n, alert_id, body_hash, hash, signature FROM alert_chain ORDER BY n",
                &[],
            )?
            .iter()
            .map(|r| Entry {
                n: seq(r.get(0)),
                alert_id: r.get(1),
                body_hash: r.get(2),
                hash: r.get(3),
                signature: r.get(4),
            })
            .collect();
        let stored: Vec<(String, String)> = self
            .query("SELECT id, body FROM alerts ORDER BY ts", &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(alert_chain::verify_rows(entries, &stored, key))
    }

    fn column(&self, text: &str) -> String {
        super::ingest::storable(text).into_owned()
    }

    fn agent_by_id(&self, agent_id: &str) -> Result<Option<(i64, u64)>, StoreError> {
        Ok(self
            .query(
                "SELECT no, last_seq FROM agents WHERE id = $1",
                &[&agent_id],
            )?
            .first()
            .map(|r| (r.get(0), seq(r.get(1)))))
    }

    fn event_hash(&self, agent_no: i64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        Ok(self
            .query(
                "SELECT hash FROM events WHERE agent_no = $1 AND seq = $2",
                &[&agent_no, &seq],
            )?
            .first()
            .map(|r| r.get(0)))
    }

    fn alert_chain_hash(&self, n: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(self
            .query("SELECT hash FROM alert_chain WHERE n = $1", &[&n])?
            .first()
            .map(|r| r.get(0)))
    }
}
