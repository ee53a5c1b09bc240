//! Loading rules: the built-in pack compiled into the binary, then the operator's files.
//!
//! A rule file holds YAML documents of three shapes, told apart by their keys:
//! - `detection:` a Sigma rule, matched against one event at a time ([`super::sigma`]);
//! - `correlation:` a Sigma correlation over other rules' matches ([`super::correlate`]);
//! - `detector:` a named stateful detector written in Rust ([`super::detectors`]) with its
//!   `parameters`, for rules that need more state than Sigma can say (following a file through
//!   renames until it is deleted, remembering every destination ever seen, noticing silence).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use yaml_serde::{Mapping, Value as Yaml};

use super::DetectError;
use super::config::DetectConfig;
use super::fields::Field;
use super::sigma::{Cmp, Detection, placeholder};
use crate::alert::Severity;

/// The built-in pack, so the collector works from any directory.
const BUILTIN: &[(&str, &str)] = &[
    ("rules/files.yml", include_str!("../../rules/files.yml")),
    (
        "rules/database.yml",
        include_str!("../../rules/database.yml"),
    ),
    ("rules/process.yml", include_str!("../../rules/process.yml")),
    ("rules/network.yml", include_str!("../../rules/network.yml")),
    ("rules/health.yml", include_str!("../../rules/health.yml")),
];

/// A value a rule can refer to as `%name%`.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Num(u64),
    Duration(Duration),
    List(Vec<String>),
}

impl Param {
    pub(crate) fn to_yaml(&self) -> Vec<Yaml> {
        match self {
            Param::Num(n) => vec![Yaml::from(*n)],
            Param::Duration(d) => vec![Yaml::from(format!("{}s", d.as_secs()))],
            Param::List(items) => items.iter().map(|s| Yaml::from(s.clone())).collect(),
        }
    }
}

pub(crate) type Params = HashMap<String, Param>;

pub(crate) fn params(config: &DetectConfig) -> Params {
    let t = &config.thresholds;
    HashMap::from([
        (
            "large_export_min_size".into(),
            Param::Num(t.large_export_min_size),
        ),
        ("export_window".into(), Param::Duration(t.export_window)),
        ("truncated_below".into(), Param::Num(t.truncated_below)),
        ("bulk_read_rows".into(), Param::Num(t.bulk_read_rows)),
        (
            "bulk_read_window".into(),
            Param::Duration(t.bulk_read_window),
        ),
        (
            "bulk_then_export_window".into(),
            Param::Duration(t.bulk_then_export_window),
        ),
        (
            "agent_silent_after".into(),
            Param::Duration(t.agent_silent_after),
        ),
        (
            "export_accounts".into(),
            Param::List(config.export_accounts.clone()),
        ),
        (
            "export_sent_window".into(),
            Param::Duration(t.export_sent_window),
        ),
        ("archive_window".into(), Param::Duration(t.archive_window)),
        (
            "private_networks".into(),
            Param::List(config.private_networks.clone()),
        ),
        (
            "public_networks".into(),
            Param::List(config.public_networks.clone()),
        ),
    ])
}

/// What every rule has, whatever its shape.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) severity: Severity,
    /// `{field}` template for the alert summary; the title when absent.
    pub(crate) summary: Option<String>,
    /// Event fields copied into the alert.
    pub(crate) fields: Vec<Field>,
    /// Fields that, with the host, make repeats of the alert "the same alert" for de-duplication.
    pub(crate) dedup_by: Vec<Field>,
    /// Whether matches become alerts (false for rules that only feed correlations).
    pub(crate) generate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CorrelationKind {
    EventCount,
    ValueCount,
    ValueSum,
    Temporal,
    TemporalOrdered,
}

#[derive(Debug)]
pub(crate) struct CorrelationSpec {
    pub(crate) kind: CorrelationKind,
    /// Ids (or names) of the rules whose matches count.
    pub(crate) rules: Vec<String>,
    pub(crate) group_by: Vec<Field>,
    pub(crate) timespan: Duration,
    pub(crate) cmp: Cmp,
    pub(crate) threshold: i64,
    /// The field counted (`value_count`) or added up (`value_sum`).
    pub(crate) field: Option<Field>,
}

