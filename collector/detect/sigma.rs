//! A Sigma engine for one event at a time: detection selections with field modifiers, and their
//! conditions, in bannin's own field names or in Sigma's standard Linux taxonomy
//! ([`super::taxonomy`]).
//!
//! Supported: selections as maps (every field matches) or lists of maps (any map matches); a list
//! of values means any of them (all of them with `|all`); modifiers `contains`, `startswith`,
//! `endswith`, `re` (with `i`, `m`, `s`), `cidr`, `windash`, `gt`, `gte`, `lt`, `lte`, `exists`,
//! `cased`, `all` and `expand` (a `%name%` placeholder from the configuration); `*` and `?`
//! wildcards in every string value, `\` escaping them as Sigma specifies; `null` for a missing or
//! empty field. Strings compare case-insensitively unless `|cased`. Conditions use `and`, `or`,
//! `not`, parentheses, `1 of sel*`, `all of sel*`, `N of ...` and `them`. Keyword (field-less)
//! selections are refused: bannin events are structured, and a keyword search over them would be
//! guesswork.
//!
//! A rule file may be hostile: regular expressions are compiled within a size limit (and the
//! `regex` crate matches in linear time), conditions nest at most [`CONDITION_DEPTH`] deep and
//! `windash` expands at most three dashes, so a rule costs bounded time and memory to load and run.

use std::collections::HashMap;
use std::net::IpAddr;

use regex::{Regex, RegexBuilder};
use yaml_serde::{Mapping, Value as Yaml};

use super::fields::{Field, Subject, Val};
use super::rules::Params;
use super::taxonomy::Taxonomy;

/// The most memory one compiled regular expression may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// How deep parentheses and `not`s may nest in a condition.
const CONDITION_DEPTH: usize = 64;
/// How many dashes of one value `windash` expands (5^3 variants), as pySigma allows.
const WINDASH_MAX: usize = 3;

/// Why a rule's detection cannot be compiled; the caller adds the rule id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SigmaError {
    /// An unknown field, or one bannin's events do not carry (the message says which).
    #[error("{0}")]
    Field(String),
    #[error("unsupported modifier {0:?}")]
    UnsupportedModifier(String),
    #[error("unsupported modifier {0:?} (not a Sigma modifier)")]
    UnknownModifier(String),
    #[error("unsupported modifier combination {0}")]
    ModifierCombination(String),
    #[error(
        "selection {0:?} is not a map or a list of maps (keyword selections are not supported)"
    )]
    BadSelection(String),
    #[error("detection key {0} is not text")]
    KeyNotText(String),
    #[error("value {0} does not suit the modifier")]
    BadValue(String),
    #[error("bad regular expression {pattern:?}: {error}")]
    BadRegex { pattern: String, error: String },
    #[error("unknown placeholder %{0}%")]
    UnknownPlaceholder(String),
    #[error("condition: {0}")]
    Condition(String),
    #[error("detection has no condition")]
    NoCondition,
}

/// Sigma's modifiers that bannin does not implement (they transform values for Windows or
/// encoded logs, compare fields with each other, or pick parts of timestamps).
const UNSUPPORTED_MODIFIERS: &[&str] = &[
    "base64",
    "base64offset",
    "utf16",
    "utf16le",
    "utf16be",
    "wide",
    "fieldref",
    "neq",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
];

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
    /// An address inside a network (`|cidr`).
    Cidr(IpAddr, u8),
    /// Any value at all (`*`, `contains: ''`).
    Any,
    /// One of several spellings of one value (`|windash`).
    AnyOf(Vec<Matcher>),
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

/// Whether `ip` lies in `net/bits`; an IPv4 address is never inside an IPv6 network.
fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            (u128::from(u32::from(ip)), u128::from(u32::from(net)), 32u32)
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => (u128::from(ip), u128::from(net), 128),
        _ => return false,
    };
    let host_bits = width - u32::from(bits);
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    ip & mask == net & mask
}

