//! Webhook delivery over plain HTTP: bodies, filters, retries, rate limits, restarts.

use super::*;

#[tokio::test]
async fn webhooks_receive_json_and_slack_bodies() {
    let receiver = HttpReceiver::start(0);
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [[alerts.webhook]]
        url = "{}"
        [[alerts.webhook]]
        url = "{}"
        format = "slack"
        "#,
        receiver.url("/json"),
        receiver.url("/slack"),
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    let sent = alert("alert-1", 1);
    store.enqueue(&hooks, &sent);

    let requests = wait_requests(&receiver, 2).await;
    let json = requests.iter().find(|r| r.path() == "/json").unwrap();
    let slack = requests.iter().find(|r| r.path() == "/slack").unwrap();
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(slack.header("content-type"), Some("application/json"));
    // The alert object, plus the delivery's idempotency key.
    let mut body = json.json();
    let object = body.as_object_mut().unwrap();
    assert_eq!(object.remove("alert_id").unwrap(), "alert-1");
    let key = object.remove("delivery_id").unwrap();
    assert!(key.as_str().unwrap().starts_with("d-"));
    let received: Alert = serde_json::from_value(body).unwrap();
    assert_eq!(received, sent);
    assert_eq!(json.json()["evidence"][0]["seq"], 7);
    assert_eq!(json.json()["path"], "/srv/exports/customers.csv");
    assert_eq!(
        slack.json()["text"],
        "[bannin] HIGH large_export_created_then_deleted on db1: \
         /srv/exports/customers.csv (100 MiB) was created and deleted within 40s"
    );

    let status = store
        .wait_status("alert-1", |s| {
            s.len() == 2 && s.iter().all(|d| d.state == DeliveryState::Delivered)
        })
        .await;
    assert!(
        status
            .iter()
            .all(|d| d.attempts == 1 && d.delivered_ts.is_some())
    );
    assert!(
        status
            .iter()
            .all(|d| d.sink.0.starts_with("webhook:127.0.0.1#"))
    );
    hooks.shutdown().await.unwrap();
    assert_eq!(receiver.requests().len(), 2, "each sink got the alert once");
}

#[tokio::test]
async fn alerts_go_only_to_sinks_whose_filters_accept_them() {
    let store = Store::new();
    let config: HooksConfig = toml::from_str(
        r#"
        [[webhook]]
        name = "everything"
        url = "http://127.0.0.1:9/all"
        [[webhook]]
        name = "critical-only"
        url = "http://127.0.0.1:9/critical"
        min_severity = "critical"
        [[webhook]]
        name = "exports"
        url = "http://127.0.0.1:9/exports"
        rules = ["large_export_created_then_deleted"]
        "#,
    )
    .unwrap();
    let hooks = spawn(config, store.path.clone()).unwrap();
    let router = hooks.router();
    let names =
        |alert: &Alert| -> Vec<String> { router.route(alert).into_iter().map(|s| s.0).collect() };
    assert_eq!(names(&alert("a", 1)), ["everything", "exports"]);
    let mut other = alert("b", 1);
    other.rule = "sensitive_table_bulk_read".into();
    other.severity = Severity::Critical;
    assert_eq!(names(&other), ["everything", "critical-only"]);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn delivery_waits_for_a_receiver_that_comes_back() {
    let port = closed_port().await;
    let addr = port.local_addr().unwrap();
    drop(port);
    let mut store = Store::new();
    let settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"http://{addr}/hook\"\n"
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));

    let status = store
        .wait_status("alert-1", |s| {
            s.first()
                .is_some_and(|d| d.state == DeliveryState::FailedRetrying && d.attempts >= 2)
        })
        .await;
    let error = status[0].last_error.clone().unwrap();
    assert!(error.contains("connect"), "{error}");

    let receiver = HttpReceiver::start(addr.port());
    let requests = wait_requests(&receiver, 1).await;
    assert_eq!(requests[0].json()["id"], "alert-1");
    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    assert!(status[0].attempts >= 3);
    assert_eq!(status[0].last_error, None);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_503_is_retried_until_accepted() {
    let receiver = HttpReceiver::statuses(0, &[503, 503], 200);
    let mut store = Store::new();
    let settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\n",
        receiver.url("/")
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));

    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    assert_eq!(status[0].attempts, 3);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.json()["id"] == "alert-1"));
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    // Accepts connections and holds them open without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut store = Store::new();
    let settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"http://{addr}/\"\ntimeout = \"300ms\"\n"
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    let status = store
        .wait_status("alert-1", |s| {
            s[0].state == DeliveryState::FailedRetrying && s[0].attempts >= 2
        })
        .await;
    let error = status[0].last_error.clone().unwrap();
    assert!(error.contains("timed out"), "{error}");
    hooks.shutdown().await.unwrap();
    silent.abort();
}

