//! The store behind the console, either kind: the pages read through [`ReadConn`] (the query
//! commands' reads, plus [`ConsoleRows`]), and sign-in, sessions and sign-out go to the store's own
//! functions here. Nothing above this file knows which store it is.
//!
//! Every call blocks: run it on a blocking thread (`tokio::task::spawn_blocking`).

use std::path::PathBuf;
use std::time::Duration;

use crate::query::local::ReadConn;
use crate::store::console::Refusal;
use crate::store::pg::read::Reader;
use crate::store::{self, StoreAt, StoreError};

pub enum Backend {
    /// The data directory's SQLite store: a connection per request (WAL readers run beside
    /// `serve`'s writer).
    Sqlite(PathBuf),
    /// A PostgreSQL store shared with other collectors: sessions from the console's own pool.
    Postgres(deadpool_postgres::Pool),
}

impl Backend {
    pub fn new(at: &StoreAt) -> Result<Backend, StoreError> {
        Ok(match at {
            StoreAt::Sqlite(dir) => Backend::Sqlite(dir.clone()),
            StoreAt::Postgres(target) => Backend::Postgres(target.pool()?),
        })
    }

    /// A read session.
    pub fn reader(&self) -> Result<ReadConn, StoreError> {
        Ok(match self {
            Backend::Sqlite(dir) => ReadConn::Sqlite(store::open_reader(dir)?),
            Backend::Postgres(pool) => ReadConn::Postgres(Box::new(Reader::pooled(pool)?)),
        })
    }

    /// The operator whose session this is, if the store says it is open now.
    pub fn session_operator(&self, session: &str) -> Result<Option<String>, StoreError> {
        match self {
            Backend::Sqlite(dir) => {
                store::console::session_operator(&store::open_reader(dir)?, session)
            }
            Backend::Postgres(pool) => {
                let reader = Reader::pooled(pool)?;
                reader.block_on(store::pg::console::session_operator(
                    reader.client(),
                    session,
                ))
            }
        }
    }

    /// Spends the link `token` and opens `session`; when that worked, ends the browser's
    /// `previous` session.
    pub fn sign_in(
        &self,
        token: &str,
        session: &str,
        lifetime: Duration,
        previous: Option<&str>,
    ) -> Result<Result<String, Refusal>, StoreError> {
        match self {
            Backend::Sqlite(dir) => {
                let mut conn = store::open_writer(dir)?;
                let signed_in = store::console::sign_in(&mut conn, token, session, lifetime)?;
                if let (Ok(_), Some(previous)) = (&signed_in, previous) {
                    store::console::end_session(&conn, previous)?;
                }
                Ok(signed_in)
            }
            Backend::Postgres(pool) => {
                let mut reader = Reader::pooled(pool)?;
                reader.block_on_mut(|client| {
                    store::pg::console::sign_in(client, token, session, lifetime, previous)
                })
            }
        }
    }

    /// Ends `session` (sign-out), for every collector sharing the store.
    pub fn end_session(&self, session: &str) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite(dir) => store::console::end_session(&store::open_writer(dir)?, session),
            Backend::Postgres(pool) => {
                let reader = Reader::pooled(pool)?;
                reader.block_on(store::pg::console::end_session(reader.client(), session))
            }
        }
    }
}
