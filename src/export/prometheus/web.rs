//! The Prometheus exporter-toolkit web configuration (`--web.config.file`, the same
//! YAML as node_exporter's): TLS with a minimum and maximum version, cipher suites and
//! client certificates, and bcrypt basic auth. The file is re-read when it changes; a
//! bad file is refused with its line and key, and the last good one stays in force.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}:{line}:{column}: key `{key}`: {message}")]
    Located {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{file}: key `{key}`: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    #[serde(default)]
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    http_server_config: Option<HttpServerConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: String,
    key_file: String,
    #[serde(default)]
    client_auth_type: ClientAuth,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    min_version: Option<TlsVersion>,
    #[serde(default)]
    max_version: Option<TlsVersion>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    /// Accepted for compatibility: the server's order always wins here.
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    /// Accepted for compatibility: rustls picks among its own safe curves.
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    /// Accepted for compatibility; the endpoint speaks HTTP/1.1.
    #[serde(default, rename = "http2")]
    _http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

/// What the endpoint enforces, from one good version of the file.
pub struct Security {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name to bcrypt hash.
    users: BTreeMap<String, String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Credentials already checked, by SHA-256 of user and password: bcrypt costs tens
    /// of milliseconds by design, and a scraper sends the same ones every time.
    verified: Mutex<HashMap<[u8; 32], bool>>,
}

/// Verifications remembered at most; beyond, the memory starts over.
const VERIFIED_CACHE: usize = 1024;

/// A bcrypt hash checked when the user is unknown, so that an unknown user costs the
/// same time as a known one with a wrong password (no user enumeration by timing).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

impl Security {
    pub fn open() -> Security {
        Security {
            tls: None,
            users: BTreeMap::new(),
            headers: Vec::new(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn needs_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// The verdict already reached for these credentials, if any: answered at once,
    /// without bcrypt. A missing or malformed header is refused here too.
    pub fn remembered(&self, header: Option<&str>) -> Option<bool> {
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return Some(false);
        };
        self.lock_verified()
            .get(&cache_key(&user, &password))
            .copied()
    }

    /// Whether an `Authorization` header value names a user with their password.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return false;
        };
        let key = cache_key(&user, &password);
        if let Some(known) = self.lock_verified().get(&key) {
            return *known;
        }
        let (hash, known_user) = match self.users.get(&user) {
            Some(hash) => (hash.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = bcrypt::verify(&password, hash).unwrap_or(false) && known_user;
        let mut verified = self.lock_verified();
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(key, ok);
        ok
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What remembers a verdict: a digest, never the password itself.
fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&(user.len() as u64).to_le_bytes());
    context.update(user.as_bytes());
    context.update(password.as_bytes());
    let digest = context.finish();
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// `Basic base64(user:password)` as user and password.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    // A header is short; a long one is not worth decoding.
    if encoded.len() > 4096 {
        return None;
    }
    let decoded = crate::export::base64_decode(encoded)?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Loads and checks the file: every error names the file, and where it can, the line
/// and key.
pub fn load(path: &Path) -> Result<Security, WebConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| WebConfigError::File {
        file: file.clone(),
        message: format!("cannot read the web configuration: {err}"),
    })?;
    let parsed: WebConfigFile = if text.trim().is_empty() {
        WebConfigFile::default()
    } else {
        let deserializer = serde_yaml::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let (line, column) = inner.location().map_or((1, 1), |l| (l.line(), l.column()));
            let mut message = inner.to_string();
            if let Some(cut) = message.find(" at line ") {
                message.truncate(cut);
            }
            WebConfigError::Located {
                file: file.clone(),
                line,
                column,
                key,
                message,
            }
        })?
    };
    // Checks after parsing name their key and, found by its last segment, its line.
    let key_error = |key: &str, message: String| {
        let last = key.rsplit('.').next().unwrap_or(key);
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{last}:")))
            .map(|index| index + 1);
        match line {
            Some(line) => WebConfigError::Located {
                file: file.clone(),
                line,
                column: 1,
                key: key.to_string(),
                message,
            },
            None => WebConfigError::Key {
                file: file.clone(),
                key: key.to_string(),
                message,
            },
        }
    };
    // Relative paths are relative to the web configuration, as in the toolkit.
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| -> PathBuf { base.join(p) };
    for (user, hash) in &parsed.basic_auth_users {
        if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
            return Err(key_error(
                &format!("basic_auth_users.{user}"),
                "must be a bcrypt hash ($2a$, $2b$ or $2y$)".into(),
            ));
        }
    }
    let tls = match &parsed.tls_server_config {
        None => None,
        Some(tls) => Some(Arc::new(server_config(tls, &resolve, &key_error)?)),
    };
    let headers = parsed
        .http_server_config
        .map(|http| http.headers.into_iter().collect())
        .unwrap_or_default();
    Ok(Security {
        tls,
        users: parsed.basic_auth_users,
        headers,
        verified: Mutex::new(HashMap::new()),
    })
}

