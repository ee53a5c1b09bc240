//! A compact Sigma subset: detection selections with field modifiers, and their conditions.
//!
//! Supported: selections as maps (every field matches) or lists of maps (any map matches); a list
//! of values means any of them (all of them with `|all`); modifiers `contains`, `startswith`,
//! `endswith`, `re`, `gt`, `gte`, `lt`, `lte`, `exists`, `cased`, `all` and `expand` (a `%name%`
//! placeholder from the configuration); `*` and `?` wildcards in plain values; `null` for a missing
//! or empty field. Matching is case-insensitive unless `|cased`. Conditions use `and`, `or`, `not`,
//! parentheses, `1 of sel*`, `all of sel*`, `N of ...` and `them`. Keyword (field-less) selections
//! are refused: bannin events are structured, and a keyword search over them would be guesswork.

use std::collections::HashMap;

use regex::Regex;
use yaml_serde::{Mapping, Value as Yaml};

use super::fields::{Field, Subject, Val};
use super::rules::Params;

/// Why a rule's detection cannot be compiled; the caller adds the rule id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SigmaError {
    #[error("unknown field {0:?} (see rules/README.md for the field names)")]
    UnknownField(String),
    #[error("unknown modifier {0:?}")]
    UnknownModifier(String),
    #[error(
        "selection {0:?} is not a map or a list of maps (keyword selections are not supported)"
    )]
    BadSelection(String),
    #[error("value {0:?} does not suit the modifier")]
    BadValue(String),
    #[error("bad regular expression {pattern:?}: {error}")]
    BadRegex {
        pattern: String,
        error: regex::Error,
    },
    #[error("unknown placeholder %{0}%")]
    UnknownPlaceholder(String),
    #[error("condition: {0}")]
    Condition(String),
    #[error("detection has no condition")]
    NoCondition,
}

