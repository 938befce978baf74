//! TLS serving that both binaries share (the collector's API, the agent's
//! `/metrics`): a rustls server configuration read from PEM files, checked
//! when the configuration loads, reloadable (SIGHUP) without touching
//! established connections, and an `axum::serve` listener that runs each
//! handshake on its own task, bounded in time and in number, so a slow or
//! silent client never holds the accept loop.
//!
//! Error messages name the file and what is wrong with it, never its content:
//! a key file is a secret.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for, and verified against the client CA when one is given.
    VerifyIfGiven,
    /// Required and verified against the client CA: the handshake fails without one.
    Require,
}

/// A TLS protocol version (rustls speaks 1.2 and 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The files (and client rule) a server configuration is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the CA(s) that sign the clients' certificates.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

impl TlsFiles {
    /// Certificate and key, no client certificates, rustls' default versions.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        TlsFiles {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            client_auth: ClientAuth::None,
            min_version: None,
            max_version: None,
        }
    }
}

/// What is wrong with one of the files. `key` names the file's role
/// (`cert_file`, `key_file`, `client_ca_file`) so that the caller can point at
/// the configuration key; the message never quotes the file's content.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub message: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, message: impl Into<String>) -> Self {
        TlsError { key, path: path.to_path_buf(), message: message.into() }
    }
}

/// A PEM error in words, without the bytes it met (a key file's lines are secret).
fn pem_reason(e: &rustls_pki_types::pem::Error, what: &str) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read it: {e}"),
        Error::NoItemsFound => format!("holds no {what} (a PEM block such as `-----BEGIN {}-----`)", pem_label(what)),
        Error::MissingSectionEnd { .. } => format!("a PEM block of the {what} has no END line (truncated file?)"),
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        Error::Base64Decode(_) => format!("the base64 of a PEM block of the {what} is damaged"),
        Error::SectionTooLarge => "a PEM block is larger than 256 MB".into(),
        _ => format!("is not a PEM {what}"),
    }
}

fn pem_label(what: &str) -> &'static str {
    if what.contains("key") { "PRIVATE KEY" } else { "CERTIFICATE" }
}

