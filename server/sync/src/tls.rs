//! The client's trust in a sync server: which certificate it accepts.
//!
//! * [`fingerprint`]: lowercase hex SHA-256 of a certificate's DER bytes,
//!   what `strata-server` prints and `strata sync --fingerprint` takes.
//! * [`client_config`]: the rustls configuration (TLS 1.3, the *ring*
//!   provider, ALPN [`strata::sync::proto::ALPN`]). A client either pins one
//!   certificate by fingerprint ([`Trust::Pin`]) or trusts the certificates
//!   of a PEM or DER file ([`Trust::CaFile`]).
//!
//! A pinned certificate is accepted whatever its names and dates: the pin
//! is the identity. The handshake signature is still verified with the
//! provider's algorithms, so only the holder of the key can present it.
//! The server's side (its identity, certificate generation) is in
//! `strata-server`'s `tls` module, which re-exports this one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use strata::sync::proto::ALPN;

/// Length of a fingerprint in hex digits (SHA-256).
pub const FINGERPRINT_HEX_LEN: usize = 64;
/// Largest CA file read.
pub const CA_FILE_BYTES_MAX: u64 = 1 << 20;

/// What is wrong with a certificate, key or trust setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(
        "{given:?} is not a certificate fingerprint: expected {FINGERPRINT_HEX_LEN} hex digits (SHA-256, as the server prints it)"
    )]
    BadFingerprint { given: String },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// Making the server's own certificate failed (the generator's error
    /// kept as the source; this crate does not link the generator).
    #[error("making a certificate: {0}")]
    Generate(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The `rustls` crypto provider Strata uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lowercase hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    debug_assert_eq!(hex.len(), FINGERPRINT_HEX_LEN);
    hex
}

/// A fingerprint as users type it (any case, with or without `:` between
/// bytes), normalised to lowercase hex.
pub fn parse_fingerprint(given: &str) -> Result<String, TlsError> {
    let hex: String = given
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() != FINGERPRINT_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError::BadFingerprint {
            given: given.chars().take(100).collect(),
        });
    }
    Ok(hex)
}

/// Maps an I/O error on `path` to [`TlsError::Io`].
#[doc(hidden)]
pub fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// How a client decides to trust the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint (hex).
    Pin(String),
    /// Certificates (PEM, or one DER certificate) in this file, as roots;
    /// the server's name is checked against its certificate.
    CaFile(PathBuf),
}

/// Filled by the pinning verifier when the server presented another
/// certificate, so the client can say which (the TLS error that ends the
/// handshake only carries text).
pub type MismatchSlot = Arc<Mutex<Option<FingerprintMismatch>>>;

/// The server presented a certificate other than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "certificate fingerprint mismatch: expected {expected}, got {got}; check the fingerprint the server printed at start"
)]
pub struct FingerprintMismatch {
    pub expected: String,
    pub got: String,
}

/// A client configuration and, for pins, where a mismatch is reported.
#[derive(Debug)]
pub struct ClientTls {
    pub config: rustls::ClientConfig,
    pub mismatch: Option<MismatchSlot>,
}

/// The client's rustls configuration for `trust`: TLS 1.3, ALPN
/// `strata-sync/1`.
pub fn client_config(trust: &Trust) -> Result<ClientTls, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let (mut config, mismatch) = match trust {
        Trust::Pin(hex) => {
            let slot: MismatchSlot = Arc::new(Mutex::new(None));
            let verifier = PinnedCert {
                expected: parse_fingerprint(hex)?,
                algorithms: provider.signature_verification_algorithms,
                mismatch: slot.clone(),
            };
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            (config, Some(slot))
        }
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::BadFile {
                    path: path.clone(),
                    reason: format!("not a usable certificate: {e}"),
                })?;
            }
            let config = builder.with_root_certificates(roots).with_no_client_auth();
            (config, None)
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(ClientTls { config, mismatch })
}

/// The certificates of a PEM file, or the one certificate of a DER file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let len = std::fs::metadata(path)
        .map_err(io_err(path, "reading the CA file"))?
        .len();
    if len > CA_FILE_BYTES_MAX {
        return Err(TlsError::BadFile {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is more than the limit of {CA_FILE_BYTES_MAX}"),
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path, "reading the CA file"))?;
    let bad = |reason: String| TlsError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block in this PEM file".into()));
        }
        return Ok(certs);
    }
    // DER: one certificate, an ASN.1 SEQUENCE.
    if bytes.first() != Some(&0x30) {
        return Err(bad(
            "neither PEM nor a DER certificate; pass the server's .tls/cert.pem".into(),
        ));
    }
    Ok(vec![CertificateDer::from(bytes)])
}

/// Accepts exactly the certificate whose SHA-256 is `expected`.
struct PinnedCert {
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
    mismatch: MismatchSlot,
}

impl fmt::Debug for PinnedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCert")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = FingerprintMismatch {
            expected: self.expected.clone(),
            got,
        };
        *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(mismatch.clone());
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(mismatch))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_checked_and_normalised() {
        assert_eq!(
            fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let colons = "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD";
        assert_eq!(parse_fingerprint(colons).unwrap(), fingerprint(b"abc"));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"g".repeat(64)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        assert!(client_config(&Trust::CaFile(junk)).is_err());
    }
}
