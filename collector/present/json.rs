//! JSON lines: one object per line, for tools (`--format json`).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::query::local::AlertRow;
use crate::report::scope::Scope;

/// One JSON object per line.
pub fn lines<T: Serialize>(
    out: &mut impl Write,
    items: impl IntoIterator<Item = T>,
) -> io::Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, &item)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// An alert with its deliveries as the alert object of docs/interface.md plus `deliveries`:
/// what `alerts --format json` prints, what the Query service sends, and what OCSF output maps.
/// Keys come out in name order, as a JSON map holds them.
pub fn alert_object(row: &AlertRow) -> io::Result<Map<String, Value>> {
    match serde_json::to_value(row)? {
        Value::Object(object) => Ok(object),
        other => Err(io::Error::other(format!(
            "alert {} encodes as {other} rather than an object",
            row.alert.id
        ))),
    }
}

/// The scope report as `scope --format json` prints it, keys in name order at every level.
pub fn scope_object(report: &Scope) -> io::Result<Value> {
    Ok(serde_json::to_value(report)?)
}