#[derive(Debug)]
enum Matcher {
    /// Plain equality; the pattern is lowercased unless `cased`.
    Eq(String),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Regex(Regex),
    Num(Cmp, i64),
    Bool(bool),
    /// The field is missing or empty (`null` in YAML).
    Null,
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    pub(crate) fn holds(self, value: i64, bound: i64) -> bool {
        match self {
            Cmp::Eq => value == bound,
            Cmp::Gt => value > bound,
            Cmp::Gte => value >= bound,
            Cmp::Lt => value < bound,
            Cmp::Lte => value <= bound,
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Cmp> {
        match name {
            "eq" => Some(Cmp::Eq),
            "gt" => Some(Cmp::Gt),
            "gte" => Some(Cmp::Gte),
            "lt" => Some(Cmp::Lt),
            "lte" => Some(Cmp::Lte),
            _ => None,
        }
    }
}

fn eq_ci(a: &str, b: &str, cased: bool) -> bool {
    if cased {
        a == b
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

fn starts_ci(hay: &str, needle: &str, cased: bool) -> bool {
    hay.len() >= needle.len()
        && hay.is_char_boundary(needle.len())
        && eq_ci(&hay[..needle.len()], needle, cased)
}

fn ends_ci(hay: &str, needle: &str, cased: bool) -> bool {
    let start = hay.len().wrapping_sub(needle.len());
    hay.len() >= needle.len() && hay.is_char_boundary(start) && eq_ci(&hay[start..], needle, cased)
}

fn contains_ci(hay: &str, needle: &str, cased: bool) -> bool {
    if cased {
        return hay.contains(needle);
    }
    let needle = needle.as_bytes();
    needle.is_empty()
        || hay
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Matcher {
    fn matches(&self, value: Val<'_>, cased: bool) -> bool {
        match (self, value) {
            (Matcher::Eq(p), Val::Str(s)) => eq_ci(s, p, cased),
            (Matcher::Eq(p), Val::Num(n)) => p.parse::<i64>().is_ok_and(|p| p == n),
            (Matcher::Eq(p), Val::Bool(b)) => {
                p.eq_ignore_ascii_case(if b { "true" } else { "false" })
            }
            (Matcher::Contains(p), Val::Str(s)) => contains_ci(s, p, cased),
            (Matcher::StartsWith(p), Val::Str(s)) => starts_ci(s, p, cased),
            (Matcher::EndsWith(p), Val::Str(s)) => ends_ci(s, p, cased),
            (Matcher::Regex(re), Val::Str(s)) => re.is_match(s),
            (Matcher::Num(cmp, bound), Val::Num(n)) => cmp.holds(n, *bound),
            (Matcher::Num(cmp, bound), Val::Str(s)) => {
                s.parse::<i64>().is_ok_and(|n| cmp.holds(n, *bound))
            }
            (Matcher::Bool(p), Val::Bool(b)) => *p == b,
            _ => false,
        }
    }
}

/// One `field|modifiers: values` line of a selection.
#[derive(Debug)]
struct FieldTest {
    field: Field,
    matchers: Vec<Matcher>,
    /// Every value must match (`|all`) instead of any.
    all: bool,
    cased: bool,
}

impl FieldTest {
    fn matches(&self, subject: Subject<'_>) -> bool {
        let test = |m: &Matcher| match m {
            Matcher::Null => !self.field.any(subject, &mut |v| match v {
                Val::Str(s) => !s.is_empty(),
                _ => true,
            }),
            Matcher::Exists(want) => self.field.any(subject, &mut |_| true) == *want,
            m => self.field.any(subject, &mut |v| m.matches(v, self.cased)),
        };
        if self.all {
            self.matchers.iter().all(test)
        } else {
            self.matchers.iter().any(test)
        }
    }
}

/// A named selection: any of its maps, each map all of its field tests.
#[derive(Debug)]
struct Selection {
    name: String,
    alternatives: Vec<Vec<FieldTest>>,
}

impl Selection {
    fn matches(&self, subject: Subject<'_>) -> bool {
        self.alternatives
            .iter()
            .any(|tests| tests.iter().all(|t| t.matches(subject)))
    }

    /// The kinds this selection can match, when it pins `kind` with plain values in every map.
    fn pinned_kinds(&self) -> Option<Vec<String>> {
        let mut kinds = Vec::new();
        for tests in &self.alternatives {
            let test = tests
                .iter()
                .find(|t| t.field == Field::Kind && !t.all && !t.cased)?;
            for m in &test.matchers {
                match m {
                    Matcher::Eq(kind) => kinds.push(kind.clone()),
                    _ => return None,
                }
            }
        }
        Some(kinds)
    }
}

#[derive(Debug)]
enum Cond {
    Sel(usize),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    /// At least `n` of these selections (`all of` sets n to their number).
    AtLeast(usize, Vec<usize>),
}

/// A compiled `detection` block.
#[derive(Debug)]
pub(crate) struct Detection {
    selections: Vec<Selection>,
    condition: Cond,
}

impl Detection {
    pub(crate) fn compile(block: &Mapping, params: &Params) -> Result<Detection, SigmaError> {
        let mut selections = Vec::new();
        let mut condition = None;
        for (key, value) in block {
            let name = key.as_str().unwrap_or_default().to_string();
            if name == "condition" {
                condition = Some(match value {
                    Yaml::String(text) => text.clone(),
                    Yaml::Sequence(list) => list
                        .iter()
                        .filter_map(|v| v.as_str())
                        .map(|c| format!("({c})"))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    _ => return Err(SigmaError::Condition("not a string".into())),
                });
                continue;
            }
            let alternatives = match value {
                Yaml::Mapping(map) => vec![compile_map(map, params)?],
                Yaml::Sequence(list) if list.iter().all(|v| v.is_mapping()) => list
                    .iter()
                    .filter_map(|v| v.as_mapping())
                    .map(|map| compile_map(map, params))
                    .collect::<Result<_, _>>()?,
                _ => return Err(SigmaError::BadSelection(name)),
            };
            selections.push(Selection { name, alternatives });
        }
        let text = condition.ok_or(SigmaError::NoCondition)?;
        let names: Vec<&str> = selections.iter().map(|s| s.name.as_str()).collect();
        let condition = Parser::new(&text, &names).parse()?;
        Ok(Detection {
            selections,
            condition,
        })
    }

    pub(crate) fn matches(&self, subject: Subject<'_>) -> bool {
        self.eval(&self.condition, subject)
    }

    fn eval(&self, cond: &Cond, subject: Subject<'_>) -> bool {
        match cond {
            Cond::Sel(i) => self.selections[*i].matches(subject),
            Cond::Not(inner) => !self.eval(inner, subject),
            Cond::And(all) => all.iter().all(|c| self.eval(c, subject)),
            Cond::Or(any) => any.iter().any(|c| self.eval(c, subject)),
            Cond::AtLeast(n, sels) => {
                let mut hits = 0;
                for i in sels {
                    if self.selections[*i].matches(subject) {
                        hits += 1;
                        if hits >= *n {
                            return true;
                        }
                    }
                }
                false
            }
        }
    }

    /// The event kinds that can possibly match, if the condition pins them; lets the engine skip
    /// the rule for every other kind.
    pub(crate) fn kinds(&self) -> Option<Vec<String>> {
        self.cond_kinds(&self.condition)
    }

    fn cond_kinds(&self, cond: &Cond) -> Option<Vec<String>> {
        match cond {
            Cond::Sel(i) => self.selections[*i].pinned_kinds(),
            Cond::Not(_) => None,
            Cond::And(all) => all.iter().find_map(|c| self.cond_kinds(c)),
            Cond::Or(any) => {
                let mut kinds = Vec::new();
                for c in any {
                    kinds.extend(self.cond_kinds(c)?);
                }
                Some(kinds)
            }
            Cond::AtLeast(n, sels) if *n == sels.len() => {
                sels.iter().find_map(|i| self.selections[*i].pinned_kinds())
            }
            Cond::AtLeast(..) => None,
        }
    }
}

fn compile_map(map: &Mapping, params: &Params) -> Result<Vec<FieldTest>, SigmaError> {
    let mut tests = Vec::new();
    for (key, value) in map {
        let key = key.as_str().unwrap_or_default();
        let mut parts = key.split('|');
        let name = parts.next().unwrap_or_default();
        let field = Field::parse(name).ok_or_else(|| SigmaError::UnknownField(name.into()))?;
        let mut modifier = None;
        let (mut all, mut cased, mut expand) = (false, false, false);
        for part in parts {
            match part {
                "all" => all = true,
                "cased" => cased = true,
                "expand" => expand = true,
                "contains" | "startswith" | "endswith" | "re" | "gt" | "gte" | "lt" | "lte"
                | "exists" => modifier = Some(part),
                other => return Err(SigmaError::UnknownModifier(other.into())),
            }
        }
        let mut values = Vec::new();
        match value {
            Yaml::Sequence(list) => values.extend(list.iter().cloned()),
            other => values.push(other.clone()),
        }
        if expand {
            values = expand_placeholders(values, params)?;
        }
        let matchers = values
            .iter()
            .map(|v| compile_value(modifier, v, cased))
            .collect::<Result<Vec<_>, _>>()?;
        tests.push(FieldTest {
            field,
            matchers,
            all,
            cased,
        });
    }
    Ok(tests)
}

fn expand_placeholders(values: Vec<Yaml>, params: &Params) -> Result<Vec<Yaml>, SigmaError> {
    let mut out = Vec::new();
    for value in values {
        match value.as_str().and_then(placeholder) {
            Some(name) => {
                let param = params
                    .get(name)
                    .ok_or_else(|| SigmaError::UnknownPlaceholder(name.into()))?;
                out.extend(param.to_yaml());
            }
            None => out.push(value),
        }
    }
    Ok(out)
}

/// `%name%` → `name`.
pub(crate) fn placeholder(text: &str) -> Option<&str> {
    text.strip_prefix('%')?.strip_suffix('%')
}

fn scalar_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compile_value(modifier: Option<&str>, value: &Yaml, cased: bool) -> Result<Matcher, SigmaError> {
    let bad = || SigmaError::BadValue(format!("{value:?}"));
    if value.is_null() {
        return Ok(Matcher::Null);
    }
    let fold = |s: String| if cased { s } else { s.to_ascii_lowercase() };
    match modifier {
        Some("exists") => value.as_bool().map(Matcher::Exists).ok_or_else(bad),
        Some(op @ ("gt" | "gte" | "lt" | "lte")) => {
            let bound = value
                .as_i64()
                .or_else(|| value.as_u64().map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
                .ok_or_else(bad)?;
            Ok(Matcher::Num(Cmp::parse(op).ok_or_else(bad)?, bound))
        }
        Some("re") => {
            let pattern = value.as_str().ok_or_else(bad)?;
            let regex = if cased {
                Regex::new(pattern)
            } else {
                Regex::new(&format!("(?i){pattern}"))
            };
            regex
                .map(Matcher::Regex)
                .map_err(|error| SigmaError::BadRegex {
                    pattern: pattern.into(),
                    error,
                })
        }
        Some(op) => {
            let text = fold(scalar_text(value).ok_or_else(bad)?);
            Ok(match op {
                "contains" => Matcher::Contains(text),
                "startswith" => Matcher::StartsWith(text),
                _ => Matcher::EndsWith(text),
            })
        }
        None => match value {
            Yaml::Bool(b) => Ok(Matcher::Bool(*b)),
            Yaml::Number(_) => Ok(Matcher::Num(Cmp::Eq, value.as_i64().ok_or_else(bad)?)),
            _ => {
                let text = scalar_text(value).ok_or_else(bad)?;
                if text.contains(['*', '?']) {
                    wildcard(&text, cased)
                } else {
                    Ok(Matcher::Eq(fold(text)))
                }
            }
        },
    }
}

/// Sigma's plain-value wildcards: `*` any run, `?` one character, `\` escapes.
fn wildcard(text: &str, cased: bool) -> Result<Matcher, SigmaError> {
    let mut pattern = String::from(if cased { "^" } else { "(?i)^" });
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => pattern.push_str(".*"),
            '?' => pattern.push('.'),
            '\\' => {
                if let Some(next) = chars.next() {
                    pattern.push_str(&regex::escape(&next.to_string()));
                }
            }
            c => pattern.push_str(&regex::escape(&c.to_string())),
        }
    }
    pattern.push('$');
    Regex::new(&pattern)
        .map(Matcher::Regex)
        .map_err(|error| SigmaError::BadRegex {
            pattern: text.into(),
            error,
        })
}

/// Recursive descent over `or` < `and` < `not` < atoms.
struct Parser<'a> {
    tokens: Vec<String>,
    pos: usize,
    names: &'a [&'a str],
    index: HashMap<&'a str, usize>,
}

impl<'a> Parser<'a> {
    fn new(text: &str, names: &'a [&'a str]) -> Self {
        let spaced = text.replace('(', " ( ").replace(')', " ) ");
        Parser {
            tokens: spaced.split_whitespace().map(str::to_string).collect(),
            pos: 0,
            names,
            index: names.iter().enumerate().map(|(i, n)| (*n, i)).collect(),
        }
    }

    fn parse(mut self) -> Result<Cond, SigmaError> {
        let cond = self.or()?;
        match self.tokens.get(self.pos) {
            None => Ok(cond),
            Some(extra) => Err(SigmaError::Condition(format!("unexpected {extra:?}"))),
        }
    }

    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn or(&mut self) -> Result<Cond, SigmaError> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some("or") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Cond::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Cond, SigmaError> {
        let mut parts = vec![self.not()?];
        while self.peek() == Some("and") {
            self.pos += 1;
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Cond::And(parts)
        })
    }