#[derive(Debug)]
pub(crate) struct DetectorSpec {
    pub(crate) name: String,
    pub(crate) parameters: Mapping,
}

#[derive(Debug)]
pub(crate) enum Body {
    Sigma(Detection),
    Correlation(CorrelationSpec),
    Detector(DetectorSpec),
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) meta: Meta,
    /// Sigma's optional `name`, which correlations may refer to instead of the id.
    pub(crate) name: Option<String>,
    pub(crate) body: Body,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRule {
    title: String,
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    detection: Option<Mapping>,
    #[serde(default)]
    correlation: Option<RawCorrelation>,
    #[serde(default)]
    detector: Option<String>,
    #[serde(default)]
    parameters: Option<Mapping>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    dedup_by: Vec<String>,
    #[serde(default)]
    generate: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawCorrelation {
    #[serde(rename = "type")]
    kind: String,
    rules: Vec<String>,
    #[serde(default)]
    group_by: Vec<String>,
    timespan: String,
    #[serde(default)]
    condition: Option<Mapping>,
}

/// Loads the rule pack the configuration asks for: built-in rules, then the extra files (a rule with
/// a built-in rule's id replaces it), less the disabled ids.
pub(crate) fn load(config: &DetectConfig) -> Result<Vec<Rule>, DetectError> {
    let params = params(config);
    let mut rules: Vec<Rule> = Vec::new();
    let mut add = |new: Vec<Rule>| {
        for rule in new {
            rules.retain(|r| r.meta.id != rule.meta.id);
            rules.push(rule);
        }
    };
    if config.builtin_rules {
        for (name, text) in BUILTIN {
            add(parse(name, text, &params)?);
        }
    }
    for path in &config.rules {
        for file in rule_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| DetectError::Read {
                path: file.clone(),
                source,
            })?;
            add(parse(&file.display().to_string(), &text, &params)?);
        }
    }
    rules.retain(|r| !config.disabled.contains(&r.meta.id));
    Ok(rules)
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, DetectError> {
    let read_error = |source| DetectError::Read {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let file = entry.map_err(read_error)?.path();
        if matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        ) {
            files.push(file);
        }
    }
    // Sorted so that overrides between files of one directory do not depend on the file system.
    files.sort();
    Ok(files)
}

/// Parses every YAML document of one rule file.
pub(crate) fn parse(source: &str, text: &str, params: &Params) -> Result<Vec<Rule>, DetectError> {
    let mut rules = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = Yaml::deserialize(document).map_err(|error| DetectError::Yaml {
            source_name: source.to_string(),
            error,
        })?;
        if value.is_null() {
            continue;
        }
        let raw: RawRule = yaml_serde::from_value(value).map_err(|error| DetectError::Yaml {
            source_name: source.to_string(),
            error,
        })?;
        let id = raw.id.clone();
        let rule = compile(raw, params).map_err(|message| DetectError::Rule {
            source_name: source.to_string(),
            rule: id,
            message,
        })?;
        rules.push(rule);
    }
    Ok(rules)
}

/// The fields a rule copies into its alerts: known names, none of the alert's own keys.
fn alert_fields(names: &[String]) -> Result<Vec<Field>, String> {
    if let Some(name) = names
        .iter()
        .find(|n| crate::alert::RESERVED_FIELDS.contains(&n.as_str()))
    {
        return Err(format!(
            "fields: {name:?} is a key of the alert itself (reserved: {}); match on it in detection, or copy another field",
            crate::alert::RESERVED_FIELDS.join(", ")
        ));
    }
    fields(names)
}

fn fields(names: &[String]) -> Result<Vec<Field>, String> {
    names
        .iter()
        .map(|n| Field::parse(n).ok_or_else(|| format!("unknown field {n:?}")))
        .collect()
}