impl Matcher {
    fn matches(&self, value: Val<'_>, cased: bool) -> bool {
        match (self, value) {
            (Matcher::Num(cmp, bound), Val::Num(n)) => return cmp.holds(n, *bound),
            (Matcher::Num(cmp, bound), Val::Str(s)) => {
                return s.parse::<i64>().is_ok_and(|n| cmp.holds(n, *bound));
            }
            (Matcher::Bool(p), Val::Bool(b)) => return *p == b,
            (Matcher::Bool(p), Val::Str(s)) => {
                return s.eq_ignore_ascii_case(if *p { "true" } else { "false" });
            }
            (Matcher::Num(..) | Matcher::Bool(_), _) => return false,
            (Matcher::AnyOf(all), value) => return all.iter().any(|m| m.matches(value, cased)),
            _ => {}
        }
        // A string pattern meets a number or a flag as its text, as a log's text column would.
        let number;
        let text = match value {
            Val::Str(s) => s,
            Val::Num(n) => {
                number = n.to_string();
                number.as_str()
            }
            Val::Bool(b) => {
                if b {
                    "true"
                } else {
                    "false"
                }
            }
        };
        match self {
            Matcher::Eq(p) => eq_ci(text, p, cased),
            Matcher::Contains(p) => contains_ci(text, p, cased),
            Matcher::StartsWith(p) => starts_ci(text, p, cased),
            Matcher::EndsWith(p) => ends_ci(text, p, cased),
            Matcher::Regex(re) => re.is_match(text),
            Matcher::Cidr(net, bits) => text
                .parse::<IpAddr>()
                .is_ok_and(|ip| in_network(ip, *net, *bits)),
            Matcher::Any => true,
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
    /// The event kinds the rule's log source stands for (Sigma's taxonomy); any kind if none.
    only: Option<&'static [&'static str]>,
}

/// A YAML key as text: a number or a list as a key is a mistake in the rule, never a field.
fn key_text(key: &Yaml) -> Result<&str, SigmaError> {
    key.as_str()
        .ok_or_else(|| SigmaError::KeyNotText(shown(key)))
}

impl Detection {
    pub(crate) fn compile(
        block: &Mapping,
        params: &Params,
        taxonomy: Taxonomy,
    ) -> Result<Detection, SigmaError> {
        let mut selections = Vec::new();
        let mut condition = None;
        for (key, value) in block {
            let name = key_text(key)?.to_string();
            if name == "condition" {
                condition = Some(match value {
                    Yaml::String(text) => text.clone(),
                    Yaml::Sequence(list) => list
                        .iter()
                        .map(|v| {
                            v.as_str().map(|c| format!("({c})")).ok_or_else(|| {
                                SigmaError::Condition("a list item is not text".into())
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(" or "),
                    _ => return Err(SigmaError::Condition("not a string".into())),
                });
                continue;
            }
            let alternatives = match value {
                Yaml::Mapping(map) => vec![compile_map(map, params, taxonomy)?],
                Yaml::Sequence(list) if list.iter().all(|v| v.is_mapping()) => list
                    .iter()
                    .filter_map(|v| v.as_mapping())
                    .map(|map| compile_map(map, params, taxonomy))
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
            only: taxonomy.kinds(),
        })
    }

    pub(crate) fn matches(&self, subject: Subject<'_>) -> bool {
        if let Some(kinds) = self.only {
            if !kinds.contains(&subject.kind()) {
                return false;
            }
        }
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

    /// The event kinds that can possibly match, if the log source or the condition pins them;
    /// lets the engine skip the rule for every other kind.
    pub(crate) fn kinds(&self) -> Option<Vec<String>> {
        if let Some(kinds) = self.only {
            return Some(kinds.iter().map(|k| k.to_string()).collect());
        }
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

/// What a field's modifiers ask of each of its values.
#[derive(Debug, Default)]
struct Modifiers {
    /// `contains`, `startswith`, `endswith`, `re`, `cidr`, a comparison or `exists`.
    op: Option<&'static str>,
    all: bool,
    cased: bool,
    expand: bool,
    windash: bool,
    /// Regular expression flags (`i`, `m`, `s`).
    ignore_case: bool,
    multi_line: bool,
    dot_all: bool,
}

impl Modifiers {
    fn parse<'a>(parts: impl Iterator<Item = &'a str>) -> Result<Modifiers, SigmaError> {
        let mut m = Modifiers::default();
        for part in parts {
            let op = match part {
                "all" => {
                    m.all = true;
                    continue;
                }
                "cased" => {
                    m.cased = true;
                    continue;
                }
                "expand" => {
                    m.expand = true;
                    continue;
                }
                "windash" => {
                    m.windash = true;
                    continue;
                }
                "i" | "ignorecase" => {
                    m.ignore_case = true;
                    continue;
                }
                "m" | "multiline" => {
                    m.multi_line = true;
                    continue;
                }
                "s" | "dotall" => {
                    m.dot_all = true;
                    continue;
                }
                "contains" => "contains",
                "startswith" => "startswith",
                "endswith" => "endswith",
                "re" => "re",
                "cidr" => "cidr",
                "gt" => "gt",
                "gte" => "gte",
                "lt" => "lt",
                "lte" => "lte",
                "exists" => "exists",
                other if UNSUPPORTED_MODIFIERS.contains(&other) => {
                    return Err(SigmaError::UnsupportedModifier(other.into()));
                }
                other => return Err(SigmaError::UnknownModifier(other.into())),
            };
            if let Some(previous) = m.op {
                return Err(SigmaError::ModifierCombination(format!("{previous}|{op}")));
            }
            m.op = Some(op);
        }
        let flags = m.ignore_case || m.multi_line || m.dot_all;
        if flags && m.op != Some("re") {
            return Err(SigmaError::ModifierCombination(
                "i, m and s apply only to re".into(),
            ));
        }
        if let Some(op) =
            m.op.filter(|op| m.windash && !["contains", "startswith", "endswith"].contains(op))
        {
            return Err(SigmaError::ModifierCombination(format!("windash|{op}")));
        }
        Ok(m)
    }
}

fn compile_map(
    map: &Mapping,
    params: &Params,
    taxonomy: Taxonomy,
) -> Result<Vec<FieldTest>, SigmaError> {
    let mut tests = Vec::new();
    for (key, value) in map {
        let key = key_text(key)?;
        let mut parts = key.split('|');
        let name = parts.next().unwrap_or(key);
        let field = taxonomy.field(name).map_err(SigmaError::Field)?;
        let modifiers = Modifiers::parse(parts)?;
        let mut values = Vec::new();
        match value {
            Yaml::Sequence(list) => values.extend(list.iter().cloned()),
            other => values.push(other.clone()),
        }
        if modifiers.expand {
            values = expand_placeholders(values, params)?;
        }
        let matchers = values
            .iter()
            .map(|v| compile_value(&modifiers, v, taxonomy))
            .collect::<Result<Vec<_>, _>>()?;
        tests.push(FieldTest {
            field,
            matchers,
            all: modifiers.all,
            cased: modifiers.cased,
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

/// A value for an error message, on one line and short.
fn shown(value: &Yaml) -> String {
    // JSON is YAML's one-line form.
    let text = serde_json::to_string(value).unwrap_or_else(|_| "?".into());
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

fn regex(pattern: &str, case_insensitive: bool, m: &Modifiers) -> Result<Regex, SigmaError> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .multi_line(m.multi_line)
        .dot_matches_new_line(m.dot_all)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| SigmaError::BadRegex {
            pattern: pattern.chars().take(80).collect(),
            // The crate's message spans lines (the pattern, a caret, the reason).
            error: error
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
}

fn compile_value(m: &Modifiers, value: &Yaml, taxonomy: Taxonomy) -> Result<Matcher, SigmaError> {
    let bad = || SigmaError::BadValue(shown(value));
    if value.is_null() {
        return Ok(Matcher::Null);
    }
    match m.op {
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
            // Sigma's regular expressions are case-sensitive unless `|i`; bannin's own rules have
            // always matched them without case unless `|cased`.
            let ignore_case = match taxonomy {
                Taxonomy::Sigma(_) => m.ignore_case,
                Taxonomy::Bannin => m.ignore_case || !m.cased,
            };
            regex(pattern, ignore_case, m).map(Matcher::Regex)
        }
        Some("cidr") => cidr(value.as_str().ok_or_else(bad)?).ok_or_else(bad),
        op => {
            if op.is_none() {
                match value {
                    Yaml::Bool(b) => return Ok(Matcher::Bool(*b)),
                    Yaml::Number(_) => {
                        return Ok(Matcher::Num(Cmp::Eq, value.as_i64().ok_or_else(bad)?));
                    }
                    _ => {}
                }
            }
            let text = scalar_text(value).ok_or_else(bad)?;
            let spellings = if m.windash {
                windash(&text).ok_or_else(|| {
                    SigmaError::BadValue(format!(
                        "{} (windash expands at most {WINDASH_MAX} dashes)",
                        shown(value)
                    ))
                })?
            } else {
                vec![text]
            };
            let mut matchers = spellings
                .iter()
                .map(|text| {
                    let mut pieces = pieces(text);
                    if matches!(op, Some("contains" | "endswith")) {
                        pieces.insert(0, Piece::Star);
                    }
                    if matches!(op, Some("contains" | "startswith")) {
                        pieces.push(Piece::Star);
                    }
                    string_matcher(&pieces, m.cased, text)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if matchers.len() == 1 {
                matchers.remove(0)
            } else {
                Matcher::AnyOf(matchers)
            })
        }
    }
}

/// `10.0.0.0/8`, `fe80::/10`, or one address.
fn cidr(text: &str) -> Option<Matcher> {
    let (addr, bits) = match text.split_once('/') {
        Some((addr, bits)) => (addr.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(width);
    (bits <= width).then_some(Matcher::Cidr(addr, bits))
}

/// Every spelling of a command-line switch: a `-` or `/` that starts a word (after a non-word
/// character) may be written `-`, `/`, en dash, em dash or horizontal bar, as pySigma expands it.
fn windash(text: &str) -> Option<Vec<String>> {
    const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let chars: Vec<char> = text.chars().collect();
    let positions: Vec<usize> = (0..chars.len())
        .filter(|&i| {
            matches!(chars[i], '-' | '/')
                && (i == 0 || !word(chars[i - 1]))
                && chars.get(i + 1).is_some_and(|&c| word(c))
        })
        .collect();
    if positions.len() > WINDASH_MAX {
        return None;
    }
    let mut out = vec![chars];
    for &at in &positions {
        out = out
            .into_iter()
            .flat_map(|chars| {
                DASHES.iter().map(move |&dash| {
                    let mut chars = chars.clone();
                    chars[at] = dash;
                    chars
                })
            })
            .collect();
    }
    Some(out.into_iter().map(|c| c.into_iter().collect()).collect())
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(char),
    Star,
    One,
}

/// A Sigma string value: `*` any run, `?` one character; `\*`, `\?` and `\\` are the characters
/// themselves, and any other backslash is a backslash.
fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push(Piece::Star),
            '?' => out.push(Piece::One),
            '\\' => match chars.peek() {
                Some(&next @ ('*' | '?' | '\\')) => {
                    chars.next();
                    out.push(Piece::Lit(next));
                }
                _ => out.push(Piece::Lit('\\')),
            },
            c => out.push(Piece::Lit(c)),
        }
    }
    out
}

/// The cheapest matcher for a pattern: equality, a prefix, a suffix or a substring when the only
/// wildcards are runs at its ends, else an anchored regular expression.
fn string_matcher(pieces: &[Piece], cased: bool, text: &str) -> Result<Matcher, SigmaError> {
    let lead = pieces.iter().take_while(|p| **p == Piece::Star).count();
    if lead == pieces.len() {
        return Ok(if lead == 0 {
            Matcher::Eq(String::new())
        } else {
            Matcher::Any
        });
    }
    let trail = pieces
        .iter()
        .rev()
        .take_while(|p| **p == Piece::Star)
        .count();
    let inner = &pieces[lead..pieces.len() - trail];
    let literal: Option<String> = inner
        .iter()
        .map(|p| match p {
            Piece::Lit(c) => Some(*c),
            _ => None,
        })
        .collect();
    if let Some(literal) = literal {
        let literal = if cased {
            literal
        } else {
            literal.to_ascii_lowercase()
        };
        return Ok(match (lead > 0, trail > 0) {
            (false, false) => Matcher::Eq(literal),
            (true, true) => Matcher::Contains(literal),
            (true, false) => Matcher::EndsWith(literal),
            (false, true) => Matcher::StartsWith(literal),
        });
    }
    // Wildcards match across line breaks, as they do in a log store's LIKE.
    let mut pattern = String::from("^");
    for piece in pieces {
        match piece {
            Piece::Star => pattern.push_str(".*"),
            Piece::One => pattern.push('.'),
            Piece::Lit(c) => pattern.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    pattern.push('$');
    let flags = Modifiers {
        dot_all: true,
        ..Modifiers::default()
    };
    regex(&pattern, !cased, &flags)
        .map(Matcher::Regex)
        .map_err(|error| match error {
            SigmaError::BadRegex { error, .. } => SigmaError::BadRegex {
                pattern: text.chars().take(80).collect(),
                error,
            },
            other => other,
        })
}

/// Recursive descent over `or` < `and` < `not` < atoms.
struct Parser<'a> {
    tokens: Vec<String>,
    pos: usize,
    /// Parentheses and `not`s open at this point, at most [`CONDITION_DEPTH`].
    depth: usize,
    names: &'a [&'a str],
    index: HashMap<&'a str, usize>,
}

impl<'a> Parser<'a> {
    fn new(text: &str, names: &'a [&'a str]) -> Self {
        let spaced = text.replace('(', " ( ").replace(')', " ) ");
        Parser {
            tokens: spaced.split_whitespace().map(str::to_string).collect(),
            pos: 0,
            depth: 0,
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
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner)));
        }
        self.atom()
    }

    fn enter(&mut self) -> Result<(), SigmaError> {
        self.depth += 1;
        if self.depth > CONDITION_DEPTH {
            return Err(SigmaError::Condition(format!(
                "nested more than {CONDITION_DEPTH} deep"
            )));
        }
        Ok(())
    }

    fn atom(&mut self) -> Result<Cond, SigmaError> {
        let token = self
            .next()
            .ok_or_else(|| SigmaError::Condition("ends too early".into()))?;
        if token == "(" {
            self.enter()?;
            let inner = self.or()?;
            self.depth -= 1;
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
