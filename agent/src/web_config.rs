//! `web_config_file`: TLS and basic auth for `/metrics`, in the file shape of
//! Prometheus' exporter toolkit (the `--web.config.file` of node_exporter,
//! <https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>),
//! so that a scrape configuration written for an exporter works unchanged.
//! This module owns the file's parsing and checks (at load, before anything
//! binds) and the basic-auth rule; TLS serving itself is
//! `domesday_runtime::tls`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domesday_model::secret::Secret;
use domesday_runtime::tls::{ClientAuth, TlsFiles, TlsVersion};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::ConfigError;

/// The validated web configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// `tls_server_config`, paths resolved against the file's directory.
    pub tls: Option<TlsFiles>,
    /// `basic_auth_users`: user → bcrypt hash (not the password, but not shown either).
    pub users: BTreeMap<String, Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<FileTls>,
    http_server_config: Option<serde_norway::Value>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    /// Accepted and ignored: Go itself ignores it since 1.18, rustls picks the strongest common suite.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    cert: Option<serde_norway::Value>,
    key: Option<serde_norway::Value>,
    client_ca: Option<serde_norway::Value>,
    cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
}

/// `path:line:col: message` at the first line of `text` that sets `key`.
fn at_key(path: &Path, text: &str, key: &str, message: String) -> ConfigError {
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            let t = l.trim_start();
            t.strip_prefix(key).filter(|r| r.trim_start().starts_with(':')).map(|_| (i + 1, l.len() - t.len() + 1))
        })
        .unwrap_or((1, 1));
    ConfigError::Value(format!("{}:{line}:{col}: key `{key}`: {message}", path.display()))
}

fn version(path: &Path, text: &str, key: &str, v: &str) -> Result<TlsVersion, ConfigError> {
    match v {
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        "TLS10" | "TLS11" => {
            Err(at_key(path, text, key, format!("{v} is obsolete and not offered; use TLS12 or TLS13")))
        }
        _ => Err(at_key(path, text, key, format!("{v:?} is not TLS12 or TLS13"))),
    }
}

