//! `http_route` without cardinality explosions: configured patterns first, then a
//! heuristic that collapses ids into `*`, and a cap per service.

use std::collections::{HashMap, HashSet};

/// The route of requests beyond a service's cap.
pub use crate::model::OVERFLOW as OVERFLOW_ROUTE;

/// A configured route such as `/users/{id}/orders`: `{...}` matches one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    pub text: String,
    segments: Vec<Option<String>>,
}

impl RoutePattern {
    pub fn parse(text: &str) -> Result<RoutePattern, String> {
        if !text.starts_with('/') {
            return Err(format!("route `{text}` must start with /"));
        }
        let segments = text
            .split('/')
            .skip(1)
            .map(|seg| {
                if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                    None
                } else {
                    Some(seg.to_string())
                }
            })
            .collect();
        Ok(RoutePattern {
            text: text.to_string(),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1);
        for segment in &self.segments {
            match (segment, parts.next()) {
                (_, None) => return false,
                (Some(literal), Some(part)) if literal != part => return false,
                _ => {}
            }
        }
        parts.next().is_none()
    }
}

/// Collapses the parts of a path that look like identifiers or secrets.
pub fn heuristic_route(path: &str) -> String {
    collapse(path, |previous, segment| {
        looks_like_id(segment) || looks_like_secret(previous, segment)
    })
}

/// The path with the segments that look like secrets replaced by `*` (identifiers are
/// kept): what a span's `url.path` shows.
pub fn redact_secrets(path: &str) -> String {
    collapse(path, looks_like_secret)
}

fn collapse(path: &str, hide: impl Fn(Option<&str>, &str) -> bool) -> String {
    if path.is_empty() {
        return "/".into();
    }
    if !path.starts_with('/') {
        return path.into();
    }
    let mut route = String::with_capacity(path.len());
    let mut previous = None;
    for segment in path.split('/').skip(1) {
        route.push('/');
        route.push_str(if hide(previous, segment) {
            "*"
        } else {
            segment
        });
        previous = Some(segment);
    }
    route
}

/// Path segments after which the next one is a credential: `/reset/<token>`,
/// `/login/<password>`.
const CREDENTIAL_WORDS: &[&str] = &[
    "activate",
    "api-key",
    "api_key",
    "apikey",
    "auth",
    "code",
    "confirm",
    "invite",
    "key",
    "keys",
    "login",
    "magic",
    "otp",
    "passwd",
    "password",
    "reset",
    "secret",
    "secrets",
    "session",
    "sessions",
    "signin",
    "token",
    "tokens",
    "unsubscribe",
    "verify",
];

/// A segment that may be a secret: one that follows a credential word, one that mixes
/// letters and digits over 8 characters or more (passwords, tokens), or a long run of
/// letters in both cases (base64).
fn looks_like_secret(previous: Option<&str>, segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    if previous.is_some_and(|p| CREDENTIAL_WORDS.contains(&p.to_ascii_lowercase().as_str())) {
        return true;
    }
    let letters = segment.bytes().filter(u8::is_ascii_alphabetic).count();
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    let upper = segment.bytes().filter(u8::is_ascii_uppercase).count();
    (segment.len() >= 8 && letters > 0 && digits > 0)
        || (segment.len() >= 20 && upper > 0 && upper < letters && letters == segment.len())
}

fn looks_like_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    let hex = segment.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    digits == segment.len()                              // 12345
        || uuid                                          // 123e4567-e89b-...
        || (hex && segment.len() >= 8 && digits > 0)     // deadbeef01
        || (segment.len() >= 16 && digits > 0)           // long tokens with digits
        || segment.len() > 64
}

/// Values of one label per service, capped: beyond the cap, a service's new values are
/// reported as `__overflow__` and counted.
#[derive(Debug, Default)]
pub struct PerServiceCap {
    max_per_service: usize,
    seen: HashMap<String, HashSet<String>>,
    folded: u64,
}

impl PerServiceCap {
    pub fn new(max_per_service: usize) -> PerServiceCap {
        PerServiceCap {
            max_per_service,
            seen: HashMap::new(),
            folded: 0,
        }
    }