    fn not(&mut self) -> Result<Cond, SigmaError> {
        if self.peek() == Some("not") {
            self.pos += 1;
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Cond, SigmaError> {
        let token = self
            .next()
            .ok_or_else(|| SigmaError::Condition("ends too early".into()))?;
        if token == "(" {
            let inner = self.or()?;
            return match self.next().as_deref() {
                Some(")") => Ok(inner),
                _ => Err(SigmaError::Condition("missing )".into())),
            };
        }
        if self.peek() == Some("of") {
            self.pos += 1;
            let target = self
                .next()
                .ok_or_else(|| SigmaError::Condition("nothing after of".into()))?;
            let sels = self.matching(&target)?;
            let n = match token.as_str() {
                "all" => sels.len(),
                "any" => 1,
                n => n
                    .parse::<usize>()
                    .map_err(|_| SigmaError::Condition(format!("bad quantifier {n:?}")))?,
            };
            return Ok(Cond::AtLeast(n, sels));
        }
        self.index
            .get(token.as_str())
            .map(|i| Cond::Sel(*i))
            .ok_or_else(|| SigmaError::Condition(format!("unknown selection {token:?}")))
    }

    fn matching(&self, target: &str) -> Result<Vec<usize>, SigmaError> {
        let sels: Vec<usize> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, name)| {
                let name: &str = name;
                match target {
                    "them" => !name.starts_with('_'),
                    t => match t.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => name == t,
                    },
                }
            })
            .map(|(i, _)| i)
            .collect();
        if sels.is_empty() {
            return Err(SigmaError::Condition(format!(
                "{target:?} names no selection"
            )));
        }
        Ok(sels)
    }
}

