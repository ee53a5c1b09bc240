//! Issue 13: the web console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): sign in with a one-time link, find the alert of a
//! real create-then-delete, follow it to its verified evidence, timeline and scope, export CSV; a
//! used link and a revoked operator are refused; and what an attacker tries (hostile names in every
//! field, session fixation, cross-site sign-out, path traversal, huge requests) fails.
//!
//! The same tests run on a PostgreSQL store shared by two collectors (a database of its own on
//! the machine's PostgreSQL): links are issued for collector A, every page is read on collector
//! B, and signing out or revoking through one collector ends the session on the other at once.
//!
//! Screenshots of every page go to `target/console-screenshots/` (`pg-` before a PostgreSQL run's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bannin::event::{
    AgentAction, AgentEvent, Body, DbAction, DbEvent, ExportInfo, FileAction, FileEvent, NetAction,
    NetEvent, ProcessAction, ProcessEvent, ProcessInfo, SensorEvent, SensorStatus,
};
use bannin::time::Timestamp;
use fantoccini::{Client, ClientBuilder, Locator};

use crate::harness::*;
use crate::pgstore::{PgDb, shared_dirs};
use crate::sim::SimAgent;

const LONG: Duration = Duration::from_secs(120);
const RULE: &str = "large-export-created-then-deleted";
/// A file name that is an HTML element with an event handler: it must show as text and run nothing.
const HOSTILE_FILE: &str = "<img src=x onerror=alert(1)>.csv";

/// Which store the console runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Sqlite,
    /// Two collectors sharing a PostgreSQL store.
    Postgres,
}

/// Collectors with the console on free ports and a 1 KiB export threshold: one on SQLite, or A
/// and B sharing a PostgreSQL store. Links are issued for the first (A), pages are read on the
/// last (B).
struct Site {
    tmp: tempfile::TempDir,
    collectors: Vec<Collector>,
    /// `https://127.0.0.1:PORT` of each collector's console.
    bases: Vec<String>,
    db: Option<PgDb>,
}

fn site() -> Site {
    site_on(Store::Sqlite)
}

fn console_base(collector: &mut Collector) -> String {
    collector
        .proc
        .wait_address("serving the console on ", Duration::from_secs(30))
}

fn site_on(store: Store) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("collector.toml");
    private_file(
        &config,
        "[detection.thresholds]\nlarge_export_min_size = 1024\n",
    );
    let console_args = [
        "--config",
        config.to_str().unwrap(),
        "--console-listen",
        "127.0.0.1:0",
    ];
    let (dirs, db) = match store {
        Store::Sqlite => (vec![tmp.path().join("collector")], None),
        Store::Postgres => {
            let db = PgDb::create();
            (shared_dirs(tmp.path(), &db, 2), Some(db))
        }
    };
    let mut collectors = Vec::new();
    let mut bases = Vec::new();
    for dir in &dirs {
        let mut args: Vec<&str> = console_args.to_vec();
        if let Some(db) = &db {
            args.extend(["--store", db.url.as_str()]);
        }
        let mut collector = Collector::start_with(dir, "127.0.0.1:0", &args);
        bases.push(console_base(&mut collector));
        collectors.push(collector);
    }
    Site {
        tmp,
        collectors,
        bases,
        db,
    }
}

impl Site {
    /// The collector links are issued for, agents enroll with and the CLI runs against.
    fn a(&self) -> &Collector {
        &self.collectors[0]
    }

    /// The store arguments of a CLI command: the shared store, or the data directory.
    fn store_args(&self, command: &mut Command) {
        match &self.db {
            Some(db) => command.args(["--store", &db.url]),
            None => command.arg("--data-dir").arg(&self.a().dir),
        };
    }

    /// `console link --operator NAME`, with the store and collector A's data directory (where A
    /// recorded its console's address).
    fn link_command(&self, operator: &str) -> Command {
        let mut command = Command::new(COLLECTOR);
        command.args(["console", "link", "--operator", operator]);
        self.store_args(&mut command);
        if self.db.is_some() {
            command.arg("--data-dir").arg(&self.a().dir);
        }
        command
    }

    /// `console link --operator NAME`: the printed URL, on collector A's console.
    fn link(&self, operator: &str) -> String {
        let link = run_ok(&mut self.link_command(operator)).trim().to_string();
        assert!(link.starts_with(&self.bases[0]), "{link}");
        link
    }

