//! The server's TLS identity and the client's trust.
//!
//! # Brief overview
//!
//! * [`Identity::load_or_create`]: on first start the server makes a
//!   self-signed certificate and key under `<data>/.tls/` (the key readable
//!   by its owner only) and reuses them afterwards, so the fingerprint
//!   clients pinned stays valid across restarts. The dot keeps the folder
//!   apart from stores (a store name cannot start with one); an identity
//!   in the `tls/` folder of older versions is moved there.
//! * [`load_cert_and_key`] and [`http_server_config`]: a certificate given
//!   for the HTTP port (`--tls-cert`, `--tls-key`), and the rustls
//!   configuration for HTTPS and WSS (ALPN `http/1.1`).
//! * [`fingerprint`]: lowercase hex SHA-256 of a certificate's DER bytes,
//!   what `strata-server` prints and `strata sync --fingerprint` takes.
//! * [`server_config`] and [`client_config`]: rustls configurations (TLS
//!   1.3, the *ring* provider, ALPN [`strata::sync::proto::ALPN`]). A client
//!   either pins one certificate by fingerprint ([`Trust::Pin`]) or trusts
//!   the certificates of a PEM or DER file ([`Trust::CaFile`]).
//!
//! A pinned certificate is accepted whatever its names and dates: the pin
//! is the identity. The handshake signature is still verified with the
//! provider's algorithms, so only the holder of the key can present it.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use strata::sync::proto::ALPN;

/// Directory of the identity inside the server's data directory: a name
/// no store can have.
pub const TLS_DIR: &str = ".tls";
/// Where versions before 0.3 kept it (a name a store could take).
pub const LEGACY_TLS_DIR: &str = "tls";
/// Largest certificate or key file read for the HTTP port.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;
/// The certificate, PEM.
pub const CERT_FILE: &str = "cert.pem";
/// The private key, PEM (PKCS#8), mode 0600.
pub const KEY_FILE: &str = "key.pem";
/// Length of a fingerprint in hex digits (SHA-256).
pub const FINGERPRINT_HEX_LEN: usize = 64;
/// Largest CA file read.
pub const CA_FILE_BYTES_MAX: u64 = 1 << 20;
/// Names every generated certificate holds.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

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
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
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

/// The server's certificate and key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// [`fingerprint`] of `cert`.
    pub fingerprint: String,
    /// Made by this call (first start) rather than loaded.
    pub created: bool,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

impl Identity {
    /// Loads the identity from `<data_dir>/.tls/`, or makes one there. A new
    /// certificate names localhost, 127.0.0.1, ::1 and `host` (the address
    /// the server is bound to, when it is a specific one).
    pub fn load_or_create(data_dir: &Path, host: Option<IpAddr>) -> Result<Identity, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        migrate_legacy(data_dir, &dir)?;
        if cert_path.exists() && key_path.exists() {
            return Identity::load(&cert_path, &key_path);
        }
        if cert_path.exists() || key_path.exists() {
            // A start that crashed between the two files: nobody can have
            // pinned a certificate that was never served.
            tracing::warn!(dir = %dir.display(), "incomplete TLS identity; making a new one");
        }
        let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
        if let Some(ip) = host.filter(|ip| !ip.is_unspecified()) {
            let ip = ip.to_string();
            if !names.contains(&ip) {
                names.push(ip);
            }
        }
        let certified = rcgen::generate_simple_self_signed(names)?;
        create_private_dir(&dir)?;
        // The key first: the certificate's presence says the pair is whole.
        write_durably(
            &key_path,
            certified.signing_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_durably(&cert_path, certified.cert.pem().as_bytes(), 0o644)?;
        sync_dir(&dir)?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| {
            TlsError::BadFile {
                path: key_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let fingerprint = fingerprint(&cert);
        tracing::info!(dir = %dir.display(), %fingerprint, "made a self-signed certificate");
        Ok(Identity {
            cert,
            key,
            fingerprint,
            created: true,
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let bad = |path: &Path, reason: String| TlsError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path)
                .map_err(io_err(key_path, "reading the key's permissions"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %key_path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the TLS key is readable by others; chmod 600 it"
                );
            }
        }
        let cert =
            CertificateDer::from_pem_file(cert_path).map_err(|e| bad(cert_path, e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_file(key_path).map_err(|e| bad(key_path, e.to_string()))?;
        let fingerprint = fingerprint(&cert);
        Ok(Identity {
            cert,
            key,
            fingerprint,
            created: false,
        })
    }
}

/// Moves an identity from the `tls/` folder of older versions to `.tls/`,
/// so that clients' pins stay valid; other files there (a store named
/// `tls`) stay where they are.
fn migrate_legacy(data_dir: &Path, dir: &Path) -> Result<(), TlsError> {
    let legacy = data_dir.join(LEGACY_TLS_DIR);
    let (old_cert, old_key) = (legacy.join(CERT_FILE), legacy.join(KEY_FILE));
    if dir.join(CERT_FILE).exists() || !(old_cert.exists() && old_key.exists()) {
        return Ok(());
    }
    create_private_dir(dir)?;
    // The key first: the certificate's presence says the pair is whole.
    std::fs::rename(&old_key, dir.join(KEY_FILE)).map_err(io_err(&old_key, "moving the key"))?;
    std::fs::rename(&old_cert, dir.join(CERT_FILE))
        .map_err(io_err(&old_cert, "moving the certificate"))?;
    sync_dir(dir)?;
    sync_dir(&legacy)?;
    // Empty now unless a store lives there too.
    let _ = std::fs::remove_dir(&legacy);
    tracing::info!(from = %legacy.display(), to = %dir.display(), "moved the TLS identity to its new folder");
    Ok(())
}

/// Creates the identity's folder, readable by its owner only.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir, "creating the TLS directory"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir, "restricting the TLS directory"))?;
    }
    Ok(())
}

/// Reads a file of at most [`PEM_FILE_BYTES_MAX`] bytes.
fn read_small(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let len = std::fs::metadata(path).map_err(io_err(path, what))?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(TlsError::BadFile {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is more than the limit of {PEM_FILE_BYTES_MAX}"),
        });
    }
    std::fs::read(path).map_err(io_err(path, what))
}

/// A certificate chain and its private key, both PEM, for the HTTP port
/// (`--tls-cert`, `--tls-key`): the server's certificate first, then any
/// intermediates.
pub fn load_cert_and_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let bad = |path: &Path, reason: String| TlsError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = read_small(cert_path, "reading the certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            cert_path,
            "no CERTIFICATE block; pass a PEM certificate chain".into(),
        ));
    }
    let pem = read_small(key_path, "reading the key")?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        bad(
            key_path,
            format!("{e}; pass a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;
    Ok((certs, key))
}

/// The HTTP port's rustls configuration (HTTPS and WSS): TLS 1.2 and 1.3,
/// ALPN `http/1.1`. The certificate must match the key.
pub fn http_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Writes `bytes` to `path` through a temporary file, synced, with `mode`.
fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&tmp)
        .map_err(io_err(&tmp, "creating a TLS file"))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp, "writing a TLS file"))?;
    std::fs::rename(&tmp, path).map_err(io_err(path, "renaming a TLS file"))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing the TLS directory"))?;
    Ok(())
}