fn severity(level: Option<&str>) -> Result<Severity, String> {
    match level.unwrap_or("medium") {
        "informational" | "low" => Ok(Severity::Low),
        "medium" => Ok(Severity::Medium),
        "high" => Ok(Severity::High),
        "critical" => Ok(Severity::Critical),
        other => Err(format!("unknown level {other:?}")),
    }
}

/// A duration written as `90s`/`1h`, or a `%placeholder%` holding one.
pub(crate) fn duration(text: &str, params: &Params) -> Result<Duration, String> {
    if let Some(name) = placeholder(text) {
        return match params.get(name) {
            Some(Param::Duration(d)) => Ok(*d),
            _ => Err(format!("%{name}% is not a duration placeholder")),
        };
    }
    bannin::time::parse_duration(text).map_err(|e| e.to_string())
}

/// A number, or a `%placeholder%` holding one.
pub(crate) fn number(value: &Yaml, params: &Params) -> Result<i64, String> {
    if let Some(name) = value.as_str().and_then(placeholder) {
        return match params.get(name) {
            Some(Param::Num(n)) => Ok(i64::try_from(*n).unwrap_or(i64::MAX)),
            _ => Err(format!("%{name}% is not a number placeholder")),
        };
    }
    value
        .as_i64()
        .ok_or_else(|| format!("{value:?} is not a number"))
}

fn compile(raw: RawRule, params: &Params) -> Result<Rule, String> {
    let meta = Meta {
        id: raw.id,
        title: raw.title,
        severity: severity(raw.level.as_deref())?,
        summary: raw.summary,
        fields: alert_fields(&raw.fields)?,
        dedup_by: fields(&raw.dedup_by)?,
        generate: raw.generate.unwrap_or(true),
    };
    let body = match (raw.detection, raw.correlation, raw.detector) {
        (Some(detection), None, None) => {
            Body::Sigma(Detection::compile(&detection, params).map_err(|e| e.to_string())?)
        }
        (None, Some(correlation), None) => {
            Body::Correlation(correlation_spec(correlation, params)?)
        }
        (None, None, Some(name)) => {
            let mut parameters = raw.parameters.unwrap_or_default();
            resolve_placeholders(&mut parameters, params)?;
            Body::Detector(DetectorSpec { name, parameters })
        }
        _ => return Err("needs exactly one of detection, correlation or detector".into()),
    };
    Ok(Rule {
        meta,
        name: raw.name,
        body,
    })
}

fn correlation_spec(raw: RawCorrelation, params: &Params) -> Result<CorrelationSpec, String> {
    let kind = match raw.kind.as_str() {
        "event_count" => CorrelationKind::EventCount,
        "value_count" => CorrelationKind::ValueCount,
        "value_sum" => CorrelationKind::ValueSum,
        "temporal" => CorrelationKind::Temporal,
        "temporal_ordered" => CorrelationKind::TemporalOrdered,
        other => return Err(format!("unsupported correlation type {other:?}")),
    };
    let mut cmp = Cmp::Gte;
    let mut threshold = 1;
    let mut field = None;
    for (key, value) in raw.condition.iter().flatten() {
        let key = key.as_str().unwrap_or_default();
        if key == "field" {
            let name = value.as_str().unwrap_or_default();
            field = Some(Field::parse(name).ok_or_else(|| format!("unknown field {name:?}"))?);
        } else {
            cmp = Cmp::parse(key).ok_or_else(|| format!("unknown condition {key:?}"))?;
            threshold = number(value, params)?;
        }
    }
    let needs_field = matches!(
        kind,
        CorrelationKind::ValueCount | CorrelationKind::ValueSum
    );
    if needs_field && field.is_none() {
        return Err(format!("{} needs condition.field", raw.kind));
    }
    if raw.rules.is_empty() {
        return Err("correlation names no rules".into());
    }
    Ok(CorrelationSpec {
        kind,
        rules: raw.rules,
        group_by: fields(&raw.group_by)?,
        timespan: duration(&raw.timespan, params)?,
        cmp,
        threshold,
        field,
    })
}

