//! Loading rules: the built-in pack compiled into the binary, then the operator's files.
//!
//! A rule file holds YAML documents of three shapes, told apart by their keys:
//! - `detection:` a Sigma rule, matched against one event at a time ([`super::sigma`]);
//! - `correlation:` a Sigma correlation over other rules' matches ([`super::correlate`]);
//! - `detector:` a named stateful detector written in Rust ([`super::detectors`]) with its
//!   `parameters`, for rules that need more state than Sigma can say (following a file through
//!   renames until it is deleted, remembering every destination ever seen, noticing silence).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Visitor};
use yaml_serde::{Mapping, Value as Yaml};

use super::DetectError;
use super::config::DetectConfig;
use super::fields::Field;
use super::sigma::{Cmp, Detection, placeholder};
use super::taxonomy::Taxonomy;
use crate::alert::Severity;

/// The largest rule file read; the public rules are a few kilobytes each.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most YAML nodes, and bytes of text, one file may stand for once its aliases are expanded:
/// a few anchors referring to each other can otherwise stand for billions ("billion laughs").
const MAX_NODES: usize = 200_000;
const MAX_TEXT_BYTES: usize = 8 << 20;
/// How deep flow collections (`[...]`, `{...}`) may nest in a rule file.
const MAX_FLOW_DEPTH: usize = 64;
/// How deep `rule_dirs` are walked.
const MAX_DIR_DEPTH: usize = 16;
/// The longest message of a rule error: a hostile file's names are cut short.
const MAX_MESSAGE_CHARS: usize = 300;

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
    /// Sigma's `tags` (ATT&CK techniques and tactics, CVEs...), copied into each alert.
    pub(crate) tags: Vec<String>,
    /// The rule's `level` as written: `informational` is said in the alert, whose severity is low.
    pub(crate) informational: bool,
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
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    logsource: Option<Mapping>,
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

/// What loading one rule of a `rule_dirs` directory came to: loaded, or the one reason it cannot
/// run. A file that cannot be read or parsed at all is one entry without an id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleReport {
    pub(crate) file: PathBuf,
    pub(crate) id: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) outcome: Result<(), String>,
}

/// Loads the rule pack the configuration asks for: built-in rules, then the extra files (a rule with
/// a built-in rule's id replaces it), then the `rule_dirs`, less the disabled ids. A mistake in
/// the built-in pack or a `rules` file is an error; a rule of `rule_dirs` that cannot run is left
/// out and said in the report.
pub(crate) fn load(config: &DetectConfig) -> Result<(Vec<Rule>, Vec<RuleReport>), DetectError> {
    let params = params(config);
    let mut rules: Vec<Rule> = Vec::new();
    let add = |rules: &mut Vec<Rule>, new: Vec<Rule>| {
        for rule in new {
            rules.retain(|r| r.meta.id != rule.meta.id);
            rules.push(rule);
        }
    };
    if config.builtin_rules {
        for (name, text) in BUILTIN {
            add(&mut rules, parse(name, text, &params)?);
        }
    }
    for path in &config.rules {
        for file in rule_files(path)? {
            let text = read_rule_file(&file).map_err(|source| DetectError::Read {
                path: file.clone(),
                source,
            })?;
            add(
                &mut rules,
                parse(&file.display().to_string(), &text, &params)?,
            );
        }
    }
    let mut report = Vec::new();
    for dir in &config.rule_dirs {
        report.extend(load_dir(dir, &params, &mut rules));
    }
    drop_dangling_correlations(&mut rules, &mut report);
    rules.retain(|r| !config.disabled.contains(&r.meta.id));
    Ok((rules, report))
}