impl WebConfig {
    /// Reads and checks `path`: unknown keys, keys of the toolkit that this
    /// agent does not implement, unreadable or mismatched certificate files and
    /// anything but bcrypt hashes are errors naming the file, line and key.
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let f: File = if text.trim().is_empty() {
            File {
                tls_server_config: None,
                http_server_config: None,
                basic_auth_users: BTreeMap::new(),
                rate_limit: None,
            }
        } else {
            serde_norway::from_str(&text).map_err(|e| {
                let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
                ConfigError::Value(format!("{}:{line}:{col}: {e}", path.display()))
            })?
        };
        let unsupported = |key: &str| {
            at_key(
                path,
                &text,
                key,
                "is part of the exporter web configuration but domesday-agent does not implement it: remove it (docs/security.md lists what is supported)"
                    .into(),
            )
        };
        if f.http_server_config.is_some() {
            return Err(unsupported("http_server_config"));
        }
        if f.rate_limit.is_some() {
            return Err(unsupported("rate_limit"));
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Relative paths are relative to the web configuration file, as in the toolkit.
        let resolve = |p: &Path| if p.is_relative() { base.join(p) } else { p.to_path_buf() };
        let tls = match f.tls_server_config {
            None => None,
            Some(t) => {
                for (key, given) in [
                    ("cert", t.cert.is_some()),
                    ("key", t.key.is_some()),
                    ("client_ca", t.client_ca.is_some()),
                    ("cipher_suites", t.cipher_suites.is_some()),
                    ("curve_preferences", t.curve_preferences.is_some()),
                    ("client_allowed_sans", t.client_allowed_sans.is_some()),
                ] {
                    if given {
                        return Err(unsupported(key));
                    }
                }
                let (Some(cert), Some(key)) = (t.cert_file, t.key_file) else {
                    return Err(at_key(
                        path,
                        &text,
                        "tls_server_config",
                        "needs both cert_file and key_file (PEM files)".into(),
                    ));
                };
                let mut files = TlsFiles::new(resolve(&cert), resolve(&key));
                files.client_ca_file = t.client_ca_file.as_deref().map(resolve);
                files.client_auth = match t.client_auth_type.as_deref().unwrap_or("NoClientCert") {
                    "NoClientCert" => ClientAuth::None,
                    "RequireAndVerifyClientCert" => ClientAuth::Require,
                    "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
                    other @ ("RequestClientCert" | "RequireAnyClientCert") => {
                        return Err(at_key(
                            path,
                            &text,
                            "client_auth_type",
                            format!(
                                "{other} accepts certificates nobody verified; use RequireAndVerifyClientCert with client_ca_file"
                            ),
                        ));
                    }
                    other => {
                        return Err(at_key(
                            path,
                            &text,
                            "client_auth_type",
                            format!(
                                "{other:?} is not NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                            ),
                        ));
                    }
                };
                if files.client_auth != ClientAuth::None && files.client_ca_file.is_none() {
                    return Err(at_key(path, &text, "client_auth_type", "needs client_ca_file".into()));
                }
                files.min_version =
                    t.min_version.as_deref().map(|v| version(path, &text, "min_version", v)).transpose()?;
                files.max_version =
                    t.max_version.as_deref().map(|v| version(path, &text, "max_version", v)).transpose()?;
                // Read now, so that a bad file fails `check-config` and `run` before anything binds.
                domesday_runtime::tls::server_config(&files).map_err(|e| {
                    at_key(
                        path,
                        &text,
                        e.key,
                        format!("{e} (check it with `openssl x509 -in FILE -noout` / `openssl pkey -in FILE -noout`)"),
                    )
                })?;
                Some(files)
            }
        };
        let mut users = BTreeMap::new();
        for (user, hash) in f.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(at_key(
                    path,
                    &text,
                    "basic_auth_users",
                    format!("user {user:?}: a name is non-empty, without ':'"),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(at_key(
                    path,
                    &text,
                    &user,
                    "is not a bcrypt hash ($2a$, $2b$ or $2y$); never put the password itself here: `htpasswd -nBC 10 USER` asks for it and prints USER:HASH".into(),
                ));
            }
            users.insert(user, Secret::new(hash));
        }
        Ok(WebConfig { tls, users })
    }
}

/// The basic-auth gate of `/metrics`: users and their bcrypt hashes (none: no
/// gate), and the last password each user proved, so that a scrape every few
/// seconds does not pay bcrypt each time (the exporter toolkit caches the same
/// way). The users are replaced when the web configuration is read again.
#[derive(Debug)]
pub struct BasicAuth {
    users: RwLock<BTreeMap<String, Secret>>,
    proven: Mutex<HashMap<String, Secret>>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, Secret>) -> Arc<Self> {
        Arc::new(BasicAuth { users: RwLock::new(users), proven: Mutex::new(HashMap::new()) })
    }

    /// Replaces the users; every password proven so far must be proven again against the new hashes.
    pub fn set_users(&self, users: BTreeMap<String, Secret>) {
        if let Ok(mut p) = self.proven.lock() {
            p.clear();
        }
        if let Ok(mut u) = self.users.write() {
            *u = users;
        }
    }

    /// Whether requests need a user's password (some user is configured).
    pub fn required(&self) -> bool {
        self.users.read().map(|u| !u.is_empty()).unwrap_or(true)
    }