fn resolve_placeholders(map: &mut Mapping, params: &Params) -> Result<(), String> {
    for (_, value) in map.iter_mut() {
        if let Some(name) = value.as_str().and_then(placeholder) {
            let param = params
                .get(name)
                .ok_or_else(|| format!("unknown placeholder %{name}%"))?;
            *value = match param {
                Param::List(_) => Yaml::Sequence(param.to_yaml()),
                _ => param.to_yaml().into_iter().next().unwrap_or(Yaml::Null),
            };
        }
    }
    Ok(())
}

impl DetectorSpec {
    pub(crate) fn u64(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.parameters.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("parameter {key} is not a number")),
        }
    }

    pub(crate) fn duration(&self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.parameters.get(key) {
            None => Ok(default),
            Some(v) => {
                let text = v
                    .as_str()
                    .ok_or_else(|| format!("parameter {key} is not a duration"))?;
                bannin::time::parse_duration(text).map_err(|e| e.to_string())
            }
        }
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.parameters.get(key) {
            None => Ok(Vec::new()),
            Some(Yaml::Sequence(list)) => list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("parameter {key} holds a non-string"))
                })
                .collect(),
            Some(_) => Err(format!("parameter {key} is not a list")),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Operator rule files, the built-in pack, and every built-in rule's alert through every output.

    use crate::detect::testkit::*;

    #[test]
    fn operator_rule_files_add_replace_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.yml"),
            r#"
title: Interpreter from a download directory
id: exec-from-downloads
level: low
detection:
  selection:
    kind: process.start
    exe|contains: '/downloads/'
  python:
    exe|re: 'python[0-9.]*$'
  scripts:
    cmdline|endswith: ['.py', '.pl']
  condition: selection and 1 of python or scripts
fields: [exe, cmdline]
summary: '{exe} ran from downloads on {host}'
---
title: Sensor overflow (replaced)
id: sensor-overflow
level: critical
detection:
  selection:
    kind: sensor.overflow
    count|gte: 1000
  condition: selection