    /// `path` on the console of collector B (the only one on SQLite).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.bases[self.bases.len() - 1])
    }

    /// `path` on the console of collector A.
    fn url_a(&self, path: &str) -> String {
        format!("{}{path}", self.bases[0])
    }

    /// A screenshot's name, marked for a PostgreSQL run.
    fn shot(&self, name: &str) -> String {
        match self.db {
            Some(_) => format!("pg-{name}"),
            None => name.to_string(),
        }
    }

    /// An HTTPS client that trusts only the collector's CA: the console serves the collector's
    /// own server certificate.
    fn http(&self) -> reqwest::Client {
        let ca = std::fs::read(self.a().ca()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// Signs in over HTTP with a fresh link (on A); the session cookie's value.
    async fn session(&self, operator: &str) -> String {
        let reply = self.http().get(self.link(operator)).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        session_of(&reply).expect("a session cookie")
    }

    /// `path` on B with the session cookie: the status and body.
    async fn get(&self, path: &str, session: &str) -> (u16, String) {
        self.get_url(&self.url(path), session).await
    }

    async fn get_url(&self, url: &str, session: &str) -> (u16, String) {
        let reply = self
            .http()
            .get(url)
            .header("cookie", format!("__Host-bannin_session={session}"))
            .send()
            .await
            .unwrap();
        (reply.status().as_u16(), reply.text().await.unwrap())
    }
}

fn session_of(reply: &reqwest::Response) -> Option<String> {
    reply
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("__Host-bannin_session="))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// Headless Chromium under chromedriver, killed on drop.
struct Browser {
    client: Client,
    downloads: PathBuf,
    _profile: tempfile::TempDir,
    _driver: Proc,
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let mut driver = Proc::spawn(
            "chromedriver",
            Command::new("chromedriver").arg(format!("--port={port}")),
        );
        driver.wait_line("started successfully", Duration::from_secs(30));
        let profile = tempfile::tempdir().unwrap();
        let downloads = profile.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            // The console's certificate is issued by the collector's own CA; the HTTP checks
            // below pin that CA, the browser is told to accept it.
            "acceptInsecureCerts": true,
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1600", "--lang=en-US",
                    format!("--user-data-dir={}", profile.path().join("chrome").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                    "intl.accept_languages": "en-US,en",
                },
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}\n{}", driver.log()));
        Browser {
            client,
            downloads,
            _profile: profile,
            _driver: driver,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Waits until the page's `h1` says `title`.
    async fn wait_title(&self, title: &str) {
        // A page the browser loads slowly on a loaded host is not a failure: only one that never
        // shows the title is.
        let deadline = tokio::time::Instant::now() + LONG;
        while tokio::time::Instant::now() < deadline {
            if let Ok(h1) = self.client.find(Locator::Css("h1")).await
                && h1.text().await.is_ok_and(|t| t.contains(title))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the page never showed {title:?}: {}",
            self.client.source().await.unwrap()
        );
    }

    /// Nothing ran: no dialog is open, and the page holds no element a hostile value could have
    /// become (the console itself uses none of these).
    async fn assert_inert(&self) {
        match self.client.get_alert_text().await {
            Err(e) if e.is_no_such_alert() => {}
            other => panic!("a dialog is open: {other:?}"),
        }
        for tag in [
            "img", "svg", "script", "iframe", "marquee", "object", "embed",
        ] {
            assert_eq!(self.count(tag).await, 0, "an injected <{tag}>");
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
    }

    async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_string())
    }
}

/// A CSV with personal-data-like columns, over the test collector's 1 KiB export threshold.
fn write_export(path: &Path) {
    let mut text = String::from("id,name,email,phone\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "{i},name{i:07},user{i:07}@example.jp,090-{:04}-5678\n",
            i % 10000
        ));
    }
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sys; open(sys.argv[1], 'w').write(sys.stdin.read())")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_follows_a_real_alert_to_verified_evidence_and_scope_and_exports_csv()
{
    follow_a_real_alert(Store::Sqlite).await;
}

/// Signed in through collector A's link, the operator reads the alert, its verified evidence,
/// scope, timeline, search and export on collector B; signing out on B ends the session on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_postgresql_store_a_session_from_one_collector_reads_every_page_on_another() {
    follow_a_real_alert(Store::Postgres).await;
}

