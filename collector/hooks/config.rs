//! The `[alerts]` section of the collector's configuration, and its validation into sink settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bannin::backoff::Backoff;
use bannin::time::duration_str;
use lettre::message::Mailbox;
use reqwest::Url;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{HooksError, SinkId};
use crate::alert::{Alert, Severity};

/// `[alerts]`: where alerts are delivered besides the collector's store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// `[[alerts.webhook]]`: HTTP endpoints that receive every alert that passes their filter.
    /// Default: none. `serve --webhook URL` adds JSON-format entries with default settings.
    pub webhook: Vec<WebhookConfig>,
    /// `[alerts.email]`: an SMTP server and the recipients of alert mail. Default: no e-mail.
    pub email: Option<EmailConfig>,
    /// `[alerts.retry]`: how failed deliveries are retried.
    pub retry: RetryConfig,
}

/// One `[[alerts.webhook]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name shown in delivery status and logs; pending deliveries are tied to it, so keep it stable.
    /// Default: `webhook:HOST#HASH`, derived from the URL and format without revealing the URL's path
    /// (chat webhook paths are secrets).
    #[serde(default)]
    pub name: Option<String>,
    /// Where alerts are POSTed: an `http://` or `https://` URL. Required.
    pub url: String,
    /// Body format: `"json"` (the alert object, `Content-Type: application/json`), `"slack"` (a JSON
    /// body with a top-level `text` string, markup escaped, for Slack and Mattermost incoming
    /// webhooks) or `"teams"` (a message with one Adaptive Card, for Microsoft Teams workflows).
    /// Every body also carries `alert_id` and `delivery_id`. Default: `"json"`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Only alerts of at least this severity (`low`, `medium`, `high`, `critical`). Default: `"low"`.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Only alerts of these rule ids; empty means every rule. Default: `[]`.
    #[serde(default)]
    pub rules: Vec<String>,
    /// At most this many requests a minute; further alerts wait (nothing is dropped). 0 = no limit.
    /// Default: 60.
    #[serde(default = "default_webhook_rate")]
    pub rate_per_minute: u32,
    /// How long one request may take, connecting and reading the reply included, before it counts
    /// as failed and is retried. Only the first 4 KiB of a reply are read, and redirects are not
    /// followed (a 3xx is a failed delivery). Default: `"10s"`.
    #[serde(default = "default_webhook_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// A PEM file of extra CA certificates to trust for an `https://` URL (a chat server behind a
    /// private CA), on top of the public web PKI roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl WebhookConfig {
    /// The entry `serve --webhook URL` stands for.
    pub fn from_url(url: String) -> Self {
        WebhookConfig {
            name: None,
            url,
            format: WebhookFormat::Json,
            min_severity: default_min_severity(),
            rules: Vec::new(),
            rate_per_minute: default_webhook_rate(),
            timeout: default_webhook_timeout(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Teams,
}

/// `[alerts.email]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Name shown in delivery status and logs. Default: `email:HOST#HASH`.
    #[serde(default)]
    pub name: Option<String>,
    /// The SMTP server: `smtp://HOST[:PORT]` (STARTTLS required, port 587 by default),
    /// `smtps://HOST[:PORT]` (implicit TLS, port 465) or `smtp+plain://HOST[:PORT]` (no TLS, port 25;
    /// only for a relay on the same host or a trusted network). Required.
    pub smtp: String,
    /// Overrides the TLS mode the scheme implies: `"starttls"`, `"opportunistic"` (STARTTLS when the
    /// server offers it, else plain text), `"implicit"` or `"none"`. Default: from the scheme.
    #[serde(default)]
    pub tls: Option<SmtpTls>,
    /// A PEM file of extra CA certificates to trust for the server (a private mail server's CA), on top
    /// of the public web PKI roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SMTP AUTH user name; needs `password` or `password_file`. Default: no authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP AUTH password. Prefer `password_file`. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// A file whose first line is the SMTP AUTH password; it must not be world-readable nor group- or
    /// world-writable. Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Sender address, e.g. `"bannin@example.jp"` or `"bannin <bannin@example.jp>"`. Required.
    pub from: String,
    /// Recipient addresses; one message goes to all of them. Required, at least one.
    pub to: Vec<String>,
    /// Only alerts of at least this severity. Default: `"low"`.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Only alerts of these rule ids; empty means every rule. Default: `[]`.
    #[serde(default)]
    pub rules: Vec<String>,
    /// At most this many messages a minute; further alerts wait (nothing is dropped). 0 = no limit.
    /// Default: 10.
    #[serde(default = "default_email_rate")]
    pub rate_per_minute: u32,
    /// How long one SMTP command may take before the attempt counts as failed. Default: `"30s"`.
    #[serde(default = "default_email_timeout", with = "duration_str")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Opportunistic,
    Implicit,
    None,
}

/// `[alerts.retry]`: exponential backoff with jitter between attempts of one delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Wait after the first failure; doubled after each further failure. Default: `"2s"`.
    #[serde(with = "duration_str")]
    pub initial: Duration,
    /// The longest wait between two attempts. Deliveries are retried for as long as it takes, except
    /// permanent rejections (see `permanent_after`). Default: `"5m"`.
    #[serde(with = "duration_str")]
    pub max: Duration,
    /// A delivery that has failed this many times, the last time rejected as permanent (HTTP 4xx other
    /// than 408 and 429; SMTP 5xx other than the 53x authentication replies), is marked failed and no
    /// longer retried. Default: 5.
    pub permanent_after: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(300),
            permanent_after: 5,
        }
    }
}

