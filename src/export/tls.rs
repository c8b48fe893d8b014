//! TLS for the push exporters: which certificate authorities a receiver's certificate
//! must come from, and the client certificate the agent shows, as every OpenTelemetry
//! SDK takes them (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `_CLIENT_CERTIFICATE`, `_CLIENT_KEY`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Where the system keeps its trusted certificate authorities, by distribution; the
/// first that exists is used when no `ca_file` is given. `SSL_CERT_FILE` comes first,
/// as OpenSSL reads it.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TLS settings of a receiver reached over `https://`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate authorities the receiver's certificate must chain to. Empty: the
    /// system's.
    pub ca_file: String,
    /// PEM client certificate (and its chain), for receivers that ask for one.
    pub cert_file: String,
    /// The client certificate's PEM private key.
    pub key_file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {path}: {why}")]
    File {
        key: &'static str,
        path: String,
        why: String,
    },
    #[error("cert_file and key_file go together: {0} is set alone")]
    HalfClientCert(&'static str),
    #[error("no ca_file is set and no system certificate authorities were found (looked in $SSL_CERT_FILE and {})", SYSTEM_CA_FILES.join(", "))]
    NoSystemRoots,
    #[error("{0}")]
    Rustls(String),
}

impl TlsConfig {
    /// Each field empty here is taken from `base`: a per-signal section inherits the
    /// exporter's.
    pub fn or(&self, base: &TlsConfig) -> TlsConfig {
        let pick = |mine: &String, theirs: &String| {
            if mine.is_empty() {
                theirs.clone()
            } else {
                mine.clone()
            }
        };
        TlsConfig {
            ca_file: pick(&self.ca_file, &base.ca_file),
            cert_file: pick(&self.cert_file, &base.cert_file),
            key_file: pick(&self.key_file, &base.key_file),
        }
    }

    /// Takes each field from the environment variable named `<prefix>CERTIFICATE`,
    /// `<prefix>CLIENT_CERTIFICATE` and `<prefix>CLIENT_KEY` where it is set.
    pub fn apply_env(&mut self, prefix: &str, env: &dyn Fn(&str) -> Option<String>) {
        let set = |suffix: &str| {
            env(&format!("{prefix}{suffix}"))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(path) = set("CERTIFICATE") {
            self.ca_file = path;
        }
        if let Some(path) = set("CLIENT_CERTIFICATE") {
            self.cert_file = path;
        }
        if let Some(path) = set("CLIENT_KEY") {
            self.key_file = path;
        }
    }

    /// The key set without its other half: a client certificate and its key go together.
    fn half_client_cert(&self) -> Option<&'static str> {
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (false, true) => Some("cert_file"),
            (true, false) => Some("key_file"),
            _ => None,
        }
    }

    /// What can be known without reading the files; returns the key to blame.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.half_client_cert() {
            Some(key) => Err((key, TlsError::HalfClientCert(key).to_string())),
            None => Ok(()),
        }
    }

    /// The client configuration for receivers at `https://` URLs, offering `alpn`
    /// (`h2` for gRPC, `http/1.1` otherwise).
    pub fn client_config(&self, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let (key, ca_file) = match self.ca_file.as_str() {
            "" => ("system", system_ca_file().ok_or(TlsError::NoSystemRoots)?),
            path => ("ca_file", PathBuf::from(path)),
        };
        let cas = read_certificates(key, &ca_file)?;
        let (added, _ignored) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(file_error(key, &ca_file, "holds no usable certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Rustls(err.to_string()))?
            .with_root_certificates(roots);
        if let Some(key) = self.half_client_cert() {
            return Err(TlsError::HalfClientCert(key));
        }
        let mut config = if self.cert_file.is_empty() {
            builder.with_no_client_auth()
        } else {
            let certs = read_certificates("cert_file", Path::new(&self.cert_file))?;
            check_file("key_file", Path::new(&self.key_file))?;
            let key = PrivateKeyDer::from_pem_file(&self.key_file)
                .map_err(|err| file_error("key_file", Path::new(&self.key_file), err))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|err| file_error("key_file", Path::new(&self.key_file), err))?
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }
}

fn file_error(key: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// A bundle of every public authority is about 200 KiB; a file far larger, or one that
/// is not a file (a FIFO, `/dev/zero`), is not a certificate file and is not read.
const MAX_PEM_BYTES: u64 = 16 << 20;

fn check_file(key: &'static str, path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|err| file_error(key, path, err))?;
    if !meta.is_file() {
        return Err(file_error(key, path, "is not a regular file"));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(file_error(
            key,
            path,
            format!(
                "is {} bytes; a PEM file here holds at most {MAX_PEM_BYTES}",
                meta.len()
            ),
        ));
    }
    Ok(())
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    check_file(key, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|err| file_error(key, path, err))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn system_ca_file() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from))
        .find(|path| path.is_file())
}