async fn follow_a_real_alert(store: Store) {
    let site = site_on(store);
    let watched = site.tmp.path().join("exports");
    std::fs::create_dir(&watched).unwrap();
    let state = site.tmp.path().join("agent");
    site.a().enroll(&state, "files1");
    let _agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    // A real create-then-delete of an export whose name is an HTML element.
    let csv = watched.join(HOSTILE_FILE);
    write_export(&csv);
    std::fs::remove_file(&csv).unwrap();
    let path = csv.display().to_string();
    wait_for("the create-then-delete alert", LONG, || {
        site.a()
            .alerts(&["--rule", RULE])
            .into_iter()
            .find(|a| a["path"] == path.as_str())
    });

    let browser = Browser::start().await;
    let link = site.link("alice");
    browser.goto(&link).await;
    // The sign-in page moves on to the alerts by itself.
    browser.wait_title("Alerts").await;
    assert_eq!(browser.text("#operator").await, "alice");
    let cookie = browser.cookie("__Host-bannin_session").await;
    assert!(cookie.is_some_and(|c| c.starts_with("bcs_")));
    browser.assert_inert().await;
    let row = browser.text("table.alerts tbody").await;
    assert!(row.contains(RULE) && row.contains("files1"), "{row}");
    assert!(
        row.contains(HOSTILE_FILE),
        "the file name shows as text: {row}"
    );
    browser.screenshot(&site.shot("alerts")).await;

    // The alert (filtered in the URL: other rules may fire meanwhile): every evidence event
    // verified by chain and signature, with its lineage.
    browser
        .goto(&site.url(&format!("/alerts?rule={RULE}&host=files1&severity=high")))
        .await;
    browser.wait_title("Alerts").await;
    assert_eq!(browser.count("a.alert-link").await, 1);
    browser.click("a.alert-link").await;
    browser.wait_title(RULE).await;
    browser.assert_inert().await;
    let evidence = browser.count("tr.evidence-row").await;
    assert!(evidence >= 2, "create and delete at least");
    assert_eq!(browser.count("tr.evidence-row .verified").await, evidence);
    let detail = browser.text("table.evidence").await;
    assert!(
        detail.contains("file.create") && detail.contains("file.delete"),
        "{detail}"
    );
    assert!(detail.contains(HOSTILE_FILE), "{detail}");
    let lineage = browser.text("tr.evidence-row td.lineage").await;
    assert!(lineage.starts_with("python3"), "{lineage}");
    browser.screenshot(&site.shot("alert")).await;
    let alert_url = browser.client.current_url().await.unwrap();

    // Its scope: the export file created and deleted, by python3.
    browser.click("#scope-link").await;
    browser.wait_title("Scope").await;
    browser.assert_inert().await;
    let files = browser.text("table.scope-files").await;
    assert!(
        files.contains(HOSTILE_FILE) && files.contains("file.delete"),
        "{files}"
    );
    browser.screenshot(&site.shot("scope")).await;

    // The host's timeline around it.
    browser.goto(alert_url.as_str()).await;
    browser.click("#timeline-link").await;
    browser.wait_title("Timeline: files1").await;
    browser.assert_inert().await;
    let timeline = browser.text("table.timeline").await;
    assert!(
        timeline.contains("file.create") && timeline.contains(HOSTILE_FILE),
        "{timeline}"
    );
    browser.screenshot(&site.shot("timeline")).await;

    // Search and export the result as CSV, through the browser's own download.
    browser
        .goto(&site.url("/search?host=files1&path=*.csv&kind=file.*"))
        .await;
    browser.wait_title("Search").await;
    browser.assert_inert().await;
    assert!(browser.count("table.events tbody tr").await >= 2);
    browser.screenshot(&site.shot("search")).await;
    browser.click("#export-csv").await;
    let downloaded = browser.downloads.join("bannin-events.csv");
    // Chromium makes the file empty first and renames the finished download over it.
    let csv_text = wait_for("the CSV download", Duration::from_secs(30), || {
        std::fs::read_to_string(&downloaded)
            .ok()
            .filter(|text| text.ends_with('\n'))
    });
    let mut lines = csv_text.lines();
    assert_eq!(
        lines.next(),
        Some("ts,host,agent_id,seq,kind,path,user,pid,exe,detail")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.iter()
            .any(|r| r.contains(",file.create,") && r.contains(&path)),
        "{csv_text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains(",file.delete,") && r.contains(&path)),
        "{csv_text}"
    );

    // Agents: the one agent, active, with its sensors.
    browser.goto(&site.url("/agents")).await;
    browser.wait_title("Agents").await;
    let agents = browser.text("table.agents tbody").await;
    assert!(
        agents.contains("files1") && agents.contains("active"),
        "{agents}"
    );
    browser.screenshot(&site.shot("agents")).await;

    browser.goto(&site.url("/rules")).await;
    browser.wait_title("Rules").await;
    assert!(browser.text("table.rules").await.contains(RULE));
    browser.screenshot(&site.shot("rules")).await;

    // A used link is refused, and the session it opened goes on.
    browser.goto(&link).await;
    browser.wait_title("Sign-in refused").await;
    browser.goto(&site.url("/alerts")).await;
    browser.wait_title("Alerts").await;

    // Japanese, with the switch; it comes back to the same page.
    browser.click("a[lang=ja]").await;
    browser.wait_title("アラート").await;
    assert!(browser.text("nav").await.contains("エージェント"));
    browser.screenshot(&site.shot("alerts-ja")).await;
    browser.goto(alert_url.as_str()).await;
    browser.wait_title("アラート").await;
    assert!(browser.text("table.evidence").await.contains("検証済み"));
    browser.screenshot(&site.shot("alert-ja")).await;

    // Signing out from the console's own button (on B) ends the session; its token replayed on
    // A afterwards is refused.
    let token = browser.cookie("__Host-bannin_session").await.unwrap();
    assert_eq!(site.get_url(&site.url_a("/alerts"), &token).await.0, 200);
    browser.click("a[lang=en]").await;
    browser.click("#signout").await;
    browser.wait_title("Signed out").await;
    browser.goto(&site.url("/alerts")).await;
    browser.wait_title("Not signed in").await;
    for url in [site.url_a("/alerts"), site.url("/alerts")] {
        let (status, body) = site.get_url(&url, &token).await;
        assert_eq!(status, 401, "{url}: {body}");
    }
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_operator_ends_the_session_at_once_and_refuses_its_links() {
    revoke_ends_sessions(Store::Sqlite).await;
}

/// A revocation in the shared store ends the session, opened through A and used on B, on both
/// collectors at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_postgresql_store_revoking_the_operator_ends_the_session_on_every_collector() {
    revoke_ends_sessions(Store::Postgres).await;
}