/// Adds to `rules` every rule of a directory (or one file) that can run, and reports on each. A
/// rule of such a directory never replaces one already loaded (the built-in pack's are replaced
/// through `rules`), and bannin's stateful detectors are not loaded from it: these directories
/// hold other people's Sigma rules.
pub(crate) fn load_dir(path: &Path, params: &Params, rules: &mut Vec<Rule>) -> Vec<RuleReport> {
    let mut report = Vec::new();
    let mut files = Vec::new();
    let file_failure = |file: &Path, message: String| RuleReport {
        file: file.to_path_buf(),
        id: None,
        title: None,
        outcome: Err(short(&message)),
    };
    if let Err(error) = walk(path, 0, &mut files) {
        report.push(file_failure(path, format!("cannot read: {error}")));
    }
    for file in files {
        let text = match read_rule_file(&file) {
            Ok(text) => text,
            Err(error) => {
                report.push(file_failure(&file, format!("cannot read: {error}")));
                continue;
            }
        };
        let documents = match documents(&text) {
            Ok(documents) => documents,
            Err(error) => {
                report.push(file_failure(
                    &file,
                    format!("not a valid rule document: {error}"),
                ));
                continue;
            }
        };
        for value in documents {
            let id = value.get("id").and_then(|v| v.as_str()).map(short);
            let title = value.get("title").and_then(|v| v.as_str()).map(short);
            let outcome = yaml_serde::from_value::<RawRule>(value)
                .map_err(|e| format!("not a valid rule document: {e}"))
                .and_then(|raw| compile(raw, params))
                .and_then(|rule| {
                    if matches!(rule.body, Body::Detector(_)) {
                        return Err(
                            "bannin detectors are loaded from [detection] rules, not rule_dirs"
                                .into(),
                        );
                    }
                    if rules.iter().any(|r| r.meta.id == rule.meta.id) {
                        return Err(format!(
                            "id {:?} is already a loaded rule's (replace rules through [detection] rules)",
                            rule.meta.id
                        ));
                    }
                    Ok(rule)
                });
            report.push(RuleReport {
                file: file.clone(),
                id,
                title,
                outcome: match outcome {
                    Ok(rule) => {
                        rules.push(rule);
                        Ok(())
                    }
                    Err(message) => Err(short(&message)),
                },
            });
        }
    }
    report
}

/// Correlations of `rule_dirs` whose rules are not loaded cannot run: they are refused, not fatal.
/// (Those of the built-in pack and `rules` files have no report entry; for them a missing rule
/// stays an error when the engine is built.)
pub(crate) fn drop_dangling_correlations(rules: &mut Vec<Rule>, report: &mut [RuleReport]) {
    loop {
        let dangling = rules.iter().enumerate().find_map(|(index, rule)| {
            let Body::Correlation(spec) = &rule.body else {
                return None;
            };
            let missing = spec.rules.iter().find(|reference| {
                !rules.iter().any(|r| {
                    (r.meta.id == **reference || r.name.as_deref() == Some(reference.as_str()))
                        && !matches!(r.body, Body::Correlation(_))
                })
            })?;
            // Reports name rules as `short` cut their ids.
            let id = short(&rule.meta.id);
            let entry = report
                .iter()
                .rposition(|e| e.id.as_deref() == Some(id.as_str()) && e.outcome.is_ok())?;
            Some((index, entry, missing.clone()))
        });
        let Some((index, entry, missing)) = dangling else {
            return;
        };
        report[entry].outcome = Err(short(&format!(
            "correlation: {missing:?} names no loaded Sigma rule or detector"
        )));
        rules.remove(index);
    }
}

/// A message cut to [`MAX_MESSAGE_CHARS`] on one line: names in it come from the rule file.
fn short(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX_MESSAGE_CHARS {
        line
    } else {
        format!(
            "{}...",
            line.chars().take(MAX_MESSAGE_CHARS).collect::<String>()
        )
    }
}

/// The `*.yml`/`*.yaml` files under `path`, sorted, not following links to directories nor
/// entering hidden ones (a repository's `.github`).
fn walk(path: &Path, depth: usize, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        let Ok(kind) = std::fs::symlink_metadata(&entry) else {
            continue;
        };
        if kind.is_dir() {
            if depth + 1 < MAX_DIR_DEPTH {
                // A subdirectory that cannot be read is reported as its own file.
                if let Err(error) = walk(&entry, depth + 1, files) {
                    return Err(std::io::Error::new(
                        error.kind(),
                        format!("{}: {error}", entry.display()),
                    ));
                }
            }
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        ) {
            files.push(entry);
        }
    }
    Ok(())
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