#[tokio::test]
async fn pending_deliveries_survive_a_worker_restart() {
    let port = closed_port().await;
    let addr = port.local_addr().unwrap();
    drop(port);
    let mut store = Store::new();
    let config = format!("[[alerts.webhook]]\nurl = \"http://{addr}/hook\"\n");
    let first = spawn_with(settings(&config), store.path.clone()).unwrap();
    store.enqueue(&first, &alert("alert-1", 1));
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::FailedRetrying)
        .await;
    first.shutdown().await.unwrap();

    // A new worker with its own connection finds the row on disk.
    let receiver = HttpReceiver::start(addr.port());
    let second = spawn_with(settings(&config), store.path.clone()).unwrap();
    let requests = wait_requests(&receiver, 1).await;
    assert_eq!(requests[0].json()["id"], "alert-1");
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limit_holds_extra_alerts_until_the_window_frees() {
    let receiver = HttpReceiver::start(0);
    let mut store = Store::new();
    let mut settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\nrate_per_minute = 2\n",
        receiver.url("/")
    ));
    let window = Duration::from_secs(5);
    settings.rate_window = window;
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    for n in 1..=4 {
        store.enqueue(&hooks, &alert(&format!("alert-{n}"), 1));
    }

    wait_requests(&receiver, 2).await;
    let held = store.status("alert-4");
    assert_eq!(held[0].state, DeliveryState::Pending);
    assert_eq!(held[0].attempts, 0);

    // Held, not dropped: the rest go out once the window frees, in order.
    let requests = wait_requests(&receiver, 4).await;
    let ids: Vec<_> = requests.iter().map(|r| r.json()["id"].clone()).collect();
    assert_eq!(ids, ["alert-1", "alert-2", "alert-3", "alert-4"]);
    // The limit lets 2 through per window: the third arrived a window after the first (less a
    // second for the first request's own way to the receiver), where an unlimited sink would
    // have sent all four at once.
    let spacing = requests[2].at.duration_since(requests[0].at);
    assert!(
        spacing >= window - Duration::from_secs(1),
        "the third alert came {spacing:?} after the first"
    );
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_repeat_is_sent_again_at_most_once_a_window() {
    let receiver = HttpReceiver::start(0);
    let mut store = Store::new();
    let mut settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\nrate_per_minute = 0\n",
        receiver.url("/")
    ));
    settings.rate_window = Duration::from_secs(2);
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    wait_requests(&receiver, 1).await;
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;

    store.enqueue(&hooks, &alert("alert-1", 2));
    store.enqueue(&hooks, &alert("alert-1", 3));
    assert_eq!(store.status("alert-1")[0].state, DeliveryState::Pending);
    let requests = wait_requests(&receiver, 2).await;
    assert_eq!(
        requests[1].json()["count"],
        3,
        "the repeat carries the latest count"
    );
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    // Delivered with nothing pending: the outbox holds nothing more to send, and once the worker
    // has shut down the receiver's count is final.
    hooks.shutdown().await.unwrap();
    assert_eq!(
        receiver.requests().len(),
        2,
        "two repeats folded into one message"
    );
    assert_eq!(store.status("alert-1")[0].attempts, 2);
}

#[tokio::test]
async fn permanent_rejections_stop_but_429_is_retried() {
    let rejecting = HttpReceiver::statuses(0, &[], 400);
    let throttling = HttpReceiver::statuses(0, &[429, 429, 429], 200);
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [alerts.retry]
        permanent_after = 2
        [[alerts.webhook]]
        name = "rejecting"
        url = "{}"
        [[alerts.webhook]]
        name = "throttling"
        url = "{}"
        "#,
        rejecting.url("/"),
        throttling.url("/"),
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));

    let status = store
        .wait_status("alert-1", |s| {
            s.iter()
                .all(|d| matches!(d.state, DeliveryState::Failed | DeliveryState::Delivered))
        })
        .await;
    let rejected = status.iter().find(|d| d.sink.0 == "rejecting").unwrap();
    assert_eq!(rejected.state.as_str(), "failed");
    assert_eq!(rejected.attempts, 2);
    assert!(rejected.last_error.as_deref().unwrap().contains("400"));
    assert_eq!(
        crate::present::table::Delivery(rejected).to_string(),
        "rejecting failed after 2 attempts: HTTP 400 Bad Request: scripted"
    );
    let throttled = status.iter().find(|d| d.sink.0 == "throttling").unwrap();
    assert_eq!(throttled.state, DeliveryState::Delivered);
    assert_eq!(throttled.attempts, 4);
    assert_eq!(rejecting.requests().len(), 2);
    hooks.shutdown().await.unwrap();
}