async fn revoke_ends_sessions(store: Store) {
    let site = site_on(store);
    let browser = Browser::start().await;
    let unused = site.link("bob");
    browser.goto(&site.link("bob")).await;
    browser.wait_title("Alerts").await;
    browser.goto(&site.url("/agents")).await;
    browser.wait_title("Agents").await;
    let token = browser.cookie("__Host-bannin_session").await.unwrap();
    assert_eq!(site.get_url(&site.url_a("/agents"), &token).await.0, 200);

    let mut revoke = Command::new(COLLECTOR);
    revoke.args(["revoke", "--operator", "bob"]);
    site.store_args(&mut revoke);
    run_ok(&mut revoke);
    // The very next request is refused, on every collector: nothing about the session was cached.
    browser.goto(&site.url("/agents")).await;
    browser.wait_title("Not signed in").await;
    browser.screenshot(&site.shot("revoked")).await;
    assert_eq!(site.get_url(&site.url_a("/agents"), &token).await.0, 401);
    // A link issued before the revocation is refused too, and no new one is issued.
    browser.goto(&unused).await;
    browser.wait_title("Sign-in refused").await;
    let refused = run_output(&mut site.link_command("bob"));
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("operator bob is revoked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    browser.client.clone().close().await.unwrap();
}

/// Events whose every field an attacker chose: file names, executables, command lines, users,
/// database statements, addresses and sensor messages that are HTML, attribute breakouts and
/// script.
fn hostile_bodies(now: Timestamp) -> Vec<(Timestamp, Body)> {
    let process = |exe: &str| ProcessInfo {
        pid: 4242,
        ppid: Some(1),
        exe: exe.to_string(),
        cmdline: "sh -c '</td><script>alert(3)</script>'".into(),
        user: "<b onmouseover=alert(4)>root</b>".into(),
        uid: Some(0),
        ancestry: Default::default(),
    };
    let at = |s: u64| now.saturating_sub(Duration::from_secs(600 - s));
    let mut file = FileEvent::new(
        FileAction::Create,
        "/srv/exports/\"><svg onload=alert(2)>.csv",
        "fanotify",
    );
    file.size = Some(5_000_000);
    file.process = Some(std::sync::Arc::new(process(
        "/tmp/<iframe src=javascript:alert(5)>",
    )));
    file.process_known = true;
    file.export = Some(ExportInfo {
        class: "data".into(),
        format: "csv".into(),
        est_rows: Some(10),
        sampled_bytes: 100,
        emails: 1,
        phones: 0,
        passports: 0,
        cards: 0,
    });
    let mut db = DbEvent::new(DbAction::Query, "postgresql");
    db.db_user = "'><script>alert(6)</script>".into();
    db.database = "<marquee>crm".into();
    db.statement = "SELECT '<img src=x onerror=alert(7)>' FROM customers".into();
    db.tables = vec!["public.<script>".into()];
    let mut start = AgentEvent::new(AgentAction::Start);
    start.sensors = vec!["<object data=x>".into()];
    vec![
        (at(1), start.into()),
        (
            at(2),
            SensorEvent {
                status: SensorStatus::Status,
                sensor: "files".into(),
                message: "<embed src=x> backend".into(),
                count: 0,
                path: String::new(),
                count_unknown: false,
            }
            .into(),
        ),
        (
            at(3),
            ProcessEvent {
                action: ProcessAction::Start,
                process: process("/usr/bin/<img src=x onerror=alert(8)>"),
                cwd: "/".into(),
                start_ts: None,
                exit_code: None,
                read_bytes: None,
                write_bytes: None,
                source: "proc_connector".into(),
            }
            .into(),
        ),
        (at(4), file.into()),
        (at(5), db.into()),
        (
            at(6),
            NetEvent {
                action: NetAction::Connect,
                process: Some(process("/usr/bin/curl")),
                protocol: "tcp".into(),
                local_addr: "10.0.0.5".into(),
                local_port: 40000,
                remote_addr: "<svg/onload=alert(9)>".into(),
                remote_port: 443,
                remote_scope: "public".into(),
                bytes_sent: Some(1),
                bytes_received: None,
            }
            .into(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_every_field_render_as_text_and_run_nothing() {
    hostile_values_are_text(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_postgresql_store_hostile_values_render_as_text_and_run_nothing() {
    hostile_values_are_text(Store::Postgres).await;
}

/// The events go in through collector A; every page is read on B.
async fn hostile_values_are_text(store: Store) {
    let site = site_on(store);
    let mut agent = SimAgent::enroll(site.a(), "pc-hostile").await;
    agent
        .submit_bodies(hostile_bodies(Timestamp::now()))
        .await
        .unwrap();
    let browser = Browser::start().await;
    browser.goto(&site.link("eve")).await;
    browser.wait_title("Alerts").await;
    let pages = [
        ("/timeline?host=pc-hostile&since=1h", "hostile-timeline"),
        ("/search?host=pc-hostile", "hostile-search"),
        ("/agents", "hostile-agents"),
        ("/scope?since=1h", "hostile-scope"),
    ];
    for (path, name) in pages {
        browser.goto(&site.url(path)).await;
        browser.wait_title("").await;
        browser.assert_inert().await;
        browser.screenshot(&site.shot(name)).await;
    }
    browser
        .goto(&site.url("/timeline?host=pc-hostile&since=1h"))
        .await;
    let timeline = browser.text("table.timeline").await;
    for shown in [
        "\"><svg onload=alert(2)>.csv",
        "</td><script>alert(3)</script>",
        "SELECT '<img src=x onerror=alert(7)>' FROM customers",
        "<svg/onload=alert(9)>",
    ] {
        assert!(timeline.contains(shown), "{shown} missing from {timeline}");
    }
    browser.goto(&site.url("/agents")).await;
    assert!(
        browser
            .text("table.agents")
            .await
            .contains("<embed src=x> backend")
    );
    // A hostile value in the URL itself comes back as text in the form, not as markup.
    browser
        .goto(&site.url(
            "/search?path=%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(10)%3E&user=%3Cscript%3Ealert(11)%3C%2Fscript%3E",
        ))
        .await;
    browser.wait_title("Search").await;
    browser.assert_inert().await;
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_single_use_stored_as_hashes_and_sessions_cannot_be_fixed() {
    links_and_sessions_resist_replay(Store::Sqlite).await;
}

/// As on SQLite, across two collectors: a link spent on A is refused on B, one link raced to both
/// opens one session, and a session signed out on B is refused on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_postgresql_store_links_are_single_use_and_sessions_end_everywhere() {
    links_and_sessions_resist_replay(Store::Postgres).await;
}

async fn links_and_sessions_resist_replay(store: Store) {
    let site = site_on(store);
    let http = site.http();
    // Token reuse, and a near miss of a real token.
    let link = site.link("mallory");
    let first = http.get(&link).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let session = session_of(&first).unwrap();
    let cookie_line = first
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(cookie_line.contains(attribute), "{cookie_line}");
    }
    assert_eq!(http.get(&link).send().await.unwrap().status(), 403);
    // Spent on A, it is spent on B too.
    let on_b = link.replacen(&site.url_a(""), &site.url(""), 1);
    let replayed = http.get(&on_b).send().await.unwrap();
    assert_eq!(replayed.status(), 403, "{on_b}");
    assert!(session_of(&replayed).is_none());
    // One link handed to A and B at once opens exactly one session.
    for _ in 0..5 {
        let raced = site.link("mallory");
        let raced_b = raced.replacen(&site.url_a(""), &site.url(""), 1);
        let (ra, rb) = tokio::join!(http.get(&raced).send(), http.get(&raced_b).send());
        let mut statuses = [ra.unwrap().status().as_u16(), rb.unwrap().status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 403], "{raced}");
    }
    let other = site.link("mallory");
    let mut near = other.clone();
    let last = near.pop().unwrap();
    near.push(if last == '0' { '1' } else { '0' });
    let refused = http.get(&near).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(session_of(&refused).is_none());
    // Neither the link's token nor the session's secret is anywhere in the store, which holds
    // their SHA-256 hashes.
    let token = link.split("token=").nth(1).unwrap();
    match &site.db {
        None => {
            for name in ["bannin.db", "bannin.db-wal"] {
                let bytes = std::fs::read(site.a().dir.join(name)).unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains(token) && !text.contains(&session), "{name}");
            }
        }
        Some(db) => {
            let stored = db.query(
                "SELECT encode(hash, 'escape') || ' ' || operator FROM console_links
                 UNION ALL SELECT encode(hash, 'escape') || ' ' || operator FROM console_sessions",
            );
            assert!(stored.contains("mallory"), "{stored}");
            assert!(
                !stored.contains(token) && !stored.contains(&session),
                "{stored}"
            );
            let hashed = |table: &str, secret: &str| {
                db.query(&format!(
                    "SELECT count(*) FROM {table} WHERE hash = sha256(convert_to('{secret}', 'UTF8'))"
                ))
            };
            assert_eq!(hashed("console_links", token), "1");
            assert_eq!(hashed("console_sessions", &session), "1");
        }
    }

    // Session fixation: the attacker's own valid session, planted in the victim's browser, is
    // replaced at the victim's sign-in and ends with it.
    let planted = site.session("mallory").await;
    let browser = Browser::start().await;
    browser.goto(&site.url("/signin")).await;
    // Planted as a script on the console's origin could (WebDriver runs it there).
    browser
        .client
        .execute(
            "document.cookie = arguments[0] + '; Path=/; Secure; SameSite=Strict'",
            vec![serde_json::json!(format!(
                "__Host-bannin_session={planted}"
            ))],
        )
        .await
        .unwrap();
    assert_eq!(
        browser.cookie("__Host-bannin_session").await.as_deref(),
        Some(planted.as_str())
    );
    browser.goto(&site.link("victim")).await;
    browser.wait_title("Alerts").await;
    assert_eq!(browser.text("#operator").await, "victim");
    let fresh = browser.cookie("__Host-bannin_session").await.unwrap();
    assert_ne!(fresh, planted);
    assert_eq!(site.get("/alerts", &planted).await.0, 401);

    // A cross-site form posting to /signout: refused, the session goes on.
    let attack = format!(
        "data:text/html,<form id=f method=post action='{}/signout'></form><script>document.getElementById('f').submit()</script>",
        site.url("")
    );
    browser.goto(&attack).await;
    // The form lands on the console, which refuses it.
    browser.wait_title("Sign out").await;
    assert!(
        browser
            .text("p.message")
            .await
            .contains("did not come from the console")
    );
    browser.screenshot(&site.shot("csrf-refused")).await;
    browser.goto(&site.url("/alerts")).await;
    browser.wait_title("Alerts").await;
    assert_eq!(browser.text("#operator").await, "victim");
    // The same by hand, with the victim's cookie and a foreign Origin; and a GET.
    let signout = |origin: &str| {
        http.post(site.url("/signout"))
            .header("cookie", format!("__Host-bannin_session={fresh}"))
            .header("origin", origin.to_string())
            .send()
    };
    assert_eq!(signout("https://evil.example").await.unwrap().status(), 403);
    let get = site.get("/signout", &fresh).await;
    assert_eq!(get.0, 405);
    assert_eq!(site.get("/alerts", &fresh).await.0, 200, "still signed in");
    assert_eq!(signout(&site.url("")).await.unwrap().status(), 200);
    assert_eq!(site.get("/alerts", &fresh).await.0, 401, "signed out");
    // Replayed on the other collector after signing out: refused there too.
    let replayed = site.get_url(&site.url_a("/alerts"), &fresh).await;
    assert_eq!(replayed.0, 401, "{}", replayed.1);
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_headers_no_path_traversal_and_huge_requests_are_refused() {
    let site = site();
    let session = site.session("ops").await;
    let http = site.http();
    let reply = http
        .get(site.url("/alerts"))
        .header("cookie", format!("__Host-bannin_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let header = |name: &str| {
        reply
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("cache-control"), "no-store");
    let body = reply.text().await.unwrap();
    assert!(!body.contains("<script"), "no page carries a script");
    // The browser's language picks Japanese.
    let japanese = http
        .get(site.url("/alerts"))
        .header("cookie", format!("__Host-bannin_session={session}"))
        .header("accept-language", "ja-JP,ja;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(japanese.contains("<h1>アラート</h1>"), "{japanese}");

    // Path traversal toward the static files, as a client sends it byte for byte.
    for path in [
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/console.css/../../../../etc/passwd",
        "/static/..%5c..%5c..%5cetc%5cpasswd",
        "/static/%2fetc%2fpasswd",
    ] {
        let out = run_output(
            Command::new("curl")
                .args(["-sk", "--path-as-is", "-w", "\n%{http_code}"])
                .arg("-H")
                .arg(format!("Cookie: __Host-bannin_session={session}"))
                .arg(site.url(path)),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("root:"), "{path}: {text}");
        assert!(text.trim_end().ends_with("404"), "{path}: {text}");
    }
    assert_eq!(
        http.get(site.url("/static/console.css"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Huge query strings, a huge cookie and a huge header: refused, and the console goes on.
    let huge = "A".repeat(50_000);
    assert_eq!(
        site.get(&format!("/search?path={huge}"), &session).await.0,
        414
    );
    assert_eq!(
        site.get(&format!("/alerts?rule={}", &huge[..4000]), &session)
            .await
            .0,
        200
    );
    let big_cookie = http
        .get(site.url("/alerts"))
        .header("cookie", format!("__Host-bannin_session={huge}"))
        .send()
        .await;
    assert!(big_cookie.is_err() || big_cookie.unwrap().status() != 200);
    let big_header = http
        .get(site.url("/alerts"))
        .header("x-filler", "B".repeat(1_000_000))
        .send()
        .await;
    assert!(big_header.is_err() || big_header.unwrap().status() != 200);
    // Parameters that do not parse get a one-line 400, not a failure.
    for path in [
        "/search?since=yesterday-ish",
        "/search?cursor=1.2",
        "/alerts?severity=urgent",
        "/timeline?host=x&margin=99999d",
        "/search/export?format=xlsx",
        "/alerts?limit=-1",
    ] {
        let (status, _) = site.get(path, &session).await;
        assert_eq!(status, 400, "{path}");
    }
    assert_eq!(site.get("/alerts", &session).await.0, 200, "still serving");
}
