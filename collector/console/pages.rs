//! The pages. Each handler reads on a blocking thread (`read`) through the same functions as the
//! query commands (`query::local` over either store), or `store::console` for what only the
//! console asks, and renders the result with maud. No page knows which store it reads.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bannin::event::Record;
use bannin::time::{Timestamp, parse_duration};
use maud::{Markup, html};
use serde::Deserialize;

use super::auth::Operator;
use super::export;
use super::i18n::Lang;
use super::view::{self, Ctx, text, ts};
use super::{Console, Shared};
use crate::alert::{Alert, Severity};
use crate::hooks::DeliveryStatus;
use crate::query::local::{self, ReadConn, ReadError, Reads};
use crate::report::scope::{self, Scope};
use crate::report::{ANCESTRY_LOOKBACK, ProcessTable, process_of, timeline};
use crate::store::alerts::AlertFilter;
use crate::store::console::{self as store_console, Cursor, Evidence, Health, Proof, Search};
use crate::store::investigate::Range;
use crate::store::query::AgentRow;
use crate::{present, store};

/// Why a page cannot be shown.
#[derive(Debug)]
pub enum PageError {
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl From<ReadError> for PageError {
    fn from(error: ReadError) -> Self {
        if error.is_unknown() {
            PageError::NotFound(error.to_string())
        } else {
            PageError::Internal(error.to_string())
        }
    }
}

impl From<store::StoreError> for PageError {
    fn from(error: store::StoreError) -> Self {
        match error {
            store::StoreError::BadPattern { .. } => PageError::BadRequest(error.to_string()),
            error => PageError::Internal(error.to_string()),
        }
    }
}

impl From<crate::hooks::HooksError> for PageError {
    fn from(error: crate::hooks::HooksError) -> Self {
        PageError::Internal(error.to_string())
    }
}

impl PageError {
    fn respond(self, lang: Lang) -> Response {
        match self {
            PageError::BadRequest(detail) => {
                view::status_page(lang, StatusCode::BAD_REQUEST, "Bad request", &detail)
            }
            PageError::NotFound(detail) => {
                view::status_page(lang, StatusCode::NOT_FOUND, "Not found", &detail)
            }
            PageError::Internal(detail) => view::error_page(lang, &detail),
        }
    }
}

/// Runs `read` with a read session of the console's store on a blocking thread: neither store's
/// calls run on the async runtime.
async fn read<T: Send + 'static>(
    console: &Shared,
    read: impl FnOnce(&ReadConn, &Console) -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    let console = console.clone();
    tokio::task::spawn_blocking(move || {
        let conn = console.store.reader()?;
        read(&conn, &console)
    })
    .await
    .map_err(|_| PageError::Internal("the read task failed".into()))?
}

fn ctx(headers: &HeaderMap, operator: &Operator, uri: &Uri) -> Ctx {
    Ctx {
        lang: Lang::of(headers),
        operator: Some(operator.0.clone()),
        here: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string()),
    }
}

/// A form value: trimmed, and absent when empty.
fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn bound(
    value: &Option<String>,
    now: Timestamp,
    name: &str,
) -> Result<Option<Timestamp>, PageError> {
    given(value)
        .map(|v| {
            Timestamp::parse_bound(&v, now)
                .map_err(|error| PageError::BadRequest(format!("{name}: {error}")))
        })
        .transpose()
}

fn duration(
    value: &Option<String>,
    default: &str,
    name: &str,
) -> Result<std::time::Duration, PageError> {
    let text = given(value).unwrap_or_else(|| default.to_string());
    let parsed =
        parse_duration(&text).map_err(|error| PageError::BadRequest(format!("{name}: {error}")))?;
    if parsed > std::time::Duration::from_secs(31 * 86_400) {
        return Err(PageError::BadRequest(format!("{name}: at most 31d")));
    }
    Ok(parsed)
}

fn glob(pattern: &str) -> Result<globset::GlobMatcher, PageError> {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|error| PageError::BadRequest(format!("bad pattern {pattern:?}: {error}")))
}

fn input(
    name: &'static str,
    label: &'static str,
    value: &Option<String>,
    ctx: &Ctx,
    hint: &str,
) -> Markup {
    html! {
        label {
            span { (ctx.tr(label)) }
            input type="text" name=(name) value=[value.as_deref()] placeholder=(hint);
        }
    }
}

pub async fn not_found(headers: HeaderMap) -> Response {
    view::status_page(
        Lang::of(&headers),
        StatusCode::NOT_FOUND,
        "Not found",
        "no such page",
    )
}

// ---- Alerts ----

