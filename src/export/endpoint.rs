//! Where a push exporter sends: `http://` or `https://`, host, port and path.

/// An `http(s)://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Reached over TLS (`https://`).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Begins with `/`.
    pub path: String,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL; the port defaults to the scheme's.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{url}: not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let bracketed_without_port = authority.starts_with('[') && authority.ends_with(']');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !bracketed_without_port => {
                let port = port
                    .parse()
                    .map_err(|_| format!("{url}: bad port {port:?}"))?;
                (host, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(format!("{url}: no host"));
        }
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The base endpoint plus a path below it (`v1/traces`), as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is combined.
    pub fn join(&self, below: &str) -> Endpoint {
        let mut path = self.path.trim_end_matches('/').to_string();
        path.push('/');
        path.push_str(below.trim_start_matches('/'));
        Endpoint {
            path,
            ..self.clone()
        }
    }

    /// `host:port`, an IPv6 host in brackets: the Host header and gRPC's authority.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme(), self.authority(), self.path)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_join_like_the_sdks() {
        let base = Endpoint::parse("http://collector:4318").expect("valid");
        assert_eq!(
            base.join("v1/traces"),
            Endpoint {
                tls: false,
                host: "collector".into(),
                port: 4318,
                path: "/v1/traces".into()
            }
        );
        let prefixed = Endpoint::parse("http://[::1]:4318/otlp/").expect("valid");
        assert_eq!(prefixed.host, "::1");
        assert_eq!(prefixed.join("v1/metrics").path, "/otlp/v1/metrics");
        assert_eq!(prefixed.authority(), "[::1]:4318");
        assert!(Endpoint::parse("collector:4318").is_err());
        assert!(Endpoint::parse("http://collector:port").is_err());
        assert!(Endpoint::parse("http://:4318").is_err());
        assert!(Endpoint::parse("http://user@collector:4318").is_err());
    }

    #[test]
    fn https_is_tls_on_port_443_unless_told() {
        let secure = Endpoint::parse("https://collector.example").expect("valid");
        assert!(secure.tls);
        assert_eq!((secure.port, secure.path.as_str()), (443, "/"));
        assert_eq!(secure.scheme(), "https");
        let v6 = Endpoint::parse("https://[::1]").expect("valid");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
        assert_eq!(Endpoint::parse("http://pyro").expect("valid").port, 80);
        assert_eq!(
            Endpoint::parse("https://pyro:4040/base/")
                .expect("valid")
                .join("/ingest?name=x")
                .path,
            "/base/ingest?name=x"
        );
    }
}
