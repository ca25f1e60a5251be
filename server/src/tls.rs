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
//! * [`server_config`]: the rustls configuration of the QUIC port (TLS
//!   1.3, the *ring* provider, ALPN [`strata::sync::proto::ALPN`]).
//! * The client's side ([`Trust`], [`client_config`], [`fingerprint`]) is
//!   `strata_sync::tls`, re-exported here: an application that only syncs
//!   links that crate, without certificate generation.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata::sync::proto::ALPN;
#[doc(hidden)]
pub use strata_sync::tls::io_err;
pub use strata_sync::tls::{
    CA_FILE_BYTES_MAX, ClientTls, FINGERPRINT_HEX_LEN, FingerprintMismatch, MismatchSlot, TlsError,
    Trust, client_config, fingerprint, parse_fingerprint, provider, read_certificates,
};

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
/// Names every generated certificate holds.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

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
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Generate(Box::new(e)))?;
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
}