#[derive(Deserialize, Default)]
pub struct AlertsQuery {
    rule: Option<String>,
    host: Option<String>,
    severity: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

fn severity_of(text: &str) -> Option<Severity> {
    [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ]
    .into_iter()
    .find(|s| s.as_str() == text)
}

/// The account an alert names, where its rule copied one.
fn alert_user(alert: &Alert) -> String {
    ["user", "db_user"]
        .iter()
        .find_map(|key| alert.fields.get(*key).and_then(|v| v.as_str()))
        .unwrap_or("")
        .to_string()
}

/// `delivered 2/2`, `pending 1/2`...: how the alert's deliveries stand.
fn delivery_summary(deliveries: &[DeliveryStatus]) -> String {
    if deliveries.is_empty() {
        return "—".into();
    }
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for d in deliveries {
        *states.entry(d.state.as_str()).or_default() += 1;
    }
    states
        .iter()
        .map(|(state, n)| format!("{state} {n}/{}", deliveries.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn alerts(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<AlertsQuery>,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let result = async {
        let now = Timestamp::now();
        let severity = match given(&q.severity) {
            Some(text) => Some(severity_of(&text).ok_or_else(|| {
                PageError::BadRequest(format!(
                    "severity {text:?} is not low, medium, high or critical"
                ))
            })?),
            None => None,
        };
        let filter = AlertFilter {
            rule: given(&q.rule),
            host: given(&q.host),
            since: bound(&q.since, now, "since")?,
            limit: q.limit.unwrap_or(200).clamp(1, 1000),
        };
        let mut rows = read(&console, move |conn, _| Ok(local::alerts(conn, &filter)?)).await?;
        rows.retain(|row| severity.is_none_or(|s| row.alert.severity == s));
        rows.reverse();
        Ok::<_, PageError>(rows)
    }
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => return error.respond(lang),
    };
    let body = html! {
        form.filters method="get" action="/alerts" {
            (input("rule", "Rule", &q.rule, &ctx, "large-export-*"))
            (input("host", "Host", &q.host, &ctx, "files1"))
            label {
                span { (ctx.tr("Severity")) }
                select name="severity" {
                    option value="" { "—" }
                    @for s in ["low", "medium", "high", "critical"] {
                        option value=(s) selected[q.severity.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            (input("since", "Since", &q.since, &ctx, "24h"))
            button type="submit" { (ctx.tr("Filter")) }
        }
        @if rows.is_empty() {
            p.empty { (ctx.tr("No alerts match.")) }
        } @else {
            table.alerts {
                thead { tr {
                    th { (ctx.tr("Severity")) } th { (ctx.tr("Rule")) } th { (ctx.tr("Host")) }
                    th { (ctx.tr("User")) } th { (ctx.tr("Summary")) } th { (ctx.tr("First seen")) }
                    th { (ctx.tr("Last seen")) } th.num { (ctx.tr("Count")) } th { (ctx.tr("Deliveries")) }
                } }
                tbody {
                    @for row in &rows {
                        @let (first, last) = scope::alert_span(&row.alert);
                        tr {
                            td { span class=(format!("sev sev-{}", row.alert.severity.as_str())) { (row.alert.severity.as_str()) } }
                            td { (text(&row.alert.rule)) }
                            td { (text(&row.alert.host)) }
                            td { (text(&alert_user(&row.alert))) }
                            td { a.alert-link href=(format!("/alerts/{}", view::percent_encode(&row.alert.id))) { (text(&row.alert.summary)) } }
                            td { (ts(first)) }
                            td { (ts(last)) }
                            td.num { (row.alert.count) }
                            td { (delivery_summary(&row.deliveries)) }
                        }
                    }
                }
            }
        }
    };
    view::page(&ctx, ctx.tr("Alerts"), body).into_response()
}

/// What the alert page shows.
struct AlertPage {
    alert: Alert,
    deliveries: Vec<DeliveryStatus>,
    evidence: Vec<(Evidence, Vec<String>)>,
}

/// Lineage for each evidence event: its own ancestry where the agent knew it, otherwise the
/// `process.start` events of its host up to a day before it.
fn evidence_lineage(conn: &ReadConn, evidence: &[Evidence]) -> Result<Vec<Vec<String>>, PageError> {
    let agents = conn.all_agents()?;
    let mut tables: HashMap<String, ProcessTable> = HashMap::new();
    let mut out = Vec::new();
    for item in evidence {
        let Some(record) = &item.record else {
            out.push(Vec::new());
            continue;
        };
        let Some(info) = process_of(record) else {
            out.push(Vec::new());
            continue;
        };
        if !info.ancestry.is_empty() {
            out.push(info.ancestry.iter().map(|a| a.exe.clone()).collect());
            continue;
        }
        if !tables.contains_key(&item.agent_id) {
            let mut table = ProcessTable::default();
            if let Some(agent) = agents.iter().find(|a| a.id == item.agent_id) {
                let until = evidence
                    .iter()
                    .filter(|e| e.agent_id == item.agent_id)
                    .filter_map(|e| e.record.as_ref().map(|r| r.event.ts))
                    .max()
                    .unwrap_or(record.event.ts);
                let starts = conn.records(&Range {
                    agents: Some(&[agent.no]),
                    since: record.event.ts.saturating_sub(ANCESTRY_LOOKBACK),
                    until,
                    kinds: &["process.start"],
                    limit: Some(100_000),
                })?;
                for start in &starts {
                    table.observe(start);
                }
            }
            tables.insert(item.agent_id.clone(), table);
        }
        let lineage = tables
            .get(&item.agent_id)
            .map(|table| table.lineage(&record.agent_id, info))
            .unwrap_or_default();
        out.push(lineage);
    }
    Ok(out)
}

pub async fn alert(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let page = read(&console, move |conn, console| {
        let alert = conn
            .alert(&id)?
            .ok_or_else(|| PageError::NotFound(format!("no alert {id} is stored")))?;
        let deliveries = conn.delivery_status(&alert.id)?;
        let refs: Vec<(String, u64)> = alert
            .evidence
            .iter()
            .map(|e| (e.agent_id.clone(), e.seq))
            .collect();
        let evidence =
            store_console::evidence(conn.console_rows(), &refs, console.ca_pem.as_deref())?;
        let lineages = evidence_lineage(conn, &evidence)?;
        Ok(AlertPage {
            alert,
            deliveries,
            evidence: evidence.into_iter().zip(lineages).collect(),
        })
    })
    .await;
    let page = match page {
        Ok(page) => page,
        Err(error) => return error.respond(lang),
    };
    let alert = &page.alert;
    let (first, last) = scope::alert_span(alert);
    let id = view::percent_encode(&alert.id);
    let body = html! {
        p.summary { span class=(format!("sev sev-{}", alert.severity.as_str())) { (alert.severity.as_str()) } " " (text(&alert.summary)) }
        p.links {
            a id="scope-link" href=(format!("/scope?alert={id}")) { (ctx.tr("Scope of this alert")) }
            " · "
            a id="timeline-link" href=(format!("/timeline?alert={id}")) { (ctx.tr("Timeline around this alert")) }
        }
        h2 { (ctx.tr("Evidence")) }
        table.evidence {
            thead { tr {
                th { (ctx.tr("Proof")) } th { (ctx.tr("Time")) } th { (ctx.tr("Kind")) }
                th { (ctx.tr("Agent")) } th.num { (ctx.tr("Seq")) } th { (ctx.tr("Detail")) } th { (ctx.tr("Lineage")) }
            } }
            tbody {
                @for (item, lineage) in &page.evidence {
                    tr.evidence-row {
                        td {
                            @match &item.proof {
                                Proof::Verified => span.verified title="chain and signature" { "✔ " (ctx.tr("verified")) },
                                Proof::Unverified(why) => span.unverified title=(why) { "✘ " (ctx.tr("not verified")) ": " (why) },
                            }
                        }
                        @if let Some(record) = &item.record {
                            td { (ts(record.event.ts)) }
                            td { (record.event.kind()) }
                            td { (text(&record.event.host)) }
                            td.num { (item.seq) }
                            td.detail { (text(&present::table::event_detail(record))) }
                            td.lineage { (view::lineage(process_of(record).map(|p| p.exe.as_str()), lineage)) }
                        } @else {
                            td { "—" } td { "—" } td { (text(&item.agent_id)) } td.num { (item.seq) } td { "—" } td { "—" }
                        }
                    }
                }
            }
        }
        h2 { (ctx.tr("Deliveries")) }
        @if page.deliveries.is_empty() {
            p.empty { (ctx.tr("No deliveries configured.")) }
        } @else {
            table.deliveries {
                thead { tr { th { (ctx.tr("Sink")) } th { (ctx.tr("State")) } th.num { (ctx.tr("Attempts")) } th { (ctx.tr("Last error")) } } }
                tbody {
                    @for d in &page.deliveries {
                        tr {
                            td { (text(&d.sink.0)) }
                            td { (d.state.as_str()) @if let Some(at) = d.delivered_ts { " " (ts(at)) } }
                            td.num { (d.attempts) }
                            td { (text(d.last_error.as_deref().unwrap_or(""))) }
                        }
                    }
                }
            }
        }
        h2 { (ctx.tr("Fields")) }
        table.fields {
            tbody {
                tr { th { "id" } td { (text(&alert.id)) } }
                tr { th { (ctx.tr("Rule")) } td { (text(&alert.rule)) } }
                tr { th { (ctx.tr("Host")) } td { (text(&alert.host)) } }
                tr { th { (ctx.tr("First seen")) } td { (ts(first)) } }
                tr { th { (ctx.tr("Last seen")) } td { (ts(last)) } }
                tr { th { (ctx.tr("Count")) } td { (alert.count) } }
                @for (key, value) in &alert.fields {
                    tr { th { (text(key)) } td { (text(&match value { serde_json::Value::String(s) => s.clone(), other => other.to_string() })) } }
                }
            }
        }
    };
    view::page(
        &ctx,
        &format!("{}: {}", ctx.tr("Alert"), text(&alert.rule)),
        body,
    )
    .into_response()
}

// ---- Agents ----

pub async fn agents(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let result = read(&console, |conn, console| {
        let rows = conn.agents(Timestamp::now(), console.config.server.silent_after)?;
        let health = store_console::health(conn.console_rows())?;
        Ok((rows, health))
    })
    .await;
    let (rows, health): (Vec<AgentRow>, HashMap<String, Health>) = match result {
        Ok(found) => found,
        Err(error) => return error.respond(lang),
    };
    let none = Health::default();
    let body = html! {
        table.agents {
            thead { tr {
                th { (ctx.tr("Name")) } th { (ctx.tr("Status")) } th { (ctx.tr("Last seen")) }
                th { (ctx.tr("Sensors")) } th.num { (ctx.tr("Backlog")) } th.num { (ctx.tr("Dropped")) }
                th.num { (ctx.tr("Overflows")) } th.num { (ctx.tr("Errors")) } th { (ctx.tr("Chain")) }
            } }
            tbody {
                @for row in &rows {
                    @let h = health.get(&row.agent_id).unwrap_or(&none);
                    tr {
                        td {
                            a href=(format!("/timeline?{}", view::query(&[("host", Some(&row.name))]))) { (text(&row.name)) }
                            br; small.id { (text(&row.agent_id)) }
                        }
                        td { span class=(format!("status status-{}", row.status)) { (ctx.tr(status_key(&row.status))) } }
                        td { @if let Some(seen) = row.last_seen { (ts(seen)) } @else { "—" } }
                        td.sensors {
                            @for (sensor, message) in &h.backends {
                                div { b { (text(sensor)) } ": " (text(message)) }
                            }
                            @if h.backends.is_empty() && !h.sensors.is_empty() {
                                div { (text(&h.sensors.join(", "))) }
                            }
                        }
                        td.num { (row.spool_events) " " (ctx.tr("events")) }
                        td.num { (h.dropped) }
                        td.num { (h.overflows) }
                        td.num { (h.sensor_errors) }
                        td {
                            @if h.findings.is_empty() && h.head_signed {
                                span.verified { (ctx.tr("intact")) } " · seq " (row.last_seq)
                            } @else {
                                @if !h.head_signed { span.unverified { (ctx.tr("head not signed")) } " " }
                                @for (kind, n) in &h.findings { span.unverified { (text(kind)) " ×" (n) } " " }
                                " · seq " (row.last_seq)
                            }
                        }
                    }
                }
            }
        }
    };
    view::page(&ctx, ctx.tr("Agents"), body).into_response()
}

fn status_key(status: &str) -> &'static str {
    match status {
        "active" => "active",
        "silent" => "silent",
        "never_seen" => "never_seen",
        _ => "revoked",
    }
}

// ---- Timeline ----

#[derive(Deserialize, Default)]
pub struct TimelineQuery {
    host: Option<String>,
    since: Option<String>,
    until: Option<String>,
    kind: Option<String>,
    alert: Option<String>,
    margin: Option<String>,
}

/// Events shown at most on one timeline page.
const TIMELINE_LIMIT: usize = 5000;

pub async fn timeline(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<TimelineQuery>,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let result = async {
        let now = Timestamp::now();
        let margin = duration(&q.margin, "10m", "margin")?;
        let kind = given(&q.kind).map(|k| glob(&k)).transpose()?;
        let (alert, host, since, until) = (
            given(&q.alert),
            given(&q.host),
            bound(&q.since, now, "since")?,
            bound(&q.until, now, "until")?,
        );
        read(&console, move |conn, _| {
            let (host, since, until) = match &alert {
                Some(id) => {
                    let alert = conn
                        .alert(id)?
                        .ok_or_else(|| PageError::NotFound(format!("no alert {id} is stored")))?;
                    let (first, last) = scope::alert_span(&alert);
                    (
                        Some(alert.host),
                        first.saturating_sub(margin),
                        last.saturating_add(margin),
                    )
                }
                None => (
                    host,
                    since.unwrap_or(now.saturating_sub(std::time::Duration::from_secs(3600))),
                    until.unwrap_or(now),
                ),
            };
            let Some(host) = host else {
                let hosts: Vec<String> = conn.all_agents()?.into_iter().map(|a| a.name).collect();
                return Ok((None, since, until, Vec::new(), hosts));
            };
            let entries = local::timeline(
                conn,
                &timeline::Query {
                    host: &host,
                    since,
                    until,
                    limit: TIMELINE_LIMIT,
                },
            )?;
            Ok((Some(host), since, until, entries, Vec::new()))
        })
        .await
        .map(|(host, since, until, entries, hosts)| {
            let full = entries.len() == TIMELINE_LIMIT;
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|e| {
                    kind.as_ref()
                        .is_none_or(|k| k.is_match(e.record.event.kind()))
                })
                .collect();
            (host, since, until, entries, hosts, full)
        })
    }
    .await;
    let (host, since, until, entries, hosts, full) = match result {
        Ok(found) => found,
        Err(error) => return error.respond(lang),
    };
    let shown_host = host.clone();
    let body = html! {
        form.filters method="get" action="/timeline" {
            label { span { (ctx.tr("Host")) } input type="text" name="host" value=[shown_host.as_deref()]; }
            label { span { (ctx.tr("Since")) } input type="text" name="since" value=(since.to_rfc3339()); }
            label { span { (ctx.tr("Until")) } input type="text" name="until" value=(until.to_rfc3339()); }
            (input("kind", "Kind", &q.kind, &ctx, "file.*"))
            button type="submit" { (ctx.tr("Show")) }
        }
        @if host.is_none() {
            ul.hosts {
                @for name in &hosts {
                    li { a href=(format!("/timeline?{}", view::query(&[("host", Some(name))]))) { (text(name)) } }
                }
            }
        } @else if entries.is_empty() {
            p.empty { (ctx.tr("No events match.")) }
        } @else {
            @if full { p.note { (ctx.tr("more events than shown; narrow the range")) } }
            table.timeline {
                thead { tr { th { (ctx.tr("Time")) } th { (ctx.tr("Kind")) } th.num { (ctx.tr("Seq")) } th { (ctx.tr("Detail")) } th { (ctx.tr("Lineage")) } } }
                tbody {
                    @for entry in &entries {
                        tr {
                            td { (ts(entry.record.event.ts)) }
                            td { (entry.record.event.kind()) }
                            td.num { (entry.record.event.seq) }
                            td.detail { (text(&present::table::event_detail(&entry.record))) }
                            td.lineage { (view::lineage(process_of(&entry.record).map(|p| p.exe.as_str()), &entry.lineage)) }
                        }
                    }
                }
            }
        }
    };
    let title = match &host {
        Some(host) => format!("{}: {}", ctx.tr("Timeline"), text(host)),
        None => ctx.tr("Timeline").to_string(),
    };
    view::page(&ctx, &title, body).into_response()
}

// ---- Search and export ----

#[derive(Deserialize, Default, Clone)]
pub struct SearchQuery {
    kind: Option<String>,
    host: Option<String>,
    path: Option<String>,
    user: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
}

impl SearchQuery {
    fn search(&self) -> Result<Search, PageError> {
        let now = Timestamp::now();
        Ok(Search {
            kind: given(&self.kind),
            host: given(&self.host),
            path: given(&self.path),
            user: given(&self.user),
            since: bound(&self.since, now, "since")?,
            until: bound(&self.until, now, "until")?,
        })
    }

    /// The filters as a query string, for the next page and the exports.
    fn filters(&self) -> String {
        view::query(&[
            ("kind", self.kind.as_deref()),
            ("host", self.host.as_deref()),
            ("path", self.path.as_deref()),
            ("user", self.user.as_deref()),
            ("since", self.since.as_deref()),
            ("until", self.until.as_deref()),
        ])
    }
}

const SEARCH_PAGE: usize = 100;
/// Rows one page may read before it stops (a user filter over a wide range).
const SEARCH_SCAN: usize = 200_000;
/// Events one export holds at most, and rows it may read.
const EXPORT_MAX: usize = 100_000;
const EXPORT_SCAN: usize = 2_000_000;

pub async fn search(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<SearchQuery>,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let result = async {
        let search = q.search()?;
        let cursor = match given(&q.cursor) {
            Some(text) => Some(
                Cursor::parse(&text).ok_or_else(|| PageError::BadRequest("bad cursor".into()))?,
            ),
            None => None,
        };
        read(&console, move |conn, _| {
            Ok(store_console::search(
                conn.console_rows(),
                &search,
                cursor,
                SEARCH_PAGE,
                SEARCH_SCAN,
            )?)
        })
        .await
    }
    .await;
    let page = match result {
        Ok(page) => page,
        Err(error) => return error.respond(lang),
    };
    let filters = q.filters();
    let body = html! {
        form.filters method="get" action="/search" {
            (input("kind", "Kind", &q.kind, &ctx, "file.*"))
            (input("host", "Host", &q.host, &ctx, "files1"))
            (input("path", "Path", &q.path, &ctx, "/srv/exports/*.csv"))
            (input("user", "User", &q.user, &ctx, "alice"))
            (input("since", "Since", &q.since, &ctx, "24h"))
            (input("until", "Until", &q.until, &ctx, "RFC 3339"))
            button type="submit" { (ctx.tr("Search")) }
        }
        p.exports {
            (ctx.tr("Export")) ": "
            a id="export-csv" href=(format!("/search/export?format=csv&{filters}")) { "CSV" } " · "
            a id="export-json" href=(format!("/search/export?format=json&{filters}")) { "JSON" } " · "
            a id="export-ocsf" href=(format!("/search/export?format=ocsf&{filters}")) { "OCSF" }
        }
        @if page.scan_limited { p.note { (ctx.tr("The scan stopped before the page filled; the next page continues it.")) } }
        @if page.records.is_empty() {
            p.empty { (ctx.tr("No events match.")) }
        } @else {
            (events_table(&ctx, &page.records))
        }
        @if let Some(next) = page.next {
            p { a id="next-page" href=(format!("/search?{filters}&cursor={}", next.encode())) { (ctx.tr("Next page")) " →" } }
        }
    };
    view::page(&ctx, ctx.tr("Search"), body).into_response()
}

fn events_table(ctx: &Ctx, records: &[Record]) -> Markup {
    html! {
        table.events {
            thead { tr {
                th { (ctx.tr("Time")) } th { (ctx.tr("Host")) } th { (ctx.tr("Kind")) }
                th { (ctx.tr("User")) } th { (ctx.tr("Detail")) }
            } }
            tbody {
                @for record in records {
                    tr {
                        td { (ts(record.event.ts)) }
                        td { (text(&record.event.host)) }
                        td { (record.event.kind()) }
                        td { (text(store_console::user_of(record).unwrap_or(""))) }
                        td.detail { (text(&present::table::event_detail(record))) }
                    }
                }
            }
        }
    }
}

pub async fn export(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    let lang = Lang::of(&headers);
    let result = async {
        let format = export::Format::parse(given(&q.format).as_deref().unwrap_or("csv"))
            .ok_or_else(|| PageError::BadRequest("format must be csv, json or ocsf".into()))?;
        let search = q.search()?;
        let bytes = read(&console, move |conn, _| {
            let page =
                store_console::search(conn.console_rows(), &search, None, EXPORT_MAX, EXPORT_SCAN)?;
            let mut records = page.records;
            records.reverse();
            let mut out = Vec::new();
            export::write(&mut out, &records, format)
                .map_err(|error| PageError::Internal(error.to_string()))?;
            Ok(out)
        })
        .await?;
        Ok::<_, PageError>((format, bytes))
    }
    .await;
    match result {
        Ok((format, bytes)) => (
            [
                (header::CONTENT_TYPE, format.content_type().to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", format.file_name()),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(error) => error.respond(lang),
    }
}

// ---- Scope ----

#[derive(Deserialize, Default)]
pub struct ScopeQuery {
    since: Option<String>,
    until: Option<String>,
    host: Option<String>,
    alert: Option<String>,
    margin: Option<String>,
}

pub async fn scope(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<ScopeQuery>,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let result = async {
        let now = Timestamp::now();
        let query = scope::Query {
            since: bound(&q.since, now, "since")?
                .unwrap_or(now.saturating_sub(std::time::Duration::from_secs(3600))),
            until: bound(&q.until, now, "until")?.unwrap_or(now),
            hosts: given(&q.host)
                .map(|h| {
                    h.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            alert: given(&q.alert),
            margin: duration(&q.margin, "1h", "margin")?,
        };
        read(&console, move |conn, _| Ok(local::scope(conn, &query)?.0)).await
    }
    .await;
    let report = match result {
        Ok(report) => report,
        Err(error) => return error.respond(lang),
    };
    let body = html! {
        form.filters method="get" action="/scope" {
            label { span { (ctx.tr("Since")) } input type="text" name="since" value=(report.since.to_rfc3339()); }
            label { span { (ctx.tr("Until")) } input type="text" name="until" value=(report.until.to_rfc3339()); }
            (input("host", "Host", &q.host, &ctx, "files1,db1"))
            button type="submit" { (ctx.tr("Show")) }
        }
        (scope_report(&ctx, &report))
    };
    let title = match &report.alert {
        Some(id) => format!("{}: {} {}", ctx.tr("Scope"), ctx.tr("Alert"), text(id)),
        None => ctx.tr("Scope").to_string(),
    };
    view::page(&ctx, &title, body).into_response()
}

fn scope_report(ctx: &Ctx, report: &Scope) -> Markup {
    html! {
        p.window { (ctx.tr("Window")) ": " (ts(report.since)) " – " (ts(report.until)) }
        section.answer {
            h2 { (ctx.tr("Hosts that read sensitive records and then sent data out")) }
            @if report.read_and_sent.is_empty() { p { (ctx.tr("None")) } }
            @else { p.hot { @for host in &report.read_and_sent { span.host { (text(host)) } " " } } }
        }
        h2 { (ctx.tr("Hosts")) }
        @if report.hosts.is_empty() { p.empty { (ctx.tr("None")) } } @else {
            table.scope-hosts {
                thead { tr {
                    th { (ctx.tr("Host")) } th.num { (ctx.tr("Rows read")) } th { (ctx.tr("Tables")) }
                    th.num { (ctx.tr("Public connections after the read")) } th.num { (ctx.tr("Bytes sent after the read")) }
                    th.num { (ctx.tr("Files created")) } th.num { (ctx.tr("Files deleted")) }
                } }
                tbody { @for h in &report.hosts { tr {
                    td { (text(&h.host)) } td.num { (h.sensitive_rows_read) } td { (text(&h.sensitive_tables.join(", "))) }
                    td.num { (h.public_connections_after_read) } td.num { (h.bytes_sent_after_read) }
                    td.num { (h.files_created) } td.num { (h.files_deleted) }
                } } }
            }
        }
        @if !report.db_reads.is_empty() {
            h2 { (ctx.tr("Database reads")) }
            table.scope-reads {
                thead { tr {
                    th { (ctx.tr("Reader")) } th { (ctx.tr("Database")) } th { (ctx.tr("User")) }
                    th { (ctx.tr("Tables")) } th.num { (ctx.tr("Rows")) } th { (ctx.tr("First seen")) } th { (ctx.tr("Last seen")) }
                } }
                tbody { @for r in &report.db_reads { tr {
                    td { (text(&r.reader)) " (" (text(&r.client_addr)) ")" }
                    td { (text(&r.db_system)) " " (text(&r.database)) " @ " (text(&r.db_host)) }
                    td { (text(&r.db_user)) }
                    td { (text(&r.tables.join(", "))) }
                    td.num { (r.session_total.unwrap_or(0).max(r.rows)) }
                    td { (ts(r.first)) } td { (ts(r.last)) }
                } } }
            }
        }
        h2 { (ctx.tr("Export files")) }
        @if report.files.is_empty() { p.empty { (ctx.tr("None")) } } @else {
            table.scope-files {
                thead { tr {
                    th { (ctx.tr("Time")) } th { (ctx.tr("Host")) } th { (ctx.tr("Kind")) } th { (ctx.tr("Path")) }
                    th.num { (ctx.tr("Size")) } th.num { (ctx.tr("Est. rows")) } th.num { (ctx.tr("Personal data")) } th { (ctx.tr("Process")) }
                } }
                tbody { @for f in &report.files { tr {
                    td { (ts(f.ts)) } td { (text(&f.host)) } td { (text(&f.kind)) } td.path { (text(&f.path)) }
                    td.num { (f.size.map(|s| s.to_string()).unwrap_or_default()) }
                    td.num { (f.est_rows.map(|s| s.to_string()).unwrap_or_default()) }
                    td.num { (f.personal) }
                    td { (text(&format!("{} {}", f.exe.as_deref().unwrap_or(""), f.user.as_deref().unwrap_or("")))) }
                } } }
            }
        }
        @if !report.outbound.is_empty() {
            h2 { (ctx.tr("Outbound connections")) }
            table.scope-outbound {
                thead { tr { th { (ctx.tr("Time")) } th { (ctx.tr("Host")) } th { (ctx.tr("Destination")) } th.num { (ctx.tr("Sent")) } th { (ctx.tr("Process")) } } }
                tbody { @for o in &report.outbound { tr class=[o.after_read.then_some("hot")] {
                    td { (ts(o.ts)) } td { (text(&o.host)) } td { (text(&o.remote_addr)) ":" (o.remote_port) }
                    td.num { (o.bytes_sent.map(|b| b.to_string()).unwrap_or_default()) }
                    td { (text(o.exe.as_deref().unwrap_or(""))) }
                } } }
            }
        }
        @if !report.processes.is_empty() {
            h2 { (ctx.tr("Processes")) }
            table.scope-processes {
                thead { tr { th { (ctx.tr("Host")) } th { (ctx.tr("Process")) } th { (ctx.tr("User")) } th { (ctx.tr("Lineage")) } th { (ctx.tr("Command")) } th { (ctx.tr("What it did")) } } }
                tbody { @for p in &report.processes { tr {
                    td { (text(&p.host)) } td { (p.pid) } td { (text(&p.user)) }
                    td.lineage { (view::lineage(Some(&p.exe), &p.lineage)) }
                    td.detail { (text(&p.cmdline)) }
                    td { (text(&p.involved.join(", "))) }
                } } }
            }
        }
    }
}

// ---- Rules ----

/// A duration as configured: `24h`, `10m`, `90s`.
fn human(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    if secs > 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else if duration.subsec_millis() == 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", duration.as_millis())
    }
}

pub async fn rules(
    State(console): State<Shared>,
    Extension(operator): Extension<Operator>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let ctx = ctx(&headers, &operator, &uri);
    let lang = ctx.lang;
    let detection = console.config.detection.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::detect::rule_list(&detection)).await;
    let rules = match loaded {
        Ok(Ok(rules)) => rules,
        Ok(Err(error)) => return PageError::Internal(error.to_string()).respond(lang),
        Err(_) => return PageError::Internal("loading the rules failed".into()).respond(lang),
    };
    let detection = &console.config.detection;
    let thresholds: Vec<(String, String)> = match serde_json::to_value(&detection.thresholds) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(key, value)| {
                let shown = match value {
                    serde_json::Value::String(s) => s
                        .strip_suffix("ms")
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map_or(s.clone(), |ms| human(std::time::Duration::from_millis(ms))),
                    other => other.to_string(),
                };
                (key, shown)
            })
            .collect(),
        _ => Vec::new(),
    };
    let body = html! {
        h2 { (ctx.tr("Loaded rules")) }
        table.rules {
            thead { tr { th { "id" } th { (ctx.tr("Title")) } th { (ctx.tr("Severity")) } th { (ctx.tr("Type")) } th { (ctx.tr("Raises alerts")) } } }
            tbody { @for rule in &rules { tr {
                td { (text(&rule.id)) } td { (text(&rule.title)) }
                td { span class=(format!("sev sev-{}", rule.severity.as_str())) { (rule.severity.as_str()) } }
                td { (rule.shape) } td { (ctx.tr(if rule.generate { "yes" } else { "no" })) }
            } } }
        }
        h2 { (ctx.tr("Thresholds")) }
        table.thresholds { tbody {
            @for (key, value) in &thresholds { tr { th { (key) } td { (value) } } }
            tr { th { (ctx.tr("De-duplication window")) } td { (human(detection.dedup_window)) } }
            tr { th { (ctx.tr("Export accounts")) } td { (text(&detection.export_accounts.join(", "))) } }
            tr { th { (ctx.tr("Disabled rules")) } td { (text(&detection.disabled.join(", "))) } }
        } }
        h2 { (ctx.tr("Allow-list")) }
        @if detection.allow.is_empty() { p.empty { (ctx.tr("None")) } } @else {
            table.allow {
                thead { tr { th { (ctx.tr("Applies to")) } th { (ctx.tr("Host")) } th { (ctx.tr("User")) } th { "exe" } th { (ctx.tr("Path")) } th { "hours" } th { "comment" } } }
                tbody { @for entry in &detection.allow { tr {
                    td { @if entry.rules.is_empty() { (ctx.tr("every rule")) } @else { (text(&entry.rules.join(", "))) } }
                    td { (text(entry.host.as_deref().unwrap_or("*"))) }
                    td { (text(entry.user.as_deref().unwrap_or("*"))) }
                    td { (text(entry.exe.as_deref().unwrap_or("*"))) }
                    td { (text(entry.path.as_deref().unwrap_or("*"))) }
                    td { (text(entry.hours.as_deref().unwrap_or(""))) }
                    td { (text(&entry.comment)) }
                } } }
            }
        }
    };
    view::page(&ctx, ctx.tr("Rules"), body).into_response()
}