    /// Whether `authorization` (the header's value) carries a configured user and its password.
    pub async fn check(self: &Arc<Self>, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else { return false };
        if let Ok(p) = self.proven.lock()
            && let Some(known) = p.get(&user)
            && bool::from(known.expose().as_bytes().ct_eq(password.as_bytes()))
        {
            return true;
        }
        // An unknown user is checked against a configured hash too, so that the
        // answer takes as long either way (user names are not told by timing).
        let (hash, known) = match self.users.read() {
            Ok(users) => (users.get(&user).or_else(|| users.values().next()).cloned(), users.contains_key(&user)),
            Err(_) => (None, false),
        };
        let Some(hash) = hash else { return false };
        let password = Secret::new(password);
        let p = password.clone();
        let h = hash.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(p.expose(), h.expose()).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        // Cached only if the user still has the hash it was checked against (no reload in between).
        let current = self.users.read().ok().and_then(|u| u.get(&user).cloned());
        if ok
            && current.is_some_and(|h| h.expose() == hash.expose())
            && let Ok(mut p) = self.proven.lock()
        {
            p.insert(user, password);
        }
        ok
    }
}

/// What serves `/metrics` from a web configuration file, read again on demand (`SIGHUP`): the users, and the TLS
/// files, client rule and versions. A file that fails to load, or that would switch between http and https (the
/// listener is chosen at start), changes nothing.
#[derive(Debug, Clone)]
pub struct WebReloader {
    pub path: PathBuf,
    pub auth: Arc<BasicAuth>,
    pub tls: Option<domesday_runtime::tls::TlsReloader>,
}

impl WebReloader {
    /// Reads `path` again and applies it; returns the number of users and whether TLS is on, or why nothing
    /// changed (the file, line and key; never a hash or a key's content).
    pub fn reload(&self) -> Result<(usize, bool), ConfigError> {
        let new = WebConfig::load(&self.path)?;
        match (&self.tls, new.tls) {
            (Some(tls), Some(files)) => tls
                .replace(files)
                .map_err(|e| ConfigError::Value(format!("{}: key `{}`: {e}", self.path.display(), e.key)))?,
            (None, None) => {}
            (had, _) => {
                let (from, to) = if had.is_some() { ("https", "http") } else { ("http", "https") };
                return Err(ConfigError::Value(format!(
                    "{}: tls_server_config: switching /metrics from {from} to {to} needs a restart",
                    self.path.display()
                )));
            }
        }
        let users = new.users.len();
        self.auth.set_users(new.users);
        Ok((users, self.tls.is_some()))
    }
}