fn server_config(
    tls: &TlsServerConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
    key_error: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<rustls::ServerConfig, WebConfigError> {
    let _ = (tls.prefer_server_cipher_suites, &tls.curve_preferences);
    if tls.cert_file.is_empty() || tls.key_file.is_empty() {
        return Err(key_error(
            "tls_server_config",
            "cert_file and key_file are both required".into(),
        ));
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(resolve(&tls.cert_file))
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|err| key_error("tls_server_config.cert_file", err.to_string()))?;
    if certs.is_empty() {
        return Err(key_error(
            "tls_server_config.cert_file",
            "holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(resolve(&tls.key_file))
        .map_err(|err| key_error("tls_server_config.key_file", err.to_string()))?;
    let versions = protocol_versions(tls, key_error)?;
    let provider = crypto_provider(tls, key_error)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|err| key_error("tls_server_config", err.to_string()))?;
    let builder = match client_verifier(tls, resolve, key_error)? {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| key_error("tls_server_config.key_file", err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS versions offered, from `min_version` and `max_version`: 1.2 and 1.3 only.
fn protocol_versions(
    tls: &TlsServerConfig,
    key_error: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, WebConfigError> {
    let min = tls.min_version.unwrap_or(TlsVersion::TLS12);
    let max = tls.max_version.unwrap_or(TlsVersion::TLS13);
    if min > max {
        return Err(key_error(
            "tls_server_config.min_version",
            "is above max_version".into(),
        ));
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min <= TlsVersion::TLS12 && max >= TlsVersion::TLS12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::TLS13 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        return Err(key_error(
            "tls_server_config.max_version",
            "TLS 1.0 and 1.1 are not offered: use TLS12 or TLS13".into(),
        ));
    }
    Ok(versions)
}

/// The ring provider, with the TLS 1.2 cipher suites `cipher_suites` names, if any.
fn crypto_provider(
    tls: &TlsServerConfig,
    key_error: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<rustls::crypto::CryptoProvider, WebConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        let mut chosen = Vec::new();
        for name in &tls.cipher_suites {
            let suite = rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .find(|s| format!("{:?}", s.suite()) == *name)
                .ok_or_else(|| {
                    key_error(
                        "tls_server_config.cipher_suites",
                        format!("`{name}` is not a supported TLS 1.2 cipher suite"),
                    )
                })?;
            chosen.push(*suite);
        }
        // As in the toolkit, the list governs TLS 1.2; TLS 1.3 keeps its own suites.
        chosen.extend(
            rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .copied(),
        );
        provider.cipher_suites = chosen;
    }
    Ok(provider)
}

/// How client certificates are checked, from `client_auth_type`; None: not asked for.
fn client_verifier(
    tls: &TlsServerConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
    key_error: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, WebConfigError> {
    let kind = match tls.client_auth_type {
        ClientAuth::NoClientCert | ClientAuth::RequestClientCert => return Ok(None),
        kind => kind,
    };
    if tls.client_ca_file.is_empty() {
        return Err(key_error(
            "tls_server_config.client_ca_file",
            format!("{kind:?} needs client_ca_file"),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(resolve(&tls.client_ca_file))
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| key_error("tls_server_config.client_ca_file", err.to_string()))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|err| key_error("tls_server_config.client_ca_file", err.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
    let verifier = if kind == ClientAuth::RequireAndVerifyClientCert
        || kind == ClientAuth::RequireAnyClientCert
    {
        verifier
    } else {
        verifier.allow_unauthenticated()
    };
    verifier
        .build()
        .map(Some)
        .map_err(|err| key_error("tls_server_config.client_ca_file", err.to_string()))
}

/// The web configuration in force, re-read when its file changes.
pub struct WebConfig {
    path: Option<PathBuf>,
    state: Mutex<WebState>,
}

struct WebState {
    security: Arc<Security>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

impl WebConfig {
    /// Loads the file (a bad one is an error: the agent does not start on it), or the
    /// open endpoint without one.
    pub fn start(path: Option<PathBuf>) -> Result<WebConfig, WebConfigError> {
        let (security, modified) = match &path {
            Some(path) => (load(path)?, modified(path)),
            None => (Security::open(), None),
        };
        Ok(WebConfig {
            path,
            state: Mutex::new(WebState {
                security: Arc::new(security),
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// What to enforce on a new connection, after re-reading a changed file.
    pub fn current(&self) -> Arc<Security> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.path {
            if state.checked.elapsed() >= RECHECK {
                state.checked = Instant::now();
                let now_modified = modified(path);
                if now_modified != state.modified {
                    state.modified = now_modified;
                    match load(path) {
                        Ok(security) => {
                            tracing::info!(file = %path.display(), "web configuration reloaded");
                            state.security = Arc::new(security);
                        }
                        Err(err) => tracing::error!(
                            error = %err,
                            "the changed web configuration is refused; the last good one stays"
                        ),
                    }
                }
            }
        }
        state.security.clone()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        assert_eq!(
            basic_credentials("Basic YWxpY2U6czNjcmV0"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }

    #[test]
    fn users_are_checked_with_bcrypt_and_unknown_users_fail() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let security = Security {
            users: [("alice".to_string(), hash)].into_iter().collect(),
            ..Security::open()
        };
        assert!(security.authorized(Some("Basic YWxpY2U6czNjcmV0")));
        assert!(
            security.authorized(Some("Basic YWxpY2U6czNjcmV0")),
            "cached"
        );
        // alice:wrong, bob:s3cret
        assert!(!security.authorized(Some("Basic YWxpY2U6d3Jvbmc=")));
        assert!(!security.authorized(Some("Basic Ym9iOnMzY3JldA==")));
        assert!(!security.authorized(None));
        // The dummy hash is a real bcrypt hash: the unknown user pays its cost.
        assert!(bcrypt::verify("x", DUMMY_HASH).is_ok());
    }

    #[test]
    fn a_bad_file_names_its_line_and_key() {
        let dir = std::env::temp_dir().join(format!("periscope-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("web.yml");
        std::fs::write(&path, "tls_server_config:\n  cert_file: a\n  key_fiel: b\n")
            .expect("write");
        let err = load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("web.yml:3:") && err.contains("key_fiel"),
            "{err}"
        );
        std::fs::write(&path, "basic_auth_users:\n  alice: plain\n").expect("write");
        let err = load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("basic_auth_users.alice") && err.contains("bcrypt"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