/// The name a receiver's certificate must carry: its host, a DNS name or an address.
pub fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|err| {
        TlsError::Rustls(format!(
            "{host:?} cannot be checked against a certificate: {err}"
        ))
    })
}

/// An error and each of its causes, joined.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let cause = inner.to_string();
        if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
        source = inner.source();
    }
    text
}

/// Whether a failure (as `explain` words it) is a certificate refused, by either side: a
/// setting to fix rather than a passing fault, so it is worth a warning.
pub fn refused_certificate(why: &str) -> bool {
    why.contains("certificate")
}

/// `chain`, with what a failed TLS handshake means for the user where rustls's words
/// are terse.
pub fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let text = chain(err);
    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        format!("{text} (the receiver's certificate is not signed by a trusted authority: check tls.ca_file)")
    } else if text.contains("NotValidForName") {
        format!("{text} (the receiver's certificate does not name the endpoint's host)")
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        format!("{text} (the receiver asks for a client certificate: set tls.cert_file and tls.key_file)")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_signal_settings_inherit_the_exporters_and_the_environment_overrides() {
        let base = TlsConfig {
            ca_file: "ca.pem".into(),
            cert_file: "client.pem".into(),
            key_file: "client.key".into(),
        };
        let signal = TlsConfig {
            ca_file: "other-ca.pem".into(),
            ..TlsConfig::default()
        };
        let merged = signal.or(&base);
        assert_eq!(merged.ca_file, "other-ca.pem");
        assert_eq!(merged.cert_file, "client.pem");

        let mut from_env = TlsConfig::default();
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE" => Some(" /etc/ca.pem ".to_string()),
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY" => Some("".to_string()),
            _ => None,
        };
        from_env.apply_env("OTEL_EXPORTER_OTLP_TRACES_", &env);
        assert_eq!(from_env.ca_file, "/etc/ca.pem");
        assert_eq!(from_env.key_file, "");
    }

    #[test]
    fn a_refused_certificate_says_what_to_check_once() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let text = explain(&refused);
        assert_eq!(text.matches("check tls.ca_file").count(), 1, "{text}");
        assert!(
            text.starts_with("invalid peer certificate: UnknownIssuer"),
            "{text}"
        );
        let again = explain(&std::io::Error::other(chain(&refused)));
        assert_eq!(again.matches("check tls.ca_file").count(), 1, "{again}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let half = TlsConfig {
            cert_file: "client.pem".into(),
            ..TlsConfig::default()
        };
        assert_eq!(half.check().map_err(|(key, _)| key), Err("cert_file"));
        let err = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsConfig::default()
        }
        .client_config(b"http/1.1")
        .expect_err("no such file")
        .to_string();
        assert!(err.starts_with("ca_file: /nonexistent/ca.pem:"), "{err}");
        // Not a file: never read, however much it would give.
        let err = TlsConfig {
            ca_file: "/dev/zero".into(),
            ..TlsConfig::default()
        }
        .client_config(b"http/1.1")
        .expect_err("a device")
        .to_string();
        assert!(err.contains("is not a regular file"), "{err}");
    }
}