/// Reads the web configuration again on every `SIGHUP`, logging the outcome; a failed reload keeps what is in use
/// and says why. Without a web configuration a `SIGHUP` is logged and ignored (rather than ending the process).
/// Runs until aborted.
pub async fn reload_on_hangup(web: Option<WebReloader>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: web_config_file will not be read again");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(web) = &web else {
            tracing::info!("SIGHUP: no web_config_file, nothing to reload");
            continue;
        };
        match web.reload() {
            Ok((users, tls)) => tracing::info!(
                file = %web.path.display(),
                users,
                tls,
                "SIGHUP: web_config_file reloaded; new connections and requests use it"
            ),
            Err(e) => tracing::error!(
                file = %web.path.display(),
                "SIGHUP: web_config_file reload failed, still serving the previous configuration: {e}"
            ),
        }
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(h: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, b64) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Middleware: 401 with `WWW-Authenticate: Basic` unless the request carries a
/// configured user's password, or no user is configured.
pub async fn require_basic_auth(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    let h = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !auth.required() || auth.check(h).await {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"domesday-agent\""))],
        "401 Unauthorized: /metrics needs a user of basic_auth_users\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, String> {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("web.yml");
        std::fs::write(&p, text).expect("write");
        WebConfig::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_and_unsupported_keys_are_refused_with_their_place() {
        let e = load("basic_auth_users: {}\ntls_srv_config:\n  cert_file: x\n").expect_err("unknown");
        assert!(e.contains("web.yml:2:") && e.contains("unknown field `tls_srv_config`"), "{e}");
        let e = load("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")
            .expect_err("unsupported");
        assert!(e.contains("web.yml:4:3: key `cipher_suites`") && e.contains("does not implement"), "{e}");
        let e = load("http_server_config:\n  http2: false\n").expect_err("unsupported");
        assert!(e.contains("web.yml:1:1: key `http_server_config`"), "{e}");
        let e = load("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n").expect_err("missing");
        assert!(e.contains("key `cert_file`") && e.contains("missing.crt") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn users_need_bcrypt_hashes_and_the_password_is_never_quoted() {
        let e = load("basic_auth_users:\n  alice: hunter2-plain\n").expect_err("plain");
        assert!(e.contains("web.yml:2:3: key `alice`") && e.contains("not a bcrypt hash"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let w = load(&format!("basic_auth_users:\n  alice: {hash}\n")).expect("valid");
        assert_eq!(w.users.len(), 1);
        assert!(!format!("{w:?}").contains(&hash));
        assert!(load("").expect("empty").users.is_empty());
    }

    #[tokio::test]
    async fn basic_auth_accepts_the_right_password_only() {
        use base64::Engine;
        let b = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), Secret::new(bcrypt::hash("s3cret", 4).expect("hash")));
        let auth = BasicAuth::new(users);
        assert!(auth.check(Some(&b("alice:s3cret"))).await);
        // Twice: the second from the cache.
        assert!(auth.check(Some(&b("alice:s3cret"))).await);
        assert!(!auth.check(Some(&b("alice:wrong"))).await);
        assert!(!auth.check(Some(&b("bob:s3cret"))).await);
        assert!(!auth.check(Some("Bearer s3cret")).await);
        assert!(!auth.check(None).await);
        // The `$2y$` hash of docs/security.md (htpasswd's prefix), password "example".
        let mut users = BTreeMap::new();
        users.insert(
            "prometheus".to_string(),
            Secret::new("$2y$10$I.BzQXmynb7yQTDKiI9mzusyS45IS/NYOzU72vrbkGiesmXflHRc2"),
        );
        let auth = BasicAuth::new(users);
        assert!(auth.check(Some(&b("prometheus:example"))).await);
        assert!(!auth.check(Some(&b("prometheus:Example"))).await);
    }

    #[tokio::test]
    async fn new_users_replace_the_old_and_a_password_proven_before_is_checked_again() {
        use base64::Engine;
        let b = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        let hash = |p: &str| Secret::new(bcrypt::hash(p, 4).expect("hash"));
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_string(), hash("old-pw"))]));
        assert!(auth.check(Some(&b("alice:old-pw"))).await, "proven, then cached");
        auth.set_users(BTreeMap::from([("alice".to_string(), hash("new-pw"))]));
        assert!(!auth.check(Some(&b("alice:old-pw"))).await, "the cached password outlived its hash");
        assert!(auth.check(Some(&b("alice:new-pw"))).await);
        assert!(auth.required());
        auth.set_users(BTreeMap::new());
        assert!(!auth.required(), "no users: no gate");
    }

    #[test]
    fn a_reload_applies_a_good_file_and_keeps_everything_on_a_bad_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("web.yml");
        let hash = bcrypt::hash("pw-1", 4).expect("hash");
        std::fs::write(&path, format!("basic_auth_users:\n  alice: {hash}\n")).expect("write");
        let web = WebReloader { path: path.clone(), auth: BasicAuth::new(BTreeMap::new()), tls: None };
        assert_eq!(web.reload().expect("good"), (1, false));
        assert!(web.auth.required());
        // A password where the hash goes: refused with its line, never quoted; alice stays.
        std::fs::write(&path, format!("basic_auth_users:\n  alice: {hash}\n  bob: plain-pw-9f1e\n")).expect("write");
        let e = web.reload().expect_err("a plain password").to_string();
        assert!(e.contains("web.yml:3:") && e.contains("bob") && !e.contains("plain-pw-9f1e"), "{e}");
        assert!(web.auth.users.read().expect("users").contains_key("alice"));
        assert!(!web.auth.users.read().expect("users").contains_key("bob"));
        // No users any more: no gate.
        std::fs::write(&path, "").expect("write");
        assert_eq!(web.reload().expect("empty"), (0, false));
        assert!(!web.auth.required());
    }
}