fn default_min_severity() -> Severity {
    Severity::Low
}

fn default_webhook_rate() -> u32 {
    60
}

fn default_email_rate() -> u32 {
    10
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_email_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The rate window: `rate_per_minute` counts attempts within it, and a repeat of an alert already
/// delivered waits until this long after that delivery.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(60);

impl HooksConfig {
    /// Adds `serve --webhook URL` entries (JSON format, default settings). A URL already configured
    /// as a JSON webhook is not added twice, so it is not delivered to twice.
    pub fn add_cli_webhooks<I: IntoIterator<Item = String>>(&mut self, urls: I) {
        for url in urls {
            let known = self
                .webhook
                .iter()
                .any(|w| w.url == url && w.format == WebhookFormat::Json);
            if !known {
                self.webhook.push(WebhookConfig::from_url(url));
            }
        }
    }

    /// Checks every entry and turns it into sink settings.
    pub fn validate(&self) -> Result<Settings, HooksError> {
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return Err(HooksError::Config {
                key: "alerts.retry".into(),
                reason: "initial must be above zero and max at least initial".into(),
            });
        }
        let mut sinks = Vec::new();
        for (index, webhook) in self.webhook.iter().enumerate() {
            sinks.push(validate_webhook(index, webhook)?);
        }
        if let Some(email) = &self.email {
            sinks.push(validate_email(email)?);
        }
        for (i, sink) in sinks.iter().enumerate() {
            if sinks[..i].iter().any(|other| other.id == sink.id) {
                return Err(HooksError::Config {
                    key: "alerts".into(),
                    reason: format!(
                        "two sinks are named {}; give them distinct `name`s",
                        sink.id
                    ),
                });
            }
        }
        Ok(Settings {
            sinks,
            retry: Retry {
                backoff: Backoff {
                    initial: self.retry.initial,
                    max: self.retry.max,
                },
                permanent_after: self.retry.permanent_after.max(1),
            },
            rate_window: RATE_WINDOW,
        })
    }
}

/// Validated settings the delivery worker runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sinks: Vec<SinkSettings>,
    pub retry: Retry,
    /// See [`RATE_WINDOW`]; tests shorten it.
    pub rate_window: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub backoff: Backoff,
    pub permanent_after: u32,
}

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub id: SinkId,
    pub filter: Filter,
    pub rate_per_minute: u32,
    pub kind: SinkKind,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    Webhook {
        url: Url,
        format: WebhookFormat,
        timeout: Duration,
        extra_roots_pem: Option<Vec<u8>>,
    },
    Email(EmailSettings),
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub extra_roots_pem: Option<Vec<u8>>,
    pub credentials: Option<(String, String)>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub timeout: Duration,
}

/// Which alerts a sink wants.
#[derive(Debug, Clone)]
pub struct Filter {
    pub min_severity: Severity,
    pub rules: Vec<String>,
}

impl Filter {
    pub fn accepts(&self, alert: &Alert) -> bool {
        alert.severity >= self.min_severity
            && (self.rules.is_empty() || self.rules.contains(&alert.rule))
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..4])
}