/// A rule file's text: a regular file (never a FIFO or a device, whose read could block the
/// collector), at most [`MAX_FILE_BYTES`], in UTF-8.
fn read_rule_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    // Checked before opening: opening a FIFO waits for a writer. (Whoever could swap the file
    // between the two checks can write the rule directory, and so decide the rules anyway.)
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|error| {
        Error::new(
            ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", error.utf8_error().valid_up_to()),
        )
    })
}

/// Counts the nodes and text a YAML document stands for, aliases expanded, and stops at the
/// limits before anything is built.
struct Measure<'a>(&'a mut (usize, usize));

impl Measure<'_> {
    fn take<E: serde::de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        self.0.0 += 1;
        self.0.1 = self.0.1.saturating_add(bytes);
        if self.0.0 > MAX_NODES || self.0.1 > MAX_TEXT_BYTES {
            return Err(E::custom(format!(
                "stands for more than {MAX_NODES} values or {MAX_TEXT_BYTES} bytes once its aliases are expanded"
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Measure<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Measure<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("YAML")
    }
    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.take(0)
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.take(0)
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.take(0)
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.take(0)
    }
    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        self.take(v.len())
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.take(0)
    }
    fn visit_none<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.take(0)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.take(0)?;
        while seq.next_element_seed(Measure(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.take(0)?;
        while map.next_key_seed(Measure(&mut *self.0))?.is_some() {
            map.next_value_seed(Measure(&mut *self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.take(0)?;
        let (_, variant) = data.variant::<serde::de::IgnoredAny>()?;
        variant.newtype_variant_seed(Measure(&mut *self.0))
    }
}

/// How deep `[` and `{` nest outside quoted scalars and comments: the YAML parser takes time
/// quadratic in that depth (minutes for a 200 KB file of brackets) before its own limit of 128
/// applies, so deeper files are refused first.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote = None;
    let mut comment = false;
    let mut previous = '\n';
    for c in text.chars() {
        match (quote, c) {
            (_, '\n') if comment => comment = false,
            _ if comment => {}
            (None, '#') if previous.is_whitespace() => comment = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = c;
    }
    deepest
}

/// The YAML documents of a rule file, each checked against the size limits before it is built.
fn documents(text: &str) -> Result<Vec<Yaml>, yaml_serde::Error> {
    if flow_depth(text) > MAX_FLOW_DEPTH {
        return Err(<yaml_serde::Error as serde::de::Error>::custom(format!(
            "brackets nest more than {MAX_FLOW_DEPTH} deep"
        )));
    }
    let mut budget = (0, 0);
    for document in yaml_serde::Deserializer::from_str(text) {
        Measure(&mut budget).deserialize(document)?;
    }
    let mut values = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = Yaml::deserialize(document)?;
        if !value.is_null() {
            values.push(value);
        }
    }
    Ok(values)
}

/// Parses every YAML document of one rule file; the first mistake is the error.
pub(crate) fn parse(source: &str, text: &str, params: &Params) -> Result<Vec<Rule>, DetectError> {
    let yaml_error = |error| DetectError::Yaml {
        source_name: source.to_string(),
        error,
    };
    let mut rules = Vec::new();
    for value in documents(text).map_err(yaml_error)? {
        let raw: RawRule = yaml_serde::from_value(value).map_err(yaml_error)?;
        let id = short(&raw.id);
        let rule = compile(raw, params).map_err(|message| DetectError::Rule {
            source_name: source.to_string(),
            rule: id,
            message: short(&message),
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
    let taxonomy = Taxonomy::of(raw.logsource.as_ref()).map_err(|e| e.to_string())?;
    let mut meta = Meta {
        severity: severity(raw.level.as_deref())?,
        informational: raw.level.as_deref() == Some("informational"),
        summary: raw.summary,
        generate: raw.generate.unwrap_or(true),
        tags: raw.tags,
        fields: Vec::new(),
        dedup_by: Vec::new(),
        id: raw.id,
        title: raw.title,
    };
    match taxonomy {
        Taxonomy::Bannin => {
            meta.fields = alert_fields(&raw.fields)?;
            meta.dedup_by = fields(&raw.dedup_by)?;
        }
        // Sigma's `fields` lists what an analyst may want to see, in the rule's taxonomy: the
        // names bannin's events carry are copied (under bannin's names) beside the category's
        // own, the others are left out rather than refusing a rule that can run.
        Taxonomy::Sigma(category) => {
            meta.fields = category.alert_fields().to_vec();
            for name in &raw.fields {
                if let Ok(field) = taxonomy.field(name) {
                    if !meta.fields.contains(&field)
                        && !crate::alert::RESERVED_FIELDS.contains(&field.name())
                    {
                        meta.fields.push(field);
                    }
                }
            }
            meta.dedup_by = if raw.dedup_by.is_empty() {
                category.dedup_by().to_vec()
            } else {
                raw.dedup_by
                    .iter()
                    .map(|n| taxonomy.field(n))
                    .collect::<Result<_, _>>()?
            };
            meta.summary
                .get_or_insert_with(|| category.summary(&meta.title));
        }
    }
    let body = match (raw.detection, raw.correlation, raw.detector) {
        (Some(detection), None, None) => Body::Sigma(
            Detection::compile(&detection, params, taxonomy).map_err(|e| e.to_string())?,
        ),
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
        let key = key
            .as_str()
            .ok_or_else(|| format!("correlation condition key {key:?} is not text"))?;
        if key == "field" {
            let name = value
                .as_str()
                .ok_or_else(|| format!("correlation condition field {value:?} is not text"))?;
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

    /// A Sigma rule in the standard taxonomy with `detection` as given (indented by four).
    fn sigma_rule(id: &str, logsource: &str, detection: &str) -> String {
        format!(
            "title: t {id}\nid: {id}\nlogsource:\n{logsource}\ndetection:\n{detection}\nlevel: high\n"
        )
    }

    #[test]
    fn rule_dirs_report_each_rule_loaded_or_the_one_reason_it_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let linux = "    product: linux\n    category: process_creation";
        let files = [
            (
                "a_ok.yml",
                sigma_rule(
                    "ok",
                    linux,
                    "    sel:\n        Image|endswith: /nc\n    condition: sel",
                ),
                Ok(()),
            ),
            (
                "b_field.yml",
                sigma_rule(
                    "hash",
                    linux,
                    "    sel:\n        Hashes|contains: abc\n    condition: sel",
                ),
                Err("field \"Hashes\" is not carried by bannin's events"),
            ),
            (
                "c_typo.yml",
                sigma_rule(
                    "typo",
                    linux,
                    "    sel:\n        Imagee: /nc\n    condition: sel",
                ),
                Err("unknown field \"Imagee\" for category process_creation"),
            ),
            (
                "d_modifier.yml",
                sigma_rule(
                    "b64",
                    linux,
                    "    sel:\n        CommandLine|base64offset|contains: id\n    condition: sel",
                ),
                Err("unsupported modifier \"base64offset\""),
            ),
            (
                "e_windows.yml",
                sigma_rule(
                    "win",
                    "    product: windows\n    category: process_creation",
                    "    sel:\n        Image|endswith: \\\\cmd.exe\n    condition: sel",
                ),
                Err("unsupported logsource {product: windows, category: process_creation}"),
            ),
            (
                "f_auditd.yml",
                sigma_rule(
                    "auditd",
                    "    product: linux\n    service: auditd",
                    "    sel:\n        type: EXECVE\n    condition: sel",
                ),
                Err("unsupported logsource {product: linux, service: auditd}"),
            ),
            (
                "g_hostname.yml",
                sigma_rule(
                    "dns",
                    "    product: linux\n    category: network_connection",
                    "    sel:\n        DestinationHostname|endswith: .ngrok.io\n    condition: sel",
                ),
                Err("not the DNS names it looked up"),
            ),
            (
                "h_key.yml",
                sigma_rule("key", linux, "    sel:\n        1: x\n    condition: sel"),
                Err("detection key 1 is not text"),
            ),
            (
                "i_keyword.yml",
                sigma_rule(
                    "kw",
                    linux,
                    "    keywords:\n        - evil\n    condition: keywords",
                ),
                Err("keyword selections are not supported"),
            ),
            (
                "j_duplicate.yml",
                sigma_rule("ok", linux, "    sel:\n        Image: /x\n    condition: sel"),
                Err("id \"ok\" is already a loaded rule's"),
            ),
            (
                "k_builtin.yml",
                sigma_rule("chain-tamper", linux, "    sel:\n        Image: /x\n    condition: sel"),
                Err("id \"chain-tamper\" is already a loaded rule's"),
            ),
            (
                "l_detector.yml",
                "title: t\nid: det\ndetector: agent_silent\nparameters:\n  after: 1s\n".to_string(),
                Err("bannin detectors are loaded from [detection] rules, not rule_dirs"),
            ),
            (
                "m_correlation.yml",
                "title: t\nid: corr\ncorrelation:\n  type: event_count\n  rules: [hash]\n  timespan: 1h\n".to_string(),
                Err("correlation: \"hash\" names no loaded Sigma rule or detector"),
            ),
        ];
        for (name, text, _) in &files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let config = DetectConfig::default();
        let report = crate::detect::check_rules(dir.path(), &config);
        assert_eq!(report.len(), files.len(), "{report:?}");
        for (entry, (name, _, expected)) in report.iter().zip(&files) {
            assert!(entry.file.ends_with(name), "{entry:?}");
            match (expected, &entry.outcome) {
                (Ok(()), Ok(())) => {}
                (Err(expected), Err(reason)) => {
                    assert!(reason.contains(expected), "{name}: {reason}")
                }
                _ => panic!("{name}: {:?}", entry.outcome),
            }
        }
        // Loaded at start, the refused rules are left out and the rest runs beside the pack.
        let mut fleet = Fleet::new(DetectConfig {
            rule_dirs: vec![dir.path().to_path_buf()],
            ..DetectConfig::default()
        });
        let who = process(70, "/usr/bin/nc", "sato", &["/usr/bin/bash"]);
        assert_eq!(rules_of(&fleet.send("pc1", 0, start(who))), vec!["ok"]);
        // bannin's own rules refuse a non-text key as plainly, correlations too.
        for (text, expected) in [
            (
                "title: t\nid: k1\ndetection:\n  s:\n    [exe, cmdline]: x\n  condition: s\n",
                "detection key [\"exe\",\"cmdline\"] is not text",
            ),
            (
                "title: t\nid: k2\ndetection:\n  s:\n    exe: x\n  7: s\n  condition: s\n",
                "detection key 7 is not text",
            ),
            (
                "title: t\nid: k3\ndetection:\n  s:\n    exe: x\n  condition: [s, 3]\n",
                "a list item is not text",
            ),
            (
                "title: t\nid: k4\ncorrelation:\n  type: event_count\n  rules: [x]\n  timespan: 1h\n  condition:\n    5: 3\n",
                "correlation condition key",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("r.yml"), text).unwrap();
            let error = Engine::new(&DetectConfig {
                rules: vec![dir.path().join("r.yml")],
                ..DetectConfig::default()
            })
            .err()
            .unwrap()
            .to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn hostile_rule_files_are_one_line_errors_not_crashes_or_hangs() {
        let linux = "    product: linux\n    category: process_creation";
        let laughs = {
            let mut text = String::from(
                "title: lol\nid: lol\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
            );
            for i in 1..10 {
                let p = i - 1;
                text.push_str(&format!("x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]\n"));
            }
            text.into_bytes()
        };
        // Few aliases (under the YAML parser's own limit), each standing for many values.
        let wide = format!(
            "title: t\nid: wide\nx0: &x0 [{}]\nx1: [{}]\n",
            vec!["lol"; 5000].join(", "),
            vec!["*x0"; 1000].join(", ")
        );
        let deep_yaml = format!(
            "title: t\nid: deep\nx: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        // Nesting by indentation: as deep as 1 MiB of spaces allows.
        let mut deep_block = String::from("title: t\nid: deepblock\nx:\n");
        for level in 1..1400 {
            deep_block.push_str(&" ".repeat(level));
            deep_block.push_str("- \n");
        }
        let deep_condition = sigma_rule(
            "deepcond",
            linux,
            &format!(
                "    sel:\n        Image: x\n    condition: {}sel{}",
                "( ".repeat(100_000),
                " )".repeat(100_000)
            ),
        );
        let nots = sigma_rule(
            "nots",
            linux,
            &format!(
                "    sel:\n        Image: x\n    condition: {}sel",
                "not ".repeat(100_000)
            ),
        );
        let huge_regex = sigma_rule(
            "regex",
            linux,
            "    sel:\n        CommandLine|re: '(?:(?:a{1000}){1000}){1000}'\n    condition: sel",
        );
        let lookaround = sigma_rule(
            "look",
            linux,
            "    sel:\n        CommandLine|re: '(?<=x)y'\n    condition: sel",
        );
        let dashes = sigma_rule(
            "dashes",
            linux,
            "    sel:\n        CommandLine|windash|contains: ' -a -b -c -d '\n    condition: sel",
        );
        let wildcards = sigma_rule(
            "stars",
            linux,
            &format!(
                "    sel:\n        CommandLine: '{}'\n    condition: sel",
                "*a?".repeat(100_000)
            ),
        );
        let mut big = sigma_rule(
            "big",
            linux,
            "    sel:\n        Image: x\n    condition: sel",
        );
        big.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("laughs.yml", laughs, "repetition limit exceeded"),
            (
                "wide.yml",
                wide.into_bytes(),
                "once its aliases are expanded",
            ),
            (
                "deep.yml",
                deep_yaml.into_bytes(),
                "brackets nest more than 64 deep",
            ),
            ("deepblock.yml", deep_block.into_bytes(), "recursion limit"),
            (
                "deepcond.yml",
                deep_condition.into_bytes(),
                "nested more than 64 deep",
            ),
            ("nots.yml", nots.into_bytes(), "nested more than 64 deep"),
            ("regex.yml", huge_regex.into_bytes(), "size limit"),
            ("look.yml", lookaround.into_bytes(), "look-around"),
            (
                "dashes.yml",
                dashes.into_bytes(),
                "windash expands at most 3 dashes",
            ),
            ("stars.yml", wildcards.into_bytes(), ""),
            ("big.yml", big.into_bytes(), "larger than 1048576 bytes"),
            (
                "latin1.yml",
                b"title: caf\xe9\nid: x\n".to_vec(),
                "not UTF-8 (byte 10)",
            ),
        ];
        for (name, bytes, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            // As `rule_dirs` (and `rules check`) report it.
            let report = crate::detect::check_rules(dir.path(), &DetectConfig::default());
            assert_eq!(report.len(), 1, "{name}: {report:?}");
            let reason = match &report[0].outcome {
                Err(reason) => reason.clone(),
                // A long pattern of wildcards is no attack: it compiles within the limits.
                Ok(()) if expected.is_empty() => continue,
                Ok(()) => panic!("{name} loaded"),
            };
            assert!(reason.contains(expected), "{name}: {reason}");
            assert!(
                !reason.contains('\n') && reason.len() < 400,
                "{name}: {reason}"
            );
            // As a `rules` file: the collector refuses to start, with one line.
            let error = Engine::new(&DetectConfig {
                rules: vec![path],
                ..DetectConfig::default()
            })
            .err()
            .unwrap_or_else(|| panic!("{name} loaded"));
            let line = bannin::error_line(&anyhow::Error::new(error));
            assert!(
                line.contains(expected) && !line.contains('\n'),
                "{name}: {line}"
            );
        }
        // A FIFO named like a rule is not opened (opening it would wait for a writer).
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.yml");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let report = crate::detect::check_rules(dir.path(), &DetectConfig::default());
        assert_eq!(
            report[0].outcome,
            Err("cannot read: not a regular file".into())
        );
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
