//! The collector's `[detection]` configuration section.

use std::path::PathBuf;
use std::time::Duration;

use bannin::time::duration_str;
use serde::{Deserialize, Serialize};

/// `[detection]`: which rules run, their thresholds, allow-lists and de-duplication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Load the rule pack built into the binary (`rules/` in the repository). Default true.
    pub builtin_rules: bool,
    /// Extra rule files or directories (every `*.yml`/`*.yaml` inside). A rule whose `id` equals a
    /// built-in rule's replaces it. Default none.
    pub rules: Vec<PathBuf>,
    /// Directories (or files) of Sigma rules as published, e.g. SigmaHQ's `rules/linux`, walked
    /// recursively: each rule that can run is loaded, each that cannot is left out with its reason
    /// in the log (`bannin-collector rules check DIR` prints the same report). Default none.
    pub rule_dirs: Vec<PathBuf>,
    /// Rule ids that do not run. Default none.
    pub disabled: Vec<String>,
    /// Repeats of one alert (same rule, same key) within this time raise its `count` instead of
    /// making a new alert. Default "10m".
    #[serde(with = "duration_str")]
    pub dedup_window: Duration,
    /// Database accounts allowed to export (COPY TO, INTO OUTFILE, dump tools) without an alert;
    /// rules see this list as the `%export_accounts%` placeholder. Default none.
    pub export_accounts: Vec<String>,
    /// Address ranges (CIDR, e.g. "203.0.113.0/24") that count as private destinations even
    /// where the agent calls them public: partner networks, the organisation's own public ranges.
    /// Rules see them as `%private_networks%`. Default none.
    pub private_networks: Vec<String>,
    /// Address ranges (CIDR) that count as public destinations even where the agent calls them
    /// private or loopback (a cloud provider's range inside RFC 1918, a test). Where ranges of
    /// both lists hold an address the longer prefix decides, private on a tie; an address in
    /// neither list keeps the agent's `remote_scope`. Rules see them as `%public_networks%`.
    /// Default none.
    pub public_networks: Vec<String>,
    /// Values rules refer to as `%name%` placeholders.
    pub thresholds: Thresholds,
    /// How much state each detector may hold; the oldest entries go first and are counted.
    pub limits: Limits,
    /// Known benign work: an alert matching every key given in one entry is not raised.
    pub allow: Vec<AllowEntry>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            builtin_rules: true,
            rules: Vec::new(),
            rule_dirs: Vec::new(),
            disabled: Vec::new(),
            dedup_window: Duration::from_secs(600),
            export_accounts: Vec::new(),
            private_networks: Vec::new(),
            public_networks: Vec::new(),
            thresholds: Thresholds::default(),
            limits: Limits::default(),
            allow: Vec::new(),
        }
    }
}

/// `[detection.thresholds]`: the numbers the built-in rules use, by placeholder name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Smallest export-like file, in bytes, that counts as a large export. Default 10 MiB.
    pub large_export_min_size: u64,
    /// A large export created and deleted within this time raises an alert. Default "24h".
    #[serde(with = "duration_str")]
    pub export_window: Duration,
    /// A large export rewritten below this size counts as destroyed (truncated). Default 64 KiB.
    pub truncated_below: u64,
    /// Rows read from sensitive tables by one session or user within `bulk_read_window` that count
    /// as a bulk read. Default 10000.
    pub bulk_read_rows: u64,
    /// Window over which rows of sensitive reads are added up, per session, per user, and across
    /// sessions for sources without running totals. Default "1h".
    #[serde(with = "duration_str")]
    pub bulk_read_window: Duration,
    /// A bulk read followed within this time by a large export anywhere raises an alert.
    /// Default "6h".
    #[serde(with = "duration_str")]
    pub bulk_then_export_window: Duration,
    /// A process (or a descendant) that read a large export and connects to a public address
    /// within this time raises `export-read-then-sent`. Default "1h".
    #[serde(with = "duration_str")]
    pub export_sent_window: Duration,
    /// An archive written within this time after an archiver read a large export raises
    /// `export-archived`. Default "10m".
    #[serde(with = "duration_str")]
    pub archive_window: Duration,
    /// An agent that sends nothing for this long is reported silent. Default "60s".
    #[serde(with = "duration_str")]
    pub agent_silent_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            large_export_min_size: 10 * 1024 * 1024,
            export_window: Duration::from_secs(24 * 3600),
            truncated_below: 64 * 1024,
            bulk_read_rows: 10_000,
            bulk_read_window: Duration::from_secs(3600),
            bulk_then_export_window: Duration::from_secs(6 * 3600),
            export_sent_window: Duration::from_secs(3600),
            archive_window: Duration::from_secs(600),
            agent_silent_after: Duration::from_secs(60),
        }
    }
}

