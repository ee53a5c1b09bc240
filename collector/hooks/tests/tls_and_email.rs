//! HTTPS webhooks behind a private CA and e-mail over plain, STARTTLS and implicit TLS relays.

use super::*;

/// A receiver script from tests/support/ that writes what it receives to DIR/N.json and prints
/// `listening on 127.0.0.1:PORT` when ready; killed when dropped.
struct PyServer {
    port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl PyServer {
    async fn start(script: &str, args: &[&OsStr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Debian's python3 carries python3-aiosmtpd; a python3 earlier on PATH may not.
        let python = std::env::var("BANNIN_TEST_PYTHON").unwrap_or_else(|_| {
            if Path::new("/usr/bin/python3").exists() {
                "/usr/bin/python3".into()
            } else {
                "python3".into()
            }
        });
        let mut child = tokio::process::Command::new(python)
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/support")
                    .join(script),
            )
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|| panic!("{script} exited before listening"));
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
        PyServer {
            port,
            dir,
            _child: child,
        }
    }

    fn received(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension() == Some(OsStr::new("json")))
            .count()
    }

    async fn wait_for<T: serde::de::DeserializeOwned>(&self, count: usize) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut records = Vec::new();
            for n in 1..=count {
                let path = self.dir.path().join(format!("{n}.json"));
                if let Ok(text) = std::fs::read_to_string(path) {
                    records.push(serde_json::from_str(&text).unwrap());
                }
            }
            if records.len() == count {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} arrived",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The aiosmtpd server of tests/support/smtp_sink.py (mode plain, starttls or implicit).
async fn start_smtp(mode: &str, tls: Option<&Tls>, auth: Option<&str>) -> PyServer {
    let mut args: Vec<&OsStr> = vec![OsStr::new("--mode"), OsStr::new(mode)];
    if let Some(tls) = tls {
        args.extend([OsStr::new("--cert"), tls.cert.as_os_str()]);
        args.extend([OsStr::new("--key"), tls.key.as_os_str()]);
    }
    if let Some(auth) = auth {
        args.extend([OsStr::new("--auth"), OsStr::new(auth)]);
    }
    PyServer::start("smtp_sink.py", &args).await
}

#[derive(Debug, serde::Deserialize)]
struct Mail {
    mail_from: String,
    rcpt_tos: Vec<String>,
    subject: String,
    to: String,
    body: String,
    tls: bool,
    authenticated: bool,
}

#[derive(Debug, serde::Deserialize)]
struct HttpsPost {
    path: String,
    content_type: Option<String>,
    body: String,
}

struct Tls {
    cert: PathBuf,
    key: PathBuf,
}

fn self_signed(dir: &Path) -> Tls {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Tls { cert, key }
}

#[tokio::test]
async fn an_https_webhook_behind_a_private_ca_is_trusted_only_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let https = PyServer::start(
        "https_sink.py",
        &[
            OsStr::new("--cert"),
            tls.cert.as_os_str(),
            OsStr::new("--key"),
            tls.key.as_os_str(),
        ],
    )
    .await;
    let mut store = Store::new();
    let config = |ca: &str| {
        format!(
            "[[alerts.webhook]]\nurl = \"https://127.0.0.1:{}/hooks/abc\"\nformat = \"slack\"\n{ca}\n",
            https.port
        )
    };

    let untrusting = spawn_with(settings(&config("")), store.path.clone()).unwrap();
    store.enqueue(&untrusting, &alert("alert-1", 1));
    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::FailedRetrying)
        .await;
    let error = status[0].last_error.clone().unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    untrusting.shutdown().await.unwrap();
    assert_eq!(https.received(), 0);

    let ca = format!("ca_file = \"{}\"", tls.cert.display());
    let trusting = spawn_with(settings(&config(&ca)), store.path.clone()).unwrap();
    let posts: Vec<HttpsPost> = https.wait_for(1).await;
    assert_eq!(posts[0].path, "/hooks/abc");
    assert_eq!(posts[0].content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&posts[0].body).unwrap();
    assert!(body["text"].as_str().unwrap().starts_with("[bannin] HIGH "));
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    trusting.shutdown().await.unwrap();
}

