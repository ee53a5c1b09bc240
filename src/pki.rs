//! The collector's small certificate authority and the identities it issues.
//!
//! Every certificate the CA issues names exactly one principal in a URI subject alternative name,
//! `urn:bannin:agent:<id>` or `urn:bannin:operator:<name>`. The collector reads who is calling from that
//! name in the verified client certificate, never from a message.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::{Duration, OffsetDateTime};

/// The name agents expect in the collector's certificate, whatever address they dial.
pub const SERVER_NAME: &str = "bannin-collector";

const URI_PREFIX: &str = "urn:bannin:";
/// An agent certificate's second URI: the Ed25519 key that signs its batches, bound by the CA.
const SIGNING_KEY_PREFIX: &str = "urn:bannin:signing-key:ed25519:";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {source}")]
    Generate {
        #[from]
        source: rcgen::Error,
    },
    #[error("certificate signing request is not valid: {reason}")]
    BadCsr { reason: String },
    #[error("{what} is not a valid PEM {expected}")]
    BadPem {
        what: String,
        expected: &'static str,
    },
}

/// Who holds a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Agent(String),
    Operator(String),
}

impl Principal {
    fn uri(&self) -> String {
        match self {
            Principal::Agent(id) => format!("{URI_PREFIX}agent:{id}"),
            Principal::Operator(name) => format!("{URI_PREFIX}operator:{name}"),
        }
    }

    fn common_name(&self) -> String {
        match self {
            Principal::Agent(id) => format!("bannin agent {id}"),
            Principal::Operator(name) => format!("bannin operator {name}"),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The collector's certificate authority, loaded from PEM.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl Authority {
    /// A new CA, valid for 20 years.
    pub fn create() -> Result<(Authority, CertifiedKey), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bannin collector CA");
        dn.push(DnType::OrganizationName, "bannin");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * 20);
        let cert = params.self_signed(&key)?;
        let material = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let authority = Authority {
            issuer: Issuer::new(params, key),
            cert_pem: material.cert_pem.clone(),
        };
        Ok((authority, material))
    }

    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| PkiError::BadPem {
            what: "the CA key".into(),
            expected: "private key",
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|_| PkiError::BadPem {
            what: "the CA certificate".into(),
            expected: "certificate",
        })?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The collector's own server certificate, for `SERVER_NAME`, localhost and the given names.
    pub fn issue_server(&self, extra_names: &[String]) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut names = vec![SERVER_NAME.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * 5);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a client's CSR for `principal`. Only the CSR's public key is used: the names in the
    /// certificate are the collector's choice, never the requester's.
    pub fn sign_client_csr(
        &self,
        csr_der: &[u8],
        principal: &Principal,
    ) -> Result<String, PkiError> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let csr =
            CertificateSigningRequestParams::from_der(&der).map_err(|error| PkiError::BadCsr {
                reason: error.to_string(),
            })?;
        let params = client_params(principal)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// Signs an agent's CSR, binding in the certificate both its identity and the Ed25519 key that
    /// signs its batches: a key swapped in the store no longer matches a certificate the CA issued.
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        agent_id: &str,
        signing_key: &[u8],
    ) -> Result<String, PkiError> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let csr =
            CertificateSigningRequestParams::from_der(&der).map_err(|error| PkiError::BadCsr {
                reason: error.to_string(),
            })?;
        let mut params = client_params(&Principal::Agent(agent_id.to_string()))?;
        let uri = format!("{SIGNING_KEY_PREFIX}{}", hex::encode(signing_key))
            .try_into()
            .map_err(|error: rcgen::Error| PkiError::Generate { source: error })?;
        params.subject_alt_names.push(SanType::URI(uri));
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// A client certificate with a key generated here (operators: the credential file holds both).
    pub fn issue_client(&self, principal: &Principal) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let params = client_params(principal)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn client_params(principal: &Principal) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, principal.common_name());
    let uri = principal
        .uri()
        .try_into()
        .map_err(|error: rcgen::Error| PkiError::Generate { source: error })?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365 * 5);
    Ok(params)
}

/// A new TLS key for a client and a CSR for it (the key never leaves the client).
pub fn client_key_and_csr(name: &str) -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The principal named in a verified client certificate (DER), if it is one of ours.
pub fn principal_of(cert_der: &[u8]) -> Option<Principal> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            let rest = uri.strip_prefix(URI_PREFIX)?;
            if let Some(id) = rest.strip_prefix("agent:") {
                Some(Principal::Agent(id.to_string()))
            } else {
                rest.strip_prefix("operator:")
                    .map(|name| Principal::Operator(name.to_string()))
            }
        }
        _ => None,
    })
}

/// The batch-signing key an agent certificate binds, if it names one.
pub fn signing_key_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            hex::decode(uri.strip_prefix(SIGNING_KEY_PREFIX)?).ok()
        }
        _ => None,
    })
}

/// Whether the CA in `ca_pem` signed the certificate `cert_der`.
pub fn issued_by(cert_der: &[u8], ca_pem: &str) -> bool {
    let Some(ca_der) = first_cert_der(ca_pem) else {
        return false;
    };
    let (Ok((_, ca)), Ok((_, cert))) = (
        x509_parser::parse_x509_certificate(&ca_der),
        x509_parser::parse_x509_certificate(cert_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The first certificate in a PEM text, as DER.
pub fn first_cert_der(pem_text: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .next()?
        .ok()
        .map(|der| der.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_csr_names_the_collectors_choice_of_principal() {
        let (ca, material) = Authority::create().unwrap();
        let reloaded = Authority::load(&material.cert_pem, &material.key_pem).unwrap();
        let (_key, csr) = client_key_and_csr("urn:bannin:agent:forged").unwrap();
        let cert_pem = reloaded
            .sign_client_csr(&csr, &Principal::Agent("a-1".into()))
            .unwrap();
        let der = first_cert_der(&cert_pem).unwrap();
        assert_eq!(principal_of(&der), Some(Principal::Agent("a-1".into())));
        let operator = ca.issue_client(&Principal::Operator("ana".into())).unwrap();
        let der = first_cert_der(&operator.cert_pem).unwrap();
        assert_eq!(principal_of(&der), Some(Principal::Operator("ana".into())));
        assert!(
            ca.sign_client_csr(b"garbage", &Principal::Agent("x".into()))
                .is_err()
        );
        // An agent certificate binds its signing key, and only its own CA issued it.
        let (_key, csr) = client_key_and_csr("agent").unwrap();
        let agent = reloaded.sign_agent_csr(&csr, "a-2", &[7u8; 32]).unwrap();
        let der = first_cert_der(&agent).unwrap();
        assert_eq!(principal_of(&der), Some(Principal::Agent("a-2".into())));
        assert_eq!(signing_key_of(&der), Some(vec![7u8; 32]));
        assert!(issued_by(&der, &material.cert_pem));
        let (_other, other_material) = Authority::create().unwrap();
        assert!(!issued_by(&der, &other_material.cert_pem));
    }
}