fn read_certs(key: &'static str, path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read first so that a missing file says so plainly.
    let bytes = std::fs::read(path).map_err(|e| TlsError::new(key, path, format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, pem_reason(&e, what)))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, pem_reason(&rustls_pki_types::pem::Error::NoItemsFound, what)));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::new("key_file", path, format!("cannot read it: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::new("key_file", path, pem_reason(&e, "private key")))
}

/// Builds the rustls server configuration from the files: every file is
/// read and checked (the key must match the certificate).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("cert_file", &files.cert_file, "certificate")?;
    let key = read_key(&files.key_file)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| files.min_version.is_none_or(|m| *v >= m) && files.max_version.is_none_or(|m| *v <= m))
            .map(|(_, p)| p)
            .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::new("cert_file", &files.cert_file, format!("TLS versions: {e}")))?;
    let builder = match (&files.client_ca_file, files.client_auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => {
            return Err(TlsError::new(
                "client_ca_file",
                Path::new("<none>"),
                "client certificates are asked for but no client CA file is given",
            ));
        }
        (Some(ca), auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("client_ca_file", ca, "CA certificate")? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::new("client_ca_file", ca, format!("not a usable CA certificate: {e}")))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::VerifyIfGiven { v.allow_unauthenticated() } else { v };
            let v = v
                .build()
                .map_err(|e| TlsError::new("client_ca_file", ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::new(
            "key_file",
            &files.key_file,
            format!("does not fit the certificate in {}: {e}", files.cert_file.display()),
        )
    })?;
    // axum serves HTTP/1.1 only here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks a CA bundle a client trusts (`ca_file`) and returns its PEM.
pub fn read_ca_bundle(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::new(key, path, format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, pem_reason(&e, "CA certificate")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            key,
            path,
            pem_reason(&rustls_pki_types::pem::Error::NoItemsFound, "CA certificate"),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| TlsError::new(key, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(bytes)
}

/// Checks a client certificate and its key (they must fit) and returns both
/// as one PEM (certificate chain, then key), what `reqwest::Identity::from_pem`
/// takes. The PEM holds the private key: keep it in a `Secret`.
pub fn read_client_identity(cert_file: &Path, key_file: &Path) -> Result<String, TlsError> {
    let certs = read_certs("cert_file", cert_file, "certificate")?;
    let key = read_key(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("cert_file", cert_file, format!("TLS versions: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(certs, key)
        .map_err(|e| {
            TlsError::new("key_file", key_file, format!("does not fit the certificate in {}: {e}", cert_file.display()))
        })?;
    let read = |key: &'static str, p: &Path| {
        std::fs::read_to_string(p).map_err(|e| TlsError::new(key, p, format!("cannot read it as text: {e}")))
    };
    let mut pem = read("cert_file", cert_file)?;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(&read("key_file", key_file)?);
    Ok(pem)
}

/// The current server configuration and the files it came from; cheap to
/// clone (shared). A reload swaps the configuration new handshakes use;
/// established connections keep the one they were made with.
#[derive(Clone)]
pub struct TlsReloader {
    /// The files and the configuration built from them, swapped together.
    current: Arc<RwLock<(Arc<TlsFiles>, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader").field("files", &self.files()).finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Reads the files now (a bad one is an error before anything binds).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsReloader { current: Arc::new(RwLock::new((Arc::new(files), config))) })
    }

    /// The files the configuration in use was built from.
    pub fn files(&self) -> Arc<TlsFiles> {
        self.current.read().map(|c| c.0.clone()).unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// Reads the files again; on any error the current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.replace((*self.files()).clone())
    }

    /// Builds the configuration from other files (and client rule, versions), read now; on any error the current
    /// files and configuration stay. The agent uses it when its web configuration file names new ones.
    pub fn replace(&self, files: TlsFiles) -> Result<(), TlsError> {
        let config = server_config(&files)?;
        if let Ok(mut c) = self.current.write() {
            *c = (Arc::new(files), config);
        }
        Ok(())
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|c| TlsAcceptor::from(c.1.clone()))
    }
}

/// Reloads `tls` on every SIGHUP, logging the outcome; a failed reload keeps
/// the certificate in use and says why. Without TLS a SIGHUP is logged and
/// ignored (rather than ending the process, its default). Runs until aborted.
pub async fn reload_on_hangup(tls: Option<TlsReloader>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            let Some(tls) = &tls else {
                tracing::info!("SIGHUP: no TLS configured, nothing to reload");
                continue;
            };
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert_file = %tls.files().cert_file.display(),
                    "SIGHUP: TLS certificate and key reloaded; new connections use them"
                ),
                Err(e) => tracing::error!(
                    file = %e.path.display(),
                    key = e.key,
                    "SIGHUP: TLS reload failed, still serving the previous certificate: {e}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        std::future::pending::<()>().await
    }
}

/// An `axum::serve` listener that hands over connections once their TLS
/// handshake completed. Handshakes run on their own tasks (at most 256 at
/// once, each bounded by [`HANDSHAKE_TIMEOUT`]); a failed one is logged at
/// debug level and closed. Dropping the listener stops accepting.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl TlsListener {
    /// Must be called inside a tokio runtime (spawns the accept task).
    pub fn new(tcp: TcpListener, tls: TlsReloader) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, tls, tx)).abort_handle();
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(tcp: TcpListener, tls: TlsReloader, tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin
                // (what axum's own TCP listener does).
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(acceptor) = tls.acceptor() else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let _ = tx.send((s, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (it only does when aborted): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Self {
            Pki { dir: tempfile::tempdir().expect("tmp") }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        /// A self-signed server certificate for localhost; returns (cert, key) paths.
        fn server(&self, prefix: &str) -> (PathBuf, PathBuf) {
            let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
            let (cp, kp) = (self.path(&format!("{prefix}.crt")), self.path(&format!("{prefix}.key")));
            std::fs::write(&cp, c.cert.pem()).expect("write");
            std::fs::write(&kp, c.signing_key.serialize_pem()).expect("write");
            (cp, kp)
        }
    }

    #[test]
    fn files_are_checked_and_errors_name_the_file_not_its_content() {
        let pki = Pki::new();
        let (cert, key) = pki.server("a");
        assert!(server_config(&TlsFiles::new(&cert, &key)).is_ok());

        let e = server_config(&TlsFiles::new(pki.path("missing.crt"), &key)).expect_err("missing");
        assert_eq!(e.key, "cert_file");
        assert!(e.to_string().contains("missing.crt") && e.to_string().contains("cannot read"), "{e}");

        // The key where the certificate should be: no certificate in it, and not a word of the key.
        let e = server_config(&TlsFiles::new(&key, &key)).expect_err("key as cert");
        assert_eq!(e.key, "cert_file");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let key_text = std::fs::read_to_string(&key).expect("read");
        for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!e.to_string().contains(line), "{e}");
        }

        // A truncated key.
        let cut = pki.path("cut.key");
        std::fs::write(&cut, &key_text[..key_text.len() / 2]).expect("write");
        let e = server_config(&TlsFiles::new(&cert, &cut)).expect_err("cut");
        assert_eq!(e.key, "key_file");
        assert!(e.to_string().contains("no END line"), "{e}");

        // Another certificate's key.
        let (_, other_key) = pki.server("b");
        let e = server_config(&TlsFiles::new(&cert, &other_key)).expect_err("mismatch");
        assert_eq!(e.key, "key_file");
        assert!(e.to_string().contains("does not fit the certificate"), "{e}");

        // Client certificates without a CA.
        let mut f = TlsFiles::new(&cert, &key);
        f.client_auth = ClientAuth::Require;
        assert_eq!(server_config(&f).expect_err("no ca").key, "client_ca_file");
        f.client_ca_file = Some(cert.clone());
        assert!(server_config(&f).is_ok());
    }

    #[test]
    fn a_failed_reload_keeps_the_configuration_in_use() {
        let pki = Pki::new();
        let (cert, key) = pki.server("a");
        let r = TlsReloader::load(TlsFiles::new(&cert, &key)).expect("load");
        let before = r.current.read().map(|c| Arc::as_ptr(&c.1)).expect("lock");
        std::fs::write(&cert, "garbage").expect("write");
        assert!(r.reload().is_err());
        assert_eq!(r.current.read().map(|c| Arc::as_ptr(&c.1)).expect("lock"), before);
        let (c2, k2) = pki.server("b");
        std::fs::copy(&c2, &cert).expect("copy");
        std::fs::copy(&k2, &key).expect("copy");
        r.reload().expect("reload");
        assert_ne!(r.current.read().map(|c| Arc::as_ptr(&c.1)).expect("lock"), before);
    }

    #[test]
    fn a_replace_takes_other_files_and_a_bad_one_keeps_the_files_in_use() {
        let pki = Pki::new();
        let (cert, key) = pki.server("a");
        let r = TlsReloader::load(TlsFiles::new(&cert, &key)).expect("load");
        let before = r.current.read().map(|c| Arc::as_ptr(&c.1)).expect("lock");
        let (c2, k2) = pki.server("b");
        assert_eq!(r.replace(TlsFiles::new(&c2, &cert)).expect_err("a certificate as the key").key, "key_file");
        assert_eq!(r.files().cert_file, cert);
        assert_eq!(r.current.read().map(|c| Arc::as_ptr(&c.1)).expect("lock"), before);
        r.replace(TlsFiles::new(&c2, &k2)).expect("replace");
        assert_eq!((r.files().cert_file.clone(), r.files().key_file.clone()), (c2.clone(), k2.clone()));
        assert_ne!(r.current.read().map(|c| Arc::as_ptr(&c.1)).expect("lock"), before);
        // A reload now reads the new files.
        r.reload().expect("reload");
        assert_eq!(r.files().cert_file, c2);
    }

    #[test]
    fn client_files_are_checked() {
        let pki = Pki::new();
        let (cert, key) = pki.server("a");
        let pem = read_client_identity(&cert, &key).expect("identity");
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
        let (_, other) = pki.server("b");
        assert_eq!(read_client_identity(&cert, &other).expect_err("mismatch").key, "key_file");
        assert!(read_ca_bundle("ca_file", &cert).is_ok());
        let e = read_ca_bundle("ca_file", &key).expect_err("key as CA");
        assert!(e.to_string().contains("holds no CA certificate"), "{e}");
    }

    #[test]
    fn versions_can_be_narrowed() {
        let pki = Pki::new();
        let (cert, key) = pki.server("a");
        let mut f = TlsFiles::new(&cert, &key);
        f.min_version = Some(TlsVersion::Tls13);
        assert!(server_config(&f).is_ok());
        f.max_version = Some(TlsVersion::Tls12);
        assert!(server_config(&f).is_err(), "no version left");
    }
}
