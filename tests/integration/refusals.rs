//! Issue 2: what is not an enrolled agent's own, signed, well-formed batch is refused and nothing of
//! it is stored.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bannin::chain::GENESIS;
use bannin::event::{AgentAction, AgentEvent, Event};
use bannin::pb;
use bannin::pki::SERVER_NAME;
use ed25519_dalek::SigningKey;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::*;
use crate::sim::{forge_batch, numbered};

struct AgentFiles {
    id: String,
    key: SigningKey,
    cert: String,
    tls_key: String,
}

fn agent_files(state: &Path) -> AgentFiles {
    let seed = hex::decode(
        std::fs::read_to_string(state.join("signing.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    AgentFiles {
        id: agent_id(state),
        key: SigningKey::from_bytes(&seed.try_into().unwrap()),
        cert: std::fs::read_to_string(state.join("tls.pem")).unwrap(),
        tls_key: std::fs::read_to_string(state.join("tls.key")).unwrap(),
    }
}

fn batch(first_seq: u64, count: usize, signer: &SigningKey, agent_id: &str) -> pb::EventBatch {
    // The name agent A enrolled with: the collector refuses events that claim another host.
    let events = (0..count)
        .map(|_| Event::now("host-a", AgentEvent::new(AgentAction::Heartbeat)))
        .collect();
    let (mut batch, _) = forge_batch(
        agent_id,
        signer,
        first_seq,
        GENESIS,
        numbered(first_seq, events),
    );
    // first_seq left 0, as an agent from before the field sends it: the collector reads the seq
    // of the first event instead.
    batch.first_seq = 0;
    batch
}

/// Signs `batch`'s events as they now are, as a compromised agent holding the key would.
fn resign(batch: &mut pb::EventBatch, first_seq: u64, signer: &SigningKey, agent_id: &str) {
    let (signed, _) = forge_batch(agent_id, signer, first_seq, GENESIS, batch.events.clone());
    batch.signature = signed.signature;
    batch.first_seq = first_seq;
}

fn stored(collector: &Collector) -> usize {
    collector.events(&[]).len()
}

#[test]
fn a_used_or_unknown_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("c"));
    let token = collector.token();
    let enroll = |dir: &str, token: &str| {
        run_output(
            Command::new(AGENT)
                .arg("enroll")
                .arg("--collector")
                .arg(collector.url())
                .arg("--token")
                .arg(token)
                .arg("--ca-cert")
                .arg(collector.ca())
                .arg("--state-dir")
                .arg(tmp.path().join(dir)),
        )
    };
    assert!(enroll("a1", &token).status.success());
    let again = enroll("a2", &token);
    assert_eq!(again.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already used"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let unknown = enroll("a3", "bnt_not_a_token");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown"));
    assert!(!tmp.path().join("a2/identity.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_unenrolled_and_oversized_batches_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start_with(
        &tmp.path().join("c"),
        "127.0.0.1:0",
        &["--config", write_config(tmp.path()).to_str().unwrap()],
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    collector.enroll(&a, "host-a");
    collector.enroll(&b, "host-b");
    let (a, b) = (agent_files(&a), agent_files(&b));
    let before = stored(&collector);

    // No client certificate at all.
    let mut anonymous = pb::ingest_client::IngestClient::new(channel(&collector, None).await);
    let status = anonymous
        .submit(batch(1, 1, &a.key, &a.id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Agent A's certificate, but a batch signed with B's key and naming B.
    let mut as_a = pb::ingest_client::IngestClient::new(
        channel(&collector, Some((&a.cert, &a.tls_key))).await,
    );
    let status = as_a.submit(batch(1, 3, &b.key, &b.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A's certificate with B's key naming A: still not A's signature.
    let status = as_a.submit(batch(1, 3, &b.key, &a.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A bad signature.
    let mut tampered = batch(1, 3, &a.key, &a.id);
    tampered.signature[0] ^= 0xff;
    let status = as_a.submit(tampered).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Malformed event bytes: the signature is checked over the raw bytes first, so unsigned
    // garbage is refused as unauthenticated, and garbage the agent signed as malformed.
    let mut garbage = batch(1, 2, &a.key, &a.id);
    garbage.events[1] = vec![0xff, 0xff, 0xff, 0x01];
    let status = as_a.submit(garbage.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    resign(&mut garbage, 1, &a.key, &a.id);
    let status = as_a.submit(garbage).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Too many events for the configured limit, and a message over the size limit.
    let status = as_a.submit(batch(1, 101, &a.key, &a.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let mut huge = batch(1, 1, &a.key, &a.id);
    huge.events.push(vec![0u8; 2 * 1024 * 1024]);
    let status = as_a.submit(huge).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );

    // The stream goes on: a proper batch from A on the same connection is accepted.
    let good = batch(1, 2, &a.key, &a.id);
    let ack = as_a.submit(good.clone()).await.unwrap().into_inner();
    assert_eq!(ack.committed_through, 2);
    // Resending it stores nothing twice; different events under the same numbers are a fork.
    let ack = as_a.submit(good).await.unwrap().into_inner();
    assert_eq!((ack.inserted, ack.duplicates), (0, 2));
    let status = as_a.submit(batch(1, 2, &a.key, &a.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let events = collector.events(&[]);
    assert_eq!(events.len(), before + 2);
    assert!(events.iter().all(|e| e["agent_id"] == a.id.as_str()));
    assert!(collector.proc.has_line("batch refused"));
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        "[server]\nmax_batch_events = 100\nmax_message_bytes = 1048576\n",
    )
    .unwrap();
    path
}

#[test]
fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("c"));
    let other = Collector::start(&tmp.path().join("other"));
    let state = tmp.path().join("x");
    other.enroll(&state, "intruder");
    let files = agent_files(&state);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let ca = std::fs::read_to_string(collector.ca()).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(SERVER_NAME)
            .identity(Identity::from_pem(&files.cert, &files.tls_key));
        let channel = Endpoint::from_shared(collector.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await;
        match channel {
            Err(error) => Err(error.to_string()),
            Ok(channel) => pb::ingest_client::IngestClient::new(channel)
                .submit(batch(1, 1, &files.key, &files.id))
                .await
                .map(|_| ())
                .map_err(|status| status.to_string()),
        }
    });
    assert!(result.is_err(), "a foreign certificate was accepted");
    assert!(stored(&collector) == 0);
}
