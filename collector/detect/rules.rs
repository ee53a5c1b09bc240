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