/// `[detection.limits]`: caps on detector state, so memory stays bounded under any load. What a
/// cap pushes out raises `detection-state-evicted` naming the host that lost it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Large exports tracked for create-then-delete at once, all hosts together. Default 100000.
    pub tracked_files: usize,
    /// Entries one host may hold in each detector's state (tracked exports, correlation groups,
    /// sessions and users adding up reads, de-duplication): a host that floods pushes out only its
    /// own state. When every cap is full, room is made on the host holding the most. Default 10000.
    pub per_host: usize,
    /// Correlation groups (one per rule and group-by value) held at once; also the sessions and
    /// users whose recent sensitive reads are added up. Default 100000.
    pub correlation_groups: usize,
    /// Matches remembered per correlation group, and reads per session or user. Default 10000.
    pub matches_per_group: usize,
    /// Public destinations remembered as already seen. Default 1000000.
    pub seen_destinations: usize,
    /// Agents whose liveness is tracked. Default 100000.
    pub agents: usize,
    /// Alerts remembered for de-duplication. Default 100000.
    pub dedup_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tracked_files: 100_000,
            per_host: 10_000,
            correlation_groups: 100_000,
            matches_per_group: 10_000,
            seen_destinations: 1_000_000,
            agents: 100_000,
            dedup_entries: 100_000,
        }
    }
}

/// `[[detection.allow]]`: one kind of known benign work. Every key given must match; keys left out
/// match anything. Globs use `*`, `?`, `**` and `{a,b}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowEntry {
    /// Why this work is benign; shown nowhere, kept for the reader.
    pub comment: String,
    /// Rule ids this entry applies to. Default: every rule.
    pub rules: Vec<String>,
    /// Host name glob.
    pub host: Option<String>,
    /// Glob on the acting account: the process user, or the database user for database rules.
    pub user: Option<String>,
    /// Glob on the executable path of the acting process.
    pub exe: Option<String>,
    /// Glob on the file path (any path the alert names: created, renamed to, deleted).
    pub path: Option<String>,
    /// Time of day in UTC, "HH:MM-HH:MM"; a range may wrap past midnight ("23:00-02:00").
    pub hours: Option<String>,
}

#[cfg(test)]
mod tests {
    //! The `[detection]` section.

    use crate::detect::testkit::*;

    #[test]
    fn config_section_parses_with_defaults_and_rejects_unknown_keys() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct CollectorToml {
            detection: DetectConfig,
        }
        let parsed: CollectorToml = toml::from_str(
            r#"
        [detection]
        disabled = ["first-seen-public-destination"]
        dedup_window = "30m"
        [detection.thresholds]
        large_export_min_size = 1048576
        agent_silent_after = "5m"
        [[detection.allow]]
        rules = ["agent-silent"]
        host = "laptop-*"
        "#,
        )
        .unwrap();
        let config = parsed.detection;
        assert_eq!(config.dedup_window, Duration::from_secs(1800));
        assert_eq!(config.thresholds.large_export_min_size, MIB);
        assert_eq!(config.thresholds.export_window, Duration::from_secs(86_400));
        assert_eq!(
            config.thresholds.agent_silent_after,
            Duration::from_secs(300)
        );
        assert!(config.builtin_rules);
        let error = toml::from_str::<CollectorToml>("[detection]\nbulk_rows = 5\n")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("bulk_rows"), "{error}");

        // Thresholds reach the rules: a 2 MiB export is large at a 1 MiB threshold.
        let mut fleet = Fleet::new(config);
        let who = attacker();
        let updates = run(
            &mut fleet,
            vec![
                (
                    "fs2",
                    0,
                    file(FileAction::Create, "/srv/a.csv", Some(0), None, &who),
                ),
                (
                    "fs2",
                    1,
                    file(
                        FileAction::Write,
                        "/srv/a.csv",
                        Some(2 * MIB),
                        Some(csv(1)),
                        &who,
                    ),
                ),
                (
                    "fs2",
                    2,
                    file(FileAction::Delete, "/srv/a.csv", Some(2 * MIB), None, &who),
                ),
                ("pc1", 3, connect("203.0.113.1", "public", &who)),
            ],
        );
        assert_eq!(
            rules_of(&updates),
            vec!["large-export-created-then-deleted"]
        );
    }
}
