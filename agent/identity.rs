//! The agent's identity in its state directory, and enrollment.
//!
//! Both private keys (the Ed25519 signing key and the TLS key) are generated here and never leave the
//! machine: the collector receives only a CSR and the public signing key.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bannin::pb;
use bannin::pki::{self, SERVER_NAME};
use bannin::securefs::{self, Access};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

const IDENTITY_FILE: &str = "identity.toml";
const SIGNING_KEY_FILE: &str = "signing.key";
const TLS_KEY_FILE: &str = "tls.key";
const TLS_CERT_FILE: &str = "tls.pem";
const CA_FILE: &str = "ca.pem";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub agent_id: String,
    pub name: String,
    pub collector: String,
}

/// Everything the agent needs to talk to its collector.
pub struct Identity {
    pub agent_id: String,
    pub name: String,
    pub collector: String,
    pub signing_key: SigningKey,
    pub tls_key_pem: String,
    pub tls_cert_pem: String,
    pub ca_pem: String,
}

pub struct EnrollArgs<'a> {
    pub collector: &'a str,
    pub token: &'a str,
    pub ca_cert: &'a Path,
    pub state_dir: &'a Path,
    pub name: Option<&'a str>,
}

pub fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "localhost".to_string())
}

/// What `enroll` and `run` call the state directory in errors.
const STATE_DIR: &str = "state directory";

/// Creates the state directory with mode 0700, or refuses an existing one that someone other than
/// the running user could have prepared: the keys written into it must not reach anyone else.
pub fn prepare_state_dir(dir: &Path) -> Result<()> {
    Ok(securefs::prepare_private_dir(dir, STATE_DIR)?)
}

/// A TLS channel to the collector that trusts only the pinned CA.
pub fn channel(collector: &str, ca_pem: &str, client: Option<(&str, &str)>) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(SERVER_NAME);
    if let Some((cert, key)) = client {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(collector.to_string())
        .with_context(|| format!("invalid collector URL {collector:?}"))?
        .tls_config(tls)
        .context("invalid TLS configuration")?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30));
    Ok(endpoint.connect_lazy())
}

pub async fn enroll(args: EnrollArgs<'_>) -> Result<IdentityFile> {
    if !args.collector.starts_with("https://") {
        bail!(
            "--collector must be an https:// URL (got {:?})",
            args.collector
        );
    }
    // Checked before the token is spent: a directory refused now is refused for good.
    prepare_state_dir(args.state_dir)?;
    let identity_path = args.state_dir.join(IDENTITY_FILE);
    if std::fs::symlink_metadata(&identity_path).is_ok() {
        bail!(
            "{} is already enrolled ({}); use a new --state-dir to enroll again",
            args.state_dir.display(),
            identity_path.display()
        );
    }
    let ca_pem = std::fs::read_to_string(args.ca_cert)
        .with_context(|| format!("cannot read the collector CA {}", args.ca_cert.display()))?;
    if pki::first_cert_der(&ca_pem).is_none() {
        bail!("{} holds no PEM certificate", args.ca_cert.display());
    }
    let name = args.name.map(str::to_string).unwrap_or_else(host_name);
    let signing_key = bannin::chain::generate_signing_key()
        .map_err(|error| anyhow::anyhow!("no randomness for a signing key: {error}"))?;
    let (tls_key_pem, csr_der) = pki::client_key_and_csr(&name)?;

    let mut client =
        pb::enrollment_client::EnrollmentClient::new(channel(args.collector, &ca_pem, None)?);
    let response = client
        .enroll(pb::EnrollRequest {
            token: args.token.to_string(),
            name: name.clone(),
            hostname: host_name(),
            csr_der,
            signing_public_key: signing_key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "enrollment refused by {}: {}",
                args.collector,
                status.message()
            )
        })?
        .into_inner();

    // Each file goes in under a fresh name and is renamed into place, so whatever an insider may
    // have left at these names (a symbolic link, a hard link to a file they own) is replaced, never
    // written through.
    let dir = args.state_dir;
    securefs::replace_file(
        dir,
        SIGNING_KEY_FILE,
        hex::encode(signing_key.to_bytes()).as_bytes(),
        Access::Private,
    )?;
    securefs::replace_file(dir, TLS_KEY_FILE, tls_key_pem.as_bytes(), Access::Private)?;
    securefs::replace_file(
        dir,
        TLS_CERT_FILE,
        response.certificate_pem.as_bytes(),
        Access::Public,
    )?;
    securefs::replace_file(dir, CA_FILE, ca_pem.as_bytes(), Access::Public)?;
    let file = IdentityFile {
        agent_id: response.agent_id,
        name,
        collector: args.collector.to_string(),
    };
    // Written last: its presence means enrollment finished.
    securefs::replace_file(
        dir,
        IDENTITY_FILE,
        toml::to_string(&file)?.as_bytes(),
        Access::Public,
    )?;
    Ok(file)
}

/// Reads the identity `enroll` wrote, refusing a state directory or file that others could have
/// swapped since.
pub fn load(state_dir: &Path) -> Result<Identity> {
    let path = state_dir.join(IDENTITY_FILE);
    if state_dir.exists() {
        securefs::check_private_dir(state_dir, STATE_DIR)?;
    }
    if std::fs::symlink_metadata(&path).is_err() {
        bail!(
            "{} is not enrolled (no {}); run bannin-agent enroll first",
            state_dir.display(),
            path.display()
        );
    }
    let read = |name: &str, access| securefs::read_owned_string(&state_dir.join(name), access);
    let file: IdentityFile = toml::from_str(&read(IDENTITY_FILE, Access::Public)?)
        .with_context(|| format!("{} is malformed", path.display()))?;
    let seed = hex::decode(read(SIGNING_KEY_FILE, Access::Private)?.trim_ascii())
        .context("signing.key is not hex")?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| anyhow::anyhow!("signing.key must hold 32 bytes"))?;
    Ok(Identity {
        agent_id: file.agent_id,
        name: file.name,
        collector: file.collector,
        signing_key: SigningKey::from_bytes(&seed),
        tls_key_pem: read(TLS_KEY_FILE, Access::Private)?,
        tls_cert_pem: read(TLS_CERT_FILE, Access::Public)?,
        ca_pem: read(CA_FILE, Access::Public)?,
    })
}
