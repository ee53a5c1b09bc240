//! The alert chain: every time an alert is stored or updated, an entry names it and the hash of
//! exactly what was stored, linked to the entry before and signed with the collector's key.
//!
//! `verify` walks the chain and compares each alert's latest entry with the stored alert, so an
//! edited, deleted or inserted alert is named. Alert ids stay what they were: hooks rely on them.

use bannin::chain::{GENESIS, Hash};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::seal::{self, Seal};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_chain (
    n INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
";

/// Chains the alert `alert_id` as it is now stored; call in the transaction that stored it.
pub fn append(conn: &Connection, seal: &Seal, alert_id: &str) -> Result<(), StoreError> {
    let body: String =
        conn.query_row("SELECT body FROM alerts WHERE id = ?1", [alert_id], |r| {
            r.get(0)
        })?;
    let (n, prev) = head(conn)?;
    let n = n + 1;
    let body_hash: Hash = Sha256::digest(body.as_bytes()).into();
    let hash = seal::alert_link(&prev, n, alert_id, &body_hash);
    conn.execute(
        "INSERT INTO alert_chain (n, alert_id, body_hash, hash, signature)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            i64::try_from(n).unwrap_or(i64::MAX),
            alert_id,
            body_hash.as_slice(),
            hash.as_slice(),
            seal.sign(&hash)
        ],
    )?;
    Ok(())
}

/// The chain's last entry number and hash (0 and the genesis hash when empty).
pub fn head(conn: &Connection) -> Result<(u64, Hash), StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT n, hash FROM alert_chain ORDER BY n DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((n, hash)) => (
            u64::try_from(n).unwrap_or(0),
            bannin::chain::to_hash(&hash, "alert chain hash").unwrap_or(GENESIS),
        ),
        None => (0, GENESIS),
    })
}

/// One entry of the alert chain as stored.
pub struct Entry {
    pub n: u64,
    pub alert_id: String,
    pub body_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Checks the chain's links and signatures and that every stored alert is its latest entry;
/// returns one line per problem.
pub fn verify(conn: &Connection, key: Option<&seal::SealKey>) -> Result<Vec<String>, StoreError> {
    let entries: Vec<Entry> = {
        let mut stmt = conn.prepare(
            "SELECT n, alert_id, body_hash, hash, signature FROM alert_chain ORDER BY n",
        )?;
        stmt.query_map([], |row| {
            Ok(Entry {
                n: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                alert_id: row.get(1)?,
                body_hash: row.get(2)?,
                hash: row.get(3)?,
                signature: row.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?
    };
    let mut stmt = conn.prepare("SELECT id, body FROM alerts ORDER BY ts")?;
    let stored: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(verify_rows(entries, &stored, key))
}

/// [`verify`] over rows read from either store: the chain's entries in order, and every stored
/// alert's id and body.
pub fn verify_rows(
    entries: Vec<Entry>,
    stored: &[(String, String)],
    key: Option<&seal::SealKey>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut latest: std::collections::BTreeMap<String, Hash> = std::collections::BTreeMap::new();
    let mut prev = GENESIS;
    let mut expected = 1u64;
    for Entry {
        n,
        alert_id,
        body_hash,
        hash,
        signature,
    } in entries
    {
        if n != expected {
            problems.push(format!(
                "alert chain entries {expected}..={}: removed",
                n.saturating_sub(1)
            ));
        }
        let body_hash: Hash = bannin::chain::to_hash(&body_hash, "body hash").unwrap_or(GENESIS);
        let computed = seal::alert_link(&prev, n, &alert_id, &body_hash);
        if computed.as_slice() != hash.as_slice() {
            problems.push(format!(
                "alert chain entry {n} (alert {alert_id}): altered (its hash does not follow from the entry before it)"
            ));
        }
        if !key.is_some_and(|key| key.check(&hash, &signature)) {
            problems.push(format!(
                "alert chain entry {n} (alert {alert_id}): not signed by the collector"
            ));
        }
        latest.insert(alert_id, body_hash);
        prev = computed;
        expected = n + 1;
    }
    for (id, body) in stored {
        let hash: Hash = Sha256::digest(body.as_bytes()).into();
        match latest.remove(id) {
            Some(chained) if chained == hash => {}
            Some(_) => problems.push(format!(
                "alert {id}: edited (differs from what the collector stored and chained)"
            )),
            None => problems.push(format!(
                "alert {id}: not in the alert chain (inserted into the store)"
            )),
        }
    }
    for id in latest.keys() {
        problems.push(format!(
            "alert {id}: removed (the alert chain holds it, the store lacks it)"
        ));
    }
    problems
}
