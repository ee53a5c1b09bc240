//! Binary COPY into the PostgreSQL store's tables, as the collector's ingest sends it
//! (collector/store/pg/ingest.rs): the benchmarks' plain baseline and their store generator.

use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

const INT8: Type = Type::INT8;
const TEXT: Type = Type::TEXT;
const BYTEA: Type = Type::BYTEA;

async fn copy(tx: &Transaction<'_>, statement: &str, types: &[Type]) -> BinaryCopyInWriter {
    BinaryCopyInWriter::new(tx.copy_in(statement).await.unwrap(), types)
}

/// Starts a binary COPY into `events` of (agent_no, seq, ts, kind, path, payload, hash,
/// received_ts) inside `tx`; write rows of those types, then `finish`.
pub async fn events(tx: &Transaction<'_>) -> BinaryCopyInWriter {
    copy(
        tx,
        "COPY events (agent_no, seq, ts, kind, path, payload, hash, received_ts)
         FROM STDIN (FORMAT binary)",
        &[INT8, INT8, INT8, TEXT, TEXT, BYTEA, BYTEA, INT8],
    )
    .await
}

/// Starts a binary COPY into `batches` of (agent_no, last_seq, first_seq, prev_hash, head_hash,
/// signature, received_ts) inside `tx`.
pub async fn batches(tx: &Transaction<'_>) -> BinaryCopyInWriter {
    copy(
        tx,
        "COPY batches (agent_no, last_seq, first_seq, prev_hash, head_hash, signature, received_ts)
         FROM STDIN (FORMAT binary)",
        &[INT8, INT8, INT8, BYTEA, BYTEA, BYTEA, INT8],
    )
    .await
}