#[cfg(test)]
mod tests {
    //! Sigma rules of the pack on their incidents, and the subset's semantics.

    use crate::detect::testkit::*;

    #[test]
    fn export_by_an_account_outside_the_list_alerts() {
        let config = DetectConfig {
            export_accounts: vec!["backup".into()],
            ..DetectConfig::default()
        };
        let mut fleet = Fleet::new(config);
        let updates = fleet.send("db1", 0, export_query("sales_app", "copy_to_file"));
        assert_eq!(rules_of(&updates), vec!["db-export-unlisted-account"]);
        assert_eq!(
            new_alerts(&updates)[0].fields["export_method"],
            "copy_to_file"
        );
        assert!(
            fleet
                .send("db1", 5, export_query("backup", "dump_tool"))
                .is_empty()
        );
        assert!(
            fleet
                .send("db1", 6, export_query("sales_app", ""))
                .is_empty()
        );
    }

    #[test]
    fn document_viewer_starting_a_shell_alerts_with_its_ancestry() {
        let mut fleet = Fleet::default();
        let shell = process(
            8001,
            "/usr/bin/bash",
            "sato",
            &[
                "/usr/lib/libreoffice/program/soffice.bin",
                "/usr/bin/gnome-shell",
            ],
        );
        let updates = fleet.send("pc7", 0, start(shell));
        assert_eq!(rules_of(&updates), vec!["document-spawns-shell"]);
        let alert = new_alerts(&updates)[0];
        assert_eq!(
            alert.fields["parent_exe"],
            "/usr/lib/libreoffice/program/soffice.bin"
        );
        assert_eq!(alert.fields["ancestry"][1]["exe"], "/usr/bin/gnome-shell");

        // A python payload two levels below a mail client, on Windows paths.
        let payload = process(
            9001,
            "C:\\Users\\sato\\AppData\\python.exe",
            "sato",
            &[
                "C:\\Windows\\System32\\cmd.exe",
                "C:\\Program Files\\Microsoft Office\\OUTLOOK.EXE",
            ],
        );
        let updates = fleet.send("pc8", 0, start(payload));
        assert_eq!(rules_of(&updates), vec!["document-spawns-shell"]);

        // Shells under terminals and builds, and viewers under shells, are ordinary.
        let quiet = [
            process(
                10,
                "/usr/bin/bash",
                "sato",
                &["/usr/bin/gnome-terminal-server"],
            ),
            process(
                11,
                "/usr/bin/python3.12",
                "dev",
                &["/usr/bin/make", "/usr/bin/bash"],
            ),
            process(12, "/usr/bin/evince", "sato", &["/usr/bin/bash"]),
            process(13, "/usr/bin/ssh", "sato", &["/usr/bin/thunderbird"]),
        ];
        for who in quiet {
            let exe = who.exe.clone();
            assert!(fleet.send("pc7", 5, start(who)).is_empty(), "{exe}");
        }
    }