fn validate_webhook(index: usize, config: &WebhookConfig) -> Result<SinkSettings, HooksError> {
    let key = format!("alerts.webhook[{index}].url");
    let url = Url::parse(&config.url).map_err(|error| HooksError::Config {
        key: key.clone(),
        reason: format!("{:?} is not a URL: {error}", config.url),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(HooksError::Config {
            key,
            reason: format!("{:?} must be an http:// or https:// URL", config.url),
        });
    }
    let format = match config.format {
        WebhookFormat::Json => "json",
        WebhookFormat::Slack => "slack",
        WebhookFormat::Teams => "teams",
    };
    let id = match &config.name {
        Some(name) => SinkId(name.clone()),
        None => SinkId(format!(
            "webhook:{}#{}",
            url.host_str().unwrap_or_default(),
            short_hash(&[url.as_str(), format])
        )),
    };
    if config.timeout.is_zero() {
        return Err(HooksError::Config {
            key: format!("alerts.webhook[{index}].timeout"),
            reason: "must be above zero".into(),
        });
    }
    Ok(SinkSettings {
        id,
        filter: Filter {
            min_severity: config.min_severity,
            rules: config.rules.clone(),
        },
        rate_per_minute: config.rate_per_minute,
        kind: SinkKind::Webhook {
            url,
            format: config.format,
            timeout: config.timeout,
            extra_roots_pem: config.ca_file.as_deref().map(read_file).transpose()?,
        },
    })
}

fn email_error(key: &str, reason: String) -> HooksError {
    HooksError::Config {
        key: format!("alerts.email.{key}"),
        reason,
    }
}

fn validate_email(config: &EmailConfig) -> Result<SinkSettings, HooksError> {
    let url = Url::parse(&config.smtp)
        .map_err(|error| email_error("smtp", format!("{:?} is not a URL: {error}", config.smtp)))?;
    let (scheme_tls, default_port) = match url.scheme() {
        "smtp" => (SmtpTls::Starttls, 587),
        "smtps" => (SmtpTls::Implicit, 465),
        "smtp+plain" => (SmtpTls::None, 25),
        _ => {
            return Err(email_error(
                "smtp",
                format!(
                    "{:?} must start with smtp://, smtps:// or smtp+plain://",
                    config.smtp
                ),
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| email_error("smtp", format!("{:?} names no host", config.smtp)))?;
    // The url crate keeps brackets around IPv6 literals; the SMTP client wants the bare address.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = match (url.scheme(), config.tls) {
        (_, None) => scheme_tls,
        ("smtp", Some(tls)) => tls,
        (_, Some(tls)) if tls == scheme_tls => tls,
        (scheme, Some(_)) => {
            return Err(email_error(
                "tls",
                format!(
                    "conflicts with the {scheme}:// scheme; use smtp:// to choose the TLS mode"
                ),
            ));
        }
    };
    let extra_roots_pem = config.ca_file.as_deref().map(read_file).transpose()?;
    let password = match (&config.password, &config.password_file) {
        (Some(_), Some(_)) => {
            return Err(email_error(
                "password_file",
                "set either password or password_file, not both".into(),
            ));
        }
        (Some(password), None) => Some(password.clone()),
        (None, Some(path)) => Some(read_password_file(path)?),
        (None, None) => None,
    };
    let credentials = match (&config.username, password) {
        (Some(user), Some(password)) => Some((user.clone(), password)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(email_error(
                "username",
                "needs password or password_file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(email_error("password", "needs username as well".into()));
        }
    };
    let from: Mailbox = config.from.parse().map_err(|error| {
        email_error(
            "from",
            format!("{:?} is not a mail address: {error}", config.from),
        )
    })?;
    if config.to.is_empty() {
        return Err(email_error("to", "needs at least one recipient".into()));
    }
    let to = config
        .to
        .iter()
        .map(|address| {
            address.parse::<Mailbox>().map_err(|error| {
                email_error("to", format!("{address:?} is not a mail address: {error}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.timeout.is_zero() {
        return Err(email_error("timeout", "must be above zero".into()));
    }
    let id = match &config.name {
        Some(name) => SinkId(name.clone()),
        None => {
            let recipients = config.to.join(",");
            SinkId(format!(
                "email:{host}#{}",
                short_hash(&[&config.smtp, &recipients])
            ))
        }
    };
    Ok(SinkSettings {
        id,
        filter: Filter {
            min_severity: config.min_severity,
            rules: config.rules.clone(),
        },
        rate_per_minute: config.rate_per_minute,
        kind: SinkKind::Email(EmailSettings {
            port: url.port().unwrap_or(default_port),
            host,
            tls,
            extra_roots_pem,
            credentials,
            from,
            to,
            timeout: config.timeout,
        }),
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, HooksError> {
    std::fs::read(path).map_err(|source| HooksError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_password_file(path: &Path) -> Result<String, HooksError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| HooksError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        // World-readable leaks the password; group- or world-writable lets others redirect the mail.
        if mode & 0o026 != 0 {
            return Err(HooksError::Config {
                key: "alerts.email.password_file".into(),
                reason: format!(
                    "{} has mode {:o}; run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                ),
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(|source| HooksError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alerts_section_parses_with_defaults_and_rejects_unknown_keys() {
        let config: HooksConfig = toml::from_str(
            r#"
            [[webhook]]
            url = "https://hooks.example/T000/B000/XXXX"
            format = "slack"
            min_severity = "high"
            rules = ["large_export_created_then_deleted"]
            rate_per_minute = 20
            timeout = "5s"

            [email]
            smtp = "smtp://mail.example:587"
            username = "bannin"
            password = "pw"
            from = "bannin@example.jp"
            to = ["soc@example.jp"]

            [retry]
            initial = "1s"
            max = "10m"
            "#,
        )
        .unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.sinks.len(), 2);
        assert!(
            !settings.sinks[0].id.0.contains("T000"),
            "sink names hide webhook paths"
        );
        assert_eq!(settings.retry.backoff.max, Duration::from_secs(600));
        assert_eq!(settings.retry.permanent_after, 5);
        match &settings.sinks[1].kind {
            SinkKind::Email(email) => {
                assert_eq!(email.port, 587);
                assert_eq!(email.tls, SmtpTls::Starttls);
                assert_eq!(email.credentials.as_ref().unwrap().0, "bannin");
            }
            other => panic!("expected e-mail, got {other:?}"),
        }

        let error =
            toml::from_str::<HooksConfig>("[[webhook]]\nurl = \"http://x/\"\nformta = \"json\"\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("formta"), "{error}");

        let defaults = HooksConfig::default().validate().unwrap();
        assert!(defaults.sinks.is_empty());
    }

    #[test]
    fn invalid_entries_are_refused_with_their_key() {
        let refuse = |text: &str| -> String {
            toml::from_str::<HooksConfig>(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(refuse("[[webhook]]\nurl = \"ftp://x/\"\n").contains("alerts.webhook[0].url"));
        assert!(
            refuse("[email]\nsmtp = \"smtps://m:465\"\ntls = \"none\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n")
                .contains("alerts.email.tls")
        );
        assert!(
            refuse("[email]\nsmtp = \"smtp://m\"\nfrom = \"a@b.c\"\nto = []\n")
                .contains("alerts.email.to")
        );
        assert!(
            refuse(
                "[email]\nsmtp = \"smtp://m\"\nusername = \"u\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n"
            )
            .contains("alerts.email.username")
        );
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("password");
        std::fs::write(&loose, "pw\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
            let error = refuse(&format!(
                "[email]\nsmtp = \"smtp://m\"\nusername = \"u\"\npassword_file = \"{}\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n",
                loose.display()
            ));
            assert!(error.contains("chmod 600"), "{error}");
        }
        let same_url = "[[webhook]]\nurl = \"http://x/\"\n[[webhook]]\nurl = \"http://x/\"\n";
        assert!(refuse(same_url).contains("two sinks"));
    }

    #[test]
    fn cli_webhooks_are_added_once() {
        let mut config: HooksConfig = toml::from_str("[[webhook]]\nurl = \"http://a/\"\n").unwrap();
        config.add_cli_webhooks(["http://a/".to_string(), "http://b/".to_string()]);
        let urls: Vec<_> = config.webhook.iter().map(|w| w.url.as_str()).collect();
        assert_eq!(urls, ["http://a/", "http://b/"]);
        assert_eq!(config.webhook[1].format, WebhookFormat::Json);
        assert_eq!(config.validate().unwrap().sinks.len(), 2);
    }
}
