//! The operator identity file: one PEM bundle holding the operator's client certificate, its private
//! key and the collector's CA certificate (which the client pins).

use std::path::Path;

use bannin::pki::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "identity file {path} is readable by group or others (mode {mode:o}); run chmod 600 on it"
    )]
    Permissions { path: String, mode: u32 },
    #[error(
        "identity file {path} must hold a client certificate, its private key and the CA certificate; write it with `bannin-collector operator create`"
    )]
    Incomplete { path: String },
}

/// What a client needs to call the collector as an operator, all PEM.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

pub fn bundle(name: &str, material: &CertifiedKey, ca_pem: &str) -> String {
    format!(
        "# bannin operator identity for {name}: client certificate, private key, collector CA.\n\
         # Keep it secret; revoke with `bannin-collector revoke --operator {name}`.\n{}\n{}\n{}",
        material.cert_pem.trim_end(),
        material.key_pem.trim_end(),
        ca_pem.trim_end()
    )
}

/// The PEM blocks of a text: (label, the block's full text).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            current = Some((label.to_string(), format!("{line}\n")));
        } else if let Some((label, mut body)) = current.take() {
            body.push_str(line);
            body.push('\n');
            if line.starts_with("-----END ") {
                found.push((label, body));
            } else {
                current = Some((label, body));
            }
        }
    }
    found
}

pub fn load(path: &Path) -> Result<Identity, IdentityError> {
    let shown = path.display().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| IdentityError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions { path: shown, mode });
        }
    }
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: shown.clone(),
        source,
    })?;
    let blocks = blocks(&text);
    let mut certs = blocks.iter().filter(|(label, _)| label == "CERTIFICATE");
    let key = blocks
        .iter()
        .find(|(label, _)| label.ends_with("PRIVATE KEY"));
    match (certs.next(), key, certs.next()) {
        (Some(cert), Some(key), Some(ca)) => Ok(Identity {
            cert_pem: cert.1.clone(),
            key_pem: key.1.clone(),
            ca_pem: ca.1.clone(),
        }),
        _ => Err(IdentityError::Incomplete { path: shown }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::pki::{Authority, Principal, first_cert_der, principal_of};

    #[test]
    fn a_bundle_reads_back_as_certificate_key_and_ca() {
        let (ca, _) = Authority::create().unwrap();
        let material = ca.issue_client(&Principal::Operator("ana".into())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ana.pem");
        std::fs::write(&path, bundle("ana", &material, &ca.cert_pem)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load(&path),
                Err(IdentityError::Permissions { .. })
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let identity = load(&path).unwrap();
        let der = first_cert_der(&identity.cert_pem).unwrap();
        assert_eq!(principal_of(&der), Some(Principal::Operator("ana".into())));
        assert_eq!(identity.ca_pem.trim(), ca.cert_pem.trim());
        assert!(identity.key_pem.contains("PRIVATE KEY"));
    }
}