"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "not a rule").unwrap();
        let mut config = DetectConfig {
            rules: vec![dir.path().to_path_buf()],
            ..DetectConfig::default()
        };
        let mut fleet = Fleet::new(config.clone());
        let who = process(
            20,
            "/home/sato/Downloads/python3",
            "sato",
            &["/usr/bin/bash"],
        );
        let updates = fleet.send("pc1", 0, start(who));
        assert_eq!(rules_of(&updates), vec!["exec-from-downloads"]);
        assert_eq!(
            new_alerts(&updates)[0].summary,
            "/home/sato/Downloads/python3 ran from downloads on pc1"
        );
        let mut small = SensorEvent::new(SensorStatus::Overflow, "files", "overflow");
        small.count = 10;
        assert!(
            fleet.send("pc1", 1, small.into()).is_empty(),
            "the replacement needs 1000 lost"
        );
        let mut big = SensorEvent::new(SensorStatus::Overflow, "files", "overflow");
        big.count = 5000;
        let updates = fleet.send("pc1", 2, big.into());
        assert_eq!(new_alerts(&updates)[0].severity, Severity::Critical);

        // Disabled rules do not run.
        config.disabled = vec!["exec-from-downloads".into()];
        let mut fleet = Fleet::new(config);
        let who = process(20, "/home/sato/Downloads/python3", "sato", &[]);
        assert!(fleet.send("pc1", 0, start(who)).is_empty());

        // Mistakes are load errors that name the rule and the problem.
        for (text, expected) in [
            (
                "title: t\nid: bad-field\ndetection:\n  s:\n    exe_path: x\n  condition: s\n",
                "exe_path",
            ),
            (
                "title: t\nid: bad-cond\ndetection:\n  s:\n    exe: x\n  condition: s and t\n",
                "\"t\"",
            ),
            (
                "title: t\nid: bad-mod\ndetection:\n  s:\n    exe|base64: x\n  condition: s\n",
                "base64",
            ),
            (
                "title: t\nid: bad-ref\ncorrelation:\n  type: event_count\n  rules: [nope]\n  timespan: 1h\n",
                "nope",
            ),
            ("title: t\nid: bad-det\ndetector: telepathy\n", "telepathy"),
            (
                "title: t\nid: bad-reserved\ndetection:\n  s:\n    kind: sensor.overflow\n  condition: s\nfields: [sensor, count]\n",
                "\"count\" is a key of the alert itself",
            ),
            (
                "title: t\nid: bad-reserved-id\ndetection:\n  s:\n    kind: sensor.overflow\n  condition: s\nfields: [alert_id]\n",
                "\"alert_id\" is a key of the alert itself",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("r.yml"), text).unwrap();
            let config = DetectConfig {
                rules: vec![dir.path().join("r.yml")],
                ..DetectConfig::default()
            };
            let error = Engine::new(&config).err().unwrap().to_string();
            assert!(error.contains(expected), "{error}");
            let id = text.lines().nth(1).unwrap().trim_start_matches("id: ");
            assert!(error.contains(id), "{error}");
        }
    }

    #[test]
    fn builtin_pack_loads_and_every_rule_is_reachable() {
        let engine = Engine::new(&DetectConfig::default()).unwrap();
        let ids: Vec<&str> = engine.rules.iter().map(|r| r.meta.id.as_str()).collect();
        for id in [
            "large-export-created-then-deleted",
            "large-export-file",
            "bulk-db-read",
            "db-sensitive-read",
            "bulk-db-read-chunked",
            "db-export-unlisted-account",
            "bulk-read-then-export",
            "document-spawns-shell",
            "first-seen-public-destination",
            "agent-silent",
            "chain-gap",
            "chain-tamper",
            "sensor-overflow",
            "agent-dropped-events",
            "export-read-then-sent",
            "export-archived",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        // Every Sigma rule of the pack pins its kinds, so an event only meets the rules for its kind.
        assert!(engine.any_kind.is_empty(), "{:?}", engine.any_kind);
    }

    /// The real engine fed the incident each built-in rule exists for: every alert it raised, and the
    /// ids of the pack's rules that raise alerts (a new rule is in the second list the day it is added).
    fn alerts_of_the_builtin_pack() -> (Vec<Alert>, Vec<String>) {
        let mut updates = Vec::new();
        let config = DetectConfig {
            export_accounts: vec!["backup".into()],
            ..DetectConfig::default()
        };
        let mut fleet = Fleet::new(config);
        let generating = fleet
            .engine
            .rules
            .iter()
            .filter(|r| r.meta.generate)
            .map(|r| r.meta.id.clone())
            .collect();
        let who = attacker();
        let path = "/srv/share/c1.csv";
        let mut dropped = AgentEvent::new(AgentAction::Dropped);
        dropped.dropped = 7;
        dropped.message = "spool full".into();
        let mut overflow =
            SensorEvent::new(SensorStatus::Overflow, "files", "fanotify queue overflow");
        overflow.count = 1200;
        let uncounted =
            SensorEvent::new(SensorStatus::Overflow, "network", "socket queue overflow");
        let shell = process(
            8001,
            "/usr/bin/bash",
            "sato",
            &["/usr/lib/libreoffice/program/soffice.bin"],
        );
        let zip = process(8101, "/usr/bin/zip", "www-data", &["/bin/sh"]);
        let mut events = vec![
            (
                "db1",
                0,
                query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
            ),
            (
                "fs2",
                3600,
                file(FileAction::Create, path, Some(0), None, &who),
            ),
            (
                "fs2",
                3700,
                file(
                    FileAction::Write,
                    path,
                    Some(300 * MIB),
                    Some(csv(3_000_000)),
                    &who,
                ),
            ),
            (
                "fs2",
                3800,
                file(FileAction::Delete, path, None, None, &who),
            ),
            ("db1", 3900, export_query("sales_app", "copy_to_file")),
            ("pc7", 4000, start(shell)),
            ("pc7", 4001, connect("203.0.113.50", "public", &who)),
            ("pc1", 4002, overflow.into()),
            ("pc1", 4003, uncounted.into()),
            ("pc1", 4004, dropped.into()),
            // An export read, then sent out; another packed by zip.
            (
                "fs3",
                4100,
                file(
                    FileAction::Read,
                    path,
                    Some(300 * MIB),
                    Some(csv(3_000_000)),
                    &who,
                ),
            ),
            ("fs3", 4101, connect("203.0.113.60", "public", &who)),
            (
                "fs3",
                4102,
                file(
                    FileAction::Read,
                    path,
                    Some(300 * MIB),
                    Some(csv(3_000_000)),
                    &zip,
                ),
            ),
            (
                "fs3",
                4103,
                rename("/srv/share/zi0001", "/srv/share/c1.zip", MIB, &zip),
            ),
        ];
        for i in 0..5 {
            events.push(("db1", 5000 + i * 600, query("crm", "s", 3000, None, None)));
        }
        updates.extend(run(&mut fleet, events));
        let gap = Finding {
            agent_id: "agent-pc1".into(),
            host: "pc1".into(),
            kind: FindingKind::ChainGap,
            ts: at(9000),
            detail: "seq 41..57 missing".into(),
            first_seq: 41,
            last_seq: 57,
        };
        updates.extend(fleet.engine.observe_finding(&gap));
        let tamper = Finding {
            kind: FindingKind::ChainTamper,
            detail: "signature of seq 58 invalid".into(),
            ..gap
        };
        updates.extend(fleet.engine.observe_finding(&tamper));

        // Silence: an agent heard once, then not for longer than agent_silent_after.
        let mut quiet = Fleet::default();
        quiet.engine.tick(at(0));
        quiet.send("pc2", 0, heartbeat());
        for second in 1..=120 {
            updates.extend(quiet.engine.tick(at(second)));
        }

        // Evictions: more public destinations than the cap remembers.
        let mut flooded = Fleet::new(DetectConfig {
            limits: Limits {
                seen_destinations: 2,
                ..Limits::default()
            },
            ..DetectConfig::default()
        });
        for i in 0..5 {
            flooded.send("h1", i, connect(&format!("198.51.100.{i}"), "public", &who));
        }
        updates.extend(flooded.engine.tick(at(10)));

        let alerts = new_alerts(&updates).into_iter().cloned().collect();
        (alerts, generating)
    }

    /// A JSON value that refuses objects repeating a key: `serde_json::Value` keeps the last one
    /// silently, while the receivers (and `Alert` itself) fail on the whole document.
    struct UniqueKeys;

    impl<'de> serde::Deserialize<'de> for UniqueKeys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = UniqueKeys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
                    Ok(UniqueKeys)
                }
                fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
                    Ok(UniqueKeys)
                }
                fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
                    Ok(UniqueKeys)
                }
                fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
                    Ok(UniqueKeys)
                }
                fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
                    Ok(UniqueKeys)
                }
                fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
                    Ok(UniqueKeys)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<UniqueKeys, A::Error> {
                    while seq.next_element::<UniqueKeys>()?.is_some() {}
                    Ok(UniqueKeys)
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<UniqueKeys, A::Error> {
                    let mut seen = std::collections::HashSet::new();
                    while let Some(key) = map.next_key::<String>()? {
                        if !seen.insert(key.clone()) {
                            return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                        }
                        map.next_value::<UniqueKeys>()?;
                    }
                    Ok(UniqueKeys)
                }
            }
            d.deserialize_any(Visitor)
        }
    }

    /// Valid JSON with no key repeated, carrying `rule` somewhere.
    fn assert_deliverable(what: &str, rule: &str, text: &str) {
        if let Err(error) = serde_json::from_str::<UniqueKeys>(text) {
            panic!("{rule}: {what} is not valid JSON without repeated keys: {error}\n{text}");
        }
        assert!(
            text.contains(rule),
            "{rule}: {what} lacks the rule id: {text}"
        );
    }

    #[test]
    fn every_builtin_rule_alert_round_trips_through_the_store_alerts_and_every_sink() {
        // The check below catches the bug class itself: a rule field named like the alert's own key.
        assert!(serde_json::from_str::<UniqueKeys>(r#"{"a":[{"rule":1,"rule":2}]}"#).is_err());
        let (alerts, generating) = alerts_of_the_builtin_pack();
        let fired: std::collections::BTreeSet<&str> =
            alerts.iter().map(|a| a.rule.as_str()).collect();
        let expected: std::collections::BTreeSet<&str> =
            generating.iter().map(String::as_str).collect();
        assert_eq!(
            fired, expected,
            "every alerting rule of the pack must fire here; add the incident for a new rule"
        );

        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_writer(dir.path()).unwrap();
        for alert in &alerts {
            crate::store::alerts::insert(&conn, alert).unwrap();
        }
        for alert in &alerts {
            let rule = alert.rule.as_str();
            let filter = crate::store::alerts::AlertFilter {
                rule: Some(rule.to_string()),
                limit: 1000,
                ..Default::default()
            };
            // `alerts --format table` (local): the stored alert, whole, with its deliveries.
            let stored: Vec<Alert> = crate::store::alerts::query(&conn, &filter)
                .unwrap()
                .into_iter()
                .filter(|a| a.id == alert.id)
                .collect();
            assert_eq!(
                stored,
                vec![alert.clone()],
                "{rule}: the store lost or changed it"
            );
            let rows: Vec<crate::query::local::AlertRow> =
                crate::query::local::alerts(&conn, &filter)
                    .unwrap()
                    .into_iter()
                    .filter(|row| row.alert.id == alert.id)
                    .collect();
            let mut table = Vec::new();
            crate::present::table::alerts(&mut table, &rows).unwrap();
            let table = String::from_utf8(table).unwrap();
            assert!(
                table.contains(rule) && table.contains(&alert.id),
                "{rule}: table lacks the row: {table}"
            );
            // `alerts --format json` and `--format ocsf`: what the local store and the query service send.
            let objects: Vec<_> = rows
                .iter()
                .map(|row| crate::present::json::alert_object(row).unwrap())
                .collect();
            assert_eq!(objects.len(), 1, "{rule}: `alerts --format json` hides it");
            // The row as serde writes it, before a map could fold a repeated key away.
            let row = serde_json::to_string(&rows[0]).unwrap();
            assert_deliverable("alerts --format json", rule, &row);
            let mut object = objects[0].clone();
            assert!(object.remove("deliveries").is_some(), "{rule}: {object:?}");
            assert_eq!(
                serde_json::from_value::<Alert>(Json::Object(object)).unwrap(),
                *alert,
                "{rule}: json"
            );
            let ocsf = crate::present::ocsf::alert(&objects[0])
                .unwrap()
                .to_string();
            assert_deliverable("alerts --format ocsf", rule, &ocsf);
            // Every sink's payload.
            for (sink, text) in crate::hooks::rendered(alert) {
                match sink {
                    "email subject" => assert!(text.contains(rule), "{rule}: {text}"),
                    "email message" => assert!(text.contains(&alert.id), "{rule}: {text}"),
                    "email text" => {
                        let start = text.find("\n{").expect("the alert's JSON") + 1;
                        assert_deliverable(sink, rule, &text[start..]);
                        let mailed: Alert = serde_json::from_str(&text[start..]).unwrap();
                        assert_eq!(mailed, *alert, "{rule}: e-mail");
                    }
                    _ => {
                        assert_deliverable(sink, rule, &text);
                        let mut sent: Map<String, Json> = serde_json::from_str(&text).unwrap();
                        assert_eq!(sent.remove("alert_id"), Some(Json::from(alert.id.clone())));
                        assert!(sent.remove("delivery_id").is_some(), "{rule}: {sink}");
                        if sink == "json" {
                            let sent: Alert = serde_json::from_value(Json::Object(sent)).unwrap();
                            assert_eq!(sent, *alert, "{rule}: json webhook");
                        }
                    }
                }
            }
        }
    }
}