    #[test]
    fn sigma_conditions_modifiers_and_correlations_behave_as_specified() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.yml"),
            r#"
title: wildcard and all
id: t-wild
detection:
  sel_a:
    kind: process.start
    cmdline|contains|all: ['curl', '|', 'sh']
  sel_b:
    exe: '*/nc*'
  filter:
    user: root
  empty:
    cwd: null
  condition: (1 of sel_* and not filter) or (all of sel_* and empty)
dedup-by: [exe]
---
title: case
id: t-cased
detection:
  sel:
    kind: process.start
    exe|endswith|cased: /CURL
  condition: sel
---
title: tries
id: t-tries
generate: false
detection:
  sel:
    kind: db.connect
    failed: true
  condition: sel
---
title: many failed logins
id: t-count
correlation:
  type: event_count
  rules: [t-tries]
  group-by: [client_addr]
  timespan: 5m
  condition:
    gte: 3
---
title: many users
id: t-users
correlation:
  type: value_count
  rules: [t-tries]
  timespan: 1h
  condition:
    field: db_user
    gt: 2
---
title: both
id: t-both
correlation:
  type: temporal
  rules: [t-tries, t-cased]
  timespan: 1h
"#,
        )
        .unwrap();
        let config = DetectConfig {
            builtin_rules: false,
            rules: vec![dir.path().to_path_buf()],
            ..DetectConfig::default()
        };
        let mut fleet = Fleet::new(config);
        let with = |exe: &str, cmdline: &str, user: &str| {
            let mut p = process(50, exe, user, &[]);
            p.cmdline = cmdline.into();
            p
        };
        let mut cases = vec![
            (
                with("/usr/bin/curl", "curl http://x | sh", "sato"),
                vec!["t-wild"],
            ),
            (with("/usr/bin/curl", "curl http://x | sh", "root"), vec![]),
            (with("/usr/bin/curl", "curl http://x", "sato"), vec![]),
            (with("/usr/bin/ncat", "ncat -e", "sato"), vec!["t-wild"]),
            (with("/usr/bin/CURL", "CURL", "root"), vec!["t-cased"]),
            (with("/usr/bin/curl", "curl", "root"), vec![]),
        ];
        for (i, (who, expected)) in cases.drain(..).enumerate() {
            let exe = who.exe.clone();
            let updates = fleet.send("pc1", i as i64, start(who));
            assert_eq!(rules_of(&updates), expected, "{exe}");
        }
        // `all of sel_*` with an empty cwd: curl|sh from root matches once cwd is empty.
        let Body::Process(mut event) = start(with("/usr/bin/nc", "curl x | sh", "root")) else {
            unreachable!()
        };
        event.cwd = String::new();
        assert_eq!(
            rules_of(&fleet.send("pc1", 10, event.into())),
            vec!["t-wild"]
        );

        let failed = |user: &str, client: &str| {
            let mut db = DbEvent::new(DbAction::Connect, "mariadb");
            db.db_user = user.into();
            db.client_addr = client.into();
            db.failed = true;
            Body::from(db)
        };
        let mut rules = Vec::new();
        for (i, (user, client)) in [
            ("a", "10.0.0.1"),
            ("b", "10.0.0.2"),
            ("a", "10.0.0.1"),
            ("c", "10.0.0.3"),
            ("a", "10.0.0.1"),
        ]
        .into_iter()
        .enumerate()
        {
            rules.push(rules_of(&fleet.send(
                "db1",
                100 + i as i64,
                failed(user, client),
            )));
        }
        // The fourth try is the third distinct user, the fifth the third try from one client.
        // The first completes t-both with the earlier CURL start.
        assert_eq!(
            rules,
            vec![
                vec!["t-both"],
                vec![],
                vec![],
                vec!["t-users"],
                vec!["t-count"]
            ]
        );
    }
}