    /// The value to export for `value` of `service`.
    pub fn admit(&mut self, service: &str, value: String) -> String {
        let values = match self.seen.get_mut(service) {
            Some(values) => values,
            None => self.seen.entry(service.to_string()).or_default(),
        };
        if values.contains(&value) {
            return value;
        }
        if values.len() >= self.max_per_service {
            self.folded += 1;
            return OVERFLOW_ROUTE.into();
        }
        values.insert(value.clone());
        value
    }

    /// Values reported as `__overflow__` because their service was at its cap.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

/// Routes per service: configured patterns first, then the id heuristic, capped.
#[derive(Debug, Default)]
pub struct RouteTable {
    patterns: Vec<RoutePattern>,
    cap: PerServiceCap,
}

impl RouteTable {
    pub fn new(patterns: Vec<RoutePattern>, max_per_service: usize) -> RouteTable {
        RouteTable {
            patterns,
            cap: PerServiceCap::new(max_per_service),
        }
    }

    /// The route of `path` for `service`.
    pub fn route(&mut self, service: &str, path: &str) -> String {
        let route = self
            .patterns
            .iter()
            .find(|p| p.matches(path))
            .map(|p| p.text.clone())
            .unwrap_or_else(|| heuristic_route(path));
        self.cap.admit(service, route)
    }

    /// Requests whose route was beyond their service's cap.
    pub fn folded(&self) -> u64 {
        self.cap.folded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_collapse_and_words_stay() {
        assert_eq!(heuristic_route("/users/123/orders"), "/users/*/orders");
        assert_eq!(
            heuristic_route("/items/123e4567-e89b-12d3-a456-426614174000"),
            "/items/*"
        );
        assert_eq!(heuristic_route("/blob/deadbeef0042"), "/blob/*");
        assert_eq!(heuristic_route("/t/abcDEF123ghiJKL456"), "/t/*");
        assert_eq!(heuristic_route("/api/v1/health"), "/api/v1/health");
        assert_eq!(heuristic_route("/"), "/");
        assert_eq!(heuristic_route("/cafe"), "/cafe", "short hex words stay");
    }

    #[test]
    fn secrets_in_paths_are_collapsed() {
        assert_eq!(heuristic_route("/login/hunter2path"), "/login/*");
        assert_eq!(
            heuristic_route("/reset/abc"),
            "/reset/*",
            "after a credential word"
        );
        assert_eq!(heuristic_route("/Token/xyz/more"), "/Token/*/more");
        assert_eq!(
            heuristic_route("/s/dGhpc0lzQVNlY3JldFRva2Vu"),
            "/s/*",
            "base64 without digits"
        );
        assert_eq!(
            heuristic_route("/api/v2/oauth2/callback"),
            "/api/v2/oauth2/callback"
        );
        assert_eq!(heuristic_route("/static/logo.png"), "/static/logo.png");
        // Spans keep identifiers but never secrets.
        assert_eq!(
            redact_secrets("/users/123/reset/s3cr3tvalue"),
            "/users/123/reset/*"
        );
        assert_eq!(redact_secrets("/login/hunter2path"), "/login/*");
    }

    #[test]
    fn ten_thousand_ids_make_one_route() {
        let mut table = RouteTable::new(Vec::new(), 100);
        let routes: HashSet<_> = (0..10_000)
            .map(|id| table.route("svc", &format!("/users/{id}")))
            .collect();
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec!["/users/*".to_string()]
        );
    }

    #[test]
    fn configured_patterns_win() {
        let mut table = RouteTable::new(
            vec![RoutePattern::parse("/shop/{item}").expect("valid")],
            100,
        );
        assert_eq!(table.route("svc", "/shop/apples"), "/shop/{item}");
        assert_eq!(table.route("svc", "/shop/apples/more"), "/shop/apples/more");
    }

    #[test]
    fn cap_per_service_folds_into_overflow() {
        let mut table = RouteTable::new(Vec::new(), 2);
        assert_eq!(table.route("a", "/x"), "/x");
        assert_eq!(table.route("a", "/y"), "/y");
        assert_eq!(table.route("a", "/z"), OVERFLOW_ROUTE);
        assert_eq!(table.route("a", "/x"), "/x");
        assert_eq!(table.route("b", "/z"), "/z", "caps are per service");
        assert_eq!(table.folded(), 1);
    }
}