/// The server's rustls configuration: TLS 1.3, no client certificates,
/// ALPN `strata-sync/1`.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
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
    fn identity_is_made_once_and_reused_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), Some("10.1.2.3".parse().unwrap())).unwrap();
        assert!(a.created);
        assert_eq!(a.fingerprint, fingerprint(&a.cert));
        assert_eq!(a.fingerprint.len(), FINGERPRINT_HEX_LEN);
        let b = Identity::load_or_create(dir.path(), None).unwrap();
        assert!(!b.created);
        assert_eq!(a.fingerprint, b.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join(TLS_DIR).join(KEY_FILE);
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Both configurations build; the CA file is the certificate itself.
        server_config(&b).unwrap();
        client_config(&Trust::Pin(b.fingerprint.to_uppercase())).unwrap();
        let ca = client_config(&Trust::CaFile(dir.path().join(TLS_DIR).join(CERT_FILE))).unwrap();
        assert_eq!(ca.config.alpn_protocols, vec![ALPN.to_vec()]);
    }

    #[test]
    fn an_identity_in_the_legacy_folder_moves_and_a_store_there_stays() {
        let dir = tempfile::tempdir().unwrap();
        let made = Identity::load_or_create(dir.path(), None).unwrap();
        let legacy = dir.path().join(LEGACY_TLS_DIR);
        std::fs::rename(dir.path().join(TLS_DIR), &legacy).unwrap();
        std::fs::write(legacy.join("store.marker"), b"a store named tls").unwrap();
        let moved = Identity::load_or_create(dir.path(), None).unwrap();
        assert!(!moved.created, "the old identity is kept, not remade");
        assert_eq!(moved.fingerprint, made.fingerprint);
        assert!(dir.path().join(TLS_DIR).join(KEY_FILE).exists());
        assert!(!legacy.join(KEY_FILE).exists() && !legacy.join(CERT_FILE).exists());
        assert!(legacy.join("store.marker").exists());
    }

    #[test]
    fn a_given_certificate_and_key_make_an_https_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path(), None).unwrap();
        let tls = dir.path().join(TLS_DIR);
        let (certs, key) = load_cert_and_key(&tls.join(CERT_FILE), &tls.join(KEY_FILE)).unwrap();
        assert_eq!(certs, vec![id.cert.clone()]);
        let config = http_server_config(certs, key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // Swapped files say which is wrong.
        let err = load_cert_and_key(&tls.join(KEY_FILE), &tls.join(CERT_FILE)).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        let err = load_cert_and_key(&tls.join(CERT_FILE), &tls.join(CERT_FILE)).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
    }

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
