//! Events as the parsers build them (drafts), before totals and export decisions.

use bannin::event::{DbAction, DbEvent};
use bannin::time::Timestamp;
use serde::{Deserialize, Serialize};

use super::statement::{self, Dialect, Kind};

/// Event actions as saved with held drafts (the event type does not serialise its action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Connect,
    Disconnect,
    Query,
}

impl From<Action> for DbAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Connect => DbAction::Connect,
            Action::Disconnect => DbAction::Disconnect,
            Action::Query => DbAction::Query,
        }
    }
}

/// An event as a parser builds it, before totals and export decisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Draft {
    pub ts: Timestamp,
    pub action: Action,
    pub event: DbEvent,
    pub kind: Kind,
    pub unfiltered: bool,
    pub dump_shape: bool,
}

impl Draft {
    pub(super) fn new(ts: Timestamp, action: Action, event: DbEvent) -> Self {
        Draft {
            ts,
            action,
            event,
            kind: Kind::Other,
            unfiltered: false,
            dump_shape: false,
        }
    }
}

/// What the parsers need to know about the database they parse for.
#[derive(Debug, Clone)]
pub struct ParseCtx {
    pub server: String,
    pub max_statement_len: usize,
}

/// A query draft: the statement classified, then masked and cut for the event.
pub(super) fn draft_query(
    ts: Timestamp,
    mut event: DbEvent,
    raw: &str,
    dialect: Dialect,
    ctx: &ParseCtx,
) -> Draft {
    let analysis = statement::analyze(raw, dialect, &event.database);
    let masked = statement::mask(raw, dialect);
    event.statement = statement::truncate(&masked, ctx.max_statement_len).into_owned();
    event.statement_kind = analysis.kind.as_str().to_string();
    event.tables = analysis.tables;
    if let Some(export) = analysis.export {
        event.export_method = export.as_str().to_string();
    }
    Draft {
        ts,
        action: Action::Query,
        event,
        kind: analysis.kind,
        unfiltered: analysis.unfiltered,
        dump_shape: analysis.dump_shape,
    }
}

/// A server's error text for an event: masked like the statement it belongs to (secrets the
/// statement held are masked wherever the error repeats them) and cut to the same length.
pub(super) fn error_text(
    message: &str,
    statement: &str,
    dialect: Dialect,
    ctx: &ParseCtx,
) -> String {
    let masked = statement::mask_error(message, statement, dialect);
    statement::truncate(&masked, ctx.max_statement_len).into_owned()
}