fn assert_alert_mail(mail: &Mail) {
    assert_eq!(
        mail.subject,
        "[bannin] HIGH large_export_created_then_deleted on db1"
    );
    assert_eq!(mail.mail_from, "bannin@example.jp");
    assert_eq!(mail.rcpt_tos, ["soc@example.jp", "dba@example.jp"]);
    assert!(mail.to.contains("soc@example.jp") && mail.to.contains("dba@example.jp"));
    assert!(
        mail.body
            .starts_with("/srv/exports/customers.csv (100 MiB) was created and deleted within 40s"),
        "{}",
        mail.body
    );
    let json_start = mail.body.find('{').unwrap();
    let json: Alert = serde_json::from_str(mail.body[json_start..].trim()).unwrap();
    assert_eq!(json, alert("alert-1", 1));
    assert!(mail.body.contains("\n  \"rule\": "), "pretty-printed JSON");
}

#[tokio::test]
async fn email_reaches_every_recipient_over_a_plain_relay() {
    let smtp = start_smtp("plain", None, None).await;
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [alerts.email]
        smtp = "smtp+plain://127.0.0.1:{}"
        from = "bannin@example.jp"
        to = ["soc@example.jp", "dba@example.jp"]
        "#,
        smtp.port
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(!mails[0].tls);
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn email_over_starttls_with_auth_trusts_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let smtp = start_smtp("starttls", Some(&tls), Some("bannin:s3cret")).await;
    let password_file = dir.path().join("smtp-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [alerts.email]
        smtp = "smtp://127.0.0.1:{}"
        ca_file = "{}"
        username = "bannin"
        password_file = "{}"
        from = "bannin@example.jp"
        to = ["soc@example.jp", "dba@example.jp"]
        "#,
        smtp.port,
        tls.cert.display(),
        password_file.display()
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(mails[0].tls, "sent after STARTTLS");
    assert!(mails[0].authenticated);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn email_with_a_wrong_password_keeps_retrying_until_the_password_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let smtp = start_smtp("starttls", Some(&tls), Some("bannin:s3cret")).await;
    let mut store = Store::new();
    let config = |password: &str| {
        format!(
            r#"
            [alerts.retry]
            permanent_after = 1
            [alerts.email]
            smtp = "smtp://127.0.0.1:{}"
            ca_file = "{}"
            username = "bannin"
            password = "{password}"
            from = "bannin@example.jp"
            to = ["soc@example.jp", "dba@example.jp"]
            "#,
            smtp.port,
            tls.cert.display()
        )
    };
    let wrong = spawn_with(settings(&config("wrong")), store.path.clone()).unwrap();
    store.enqueue(&wrong, &alert("alert-1", 1));
    // Rejected with 535 twice, yet not given up although permanent_after is 1.
    let status = store.wait_status("alert-1", |s| s[0].attempts >= 2).await;
    assert_eq!(status[0].state, DeliveryState::FailedRetrying);
    let error = status[0].last_error.clone().unwrap();
    assert!(error.contains("535"), "{error}");
    wrong.shutdown().await.unwrap();

    let fixed = spawn_with(settings(&config("s3cret")), store.path.clone()).unwrap();
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(mails[0].authenticated);
    fixed.shutdown().await.unwrap();
}

#[tokio::test]
async fn email_over_implicit_tls_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let smtp = start_smtp("implicit", Some(&tls), None).await;
    let mut store = Store::new();
    let config = |ca: &str| {
        format!(
            r#"
            [alerts.email]
            smtp = "smtps://127.0.0.1:{}"
            {ca}
            from = "bannin@example.jp"
            to = ["soc@example.jp", "dba@example.jp"]
            "#,
            smtp.port
        )
    };

    // Without the CA the certificate does not verify: nothing is sent, the delivery waits.
    let untrusting = spawn_with(settings(&config("")), store.path.clone()).unwrap();
    store.enqueue(&untrusting, &alert("alert-1", 1));
    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::FailedRetrying)
        .await;
    assert!(status[0].last_error.is_some());
    untrusting.shutdown().await.unwrap();
    assert_eq!(smtp.received(), 0);

    let ca = format!("ca_file = \"{}\"", tls.cert.display());
    let trusting = spawn_with(settings(&config(&ca)), store.path.clone()).unwrap();
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(mails[0].tls);
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    trusting.shutdown().await.unwrap();
}
