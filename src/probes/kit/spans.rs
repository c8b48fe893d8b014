//! What any probe that makes spans shares: the W3C trace context a request carries
//! (`traceparent`, `tracestate`), read from its headers and never trusted unchecked, and
//! the sampler that decides which spans are kept.

mod config;
pub use config::{SamplerName, TracesConfig};

use crate::model::span::{SpanId, TraceId};

/// A W3C `traceparent` header: the caller's trace, span and sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value per W3C Trace Context level 1; anything malformed
    /// (wrong lengths, upper-case or non-hex digits, all-zero ids, version ff, a version
    /// 00 header with trailing data) is `None` and never trusted.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let value = trim_ows(value);
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        // Future versions may append fields after another dash; version 00 may not.
        if value.len() > 55 && (version == 0 || value[55] != b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Members a `tracestate` may have, and its length, at most (W3C: 32 members, and
/// vendors may drop a header longer than 512 characters).
const MAX_TRACESTATE_MEMBERS: usize = 32;
const MAX_TRACESTATE_BYTES: usize = 512;

/// Checks a `tracestate` value member by member; an invalid or oversized one is `None`
/// (dropped whole, never partly trusted). Empty members (`a=1,,b=2`) are allowed and
/// removed.
pub fn parse_tracestate(value: &[u8]) -> Option<String> {
    if value.len() > MAX_TRACESTATE_BYTES {
        return None;
    }
    let mut members = Vec::new();
    for member in value.split(|b| *b == b',') {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let eq = member.iter().position(|b| *b == b'=')?;
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !valid_tracestate_key(key) || !valid_tracestate_value(value) {
            return None;
        }
        members.push(std::str::from_utf8(member).ok()?);
    }
    if members.len() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    Some(members.join(","))
}

fn valid_tracestate_key(key: &[u8]) -> bool {
    let simple = |part: &[u8], max: usize, first_digit_ok: bool| {
        !part.is_empty()
            && part.len() <= max
            && (part[0].is_ascii_lowercase() || (first_digit_ok && part[0].is_ascii_digit()))
            && part.iter().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.iter().position(|b| *b == b'@') {
        // multi-tenant: tenant@system
        Some(at) => simple(&key[..at], 241, true) && simple(&key[at + 1..], 14, false),
        None => simple(key, 256, false),
    }
}

fn valid_tracestate_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=')
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// Two lower-case hex digits (W3C forbids upper case in `traceparent`).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// Which spans are kept: the OpenTelemetry SDK samplers, by their `OTEL_TRACES_SAMPLER`
/// names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// The caller's sampled flag when a `traceparent` came in, the inner sampler otherwise.
    ParentBased(RootSampler),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Sampler {
    /// From a sampler name and its argument (the ratio, for the ratio samplers).
    pub fn from_name(name: &str, arg: f64) -> Option<Sampler> {
        let ratio = arg.clamp(0.0, 1.0);
        Some(match name {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio),
            "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(RootSampler::TraceIdRatio(ratio)),
            _ => return None,
        })
    }

    /// Whether a span of `trace_id` is kept, given its parent's sampled flag if it has
    /// a remote parent.
    pub fn sample(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        match (self, parent_sampled) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio(r), _) => ratio_keeps(*r, trace_id),
            (Sampler::ParentBased(_), Some(sampled)) => sampled,
            (Sampler::ParentBased(RootSampler::AlwaysOn), None) => true,
            (Sampler::ParentBased(RootSampler::AlwaysOff), None) => false,
            (Sampler::ParentBased(RootSampler::TraceIdRatio(r)), None) => ratio_keeps(*r, trace_id),
        }
    }
}

/// The trace-id ratio decision: deterministic per trace, so every span of a trace that
/// one agent sees gets the same answer.
fn ratio_keeps(ratio: f64, trace_id: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) as f64) < ratio * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::hex;

    const VALID: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_parses_the_spec_example() {
        let tp = TraceParent::parse(VALID).expect("valid");
        assert_eq!(hex(&tp.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&tp.parent_id), "b7ad6b7169203331");
        assert!(tp.sampled);
        let unsampled =
            TraceParent::parse(b" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ");
        assert_eq!(unsampled.map(|t| t.sampled), Some(false));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            &b"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            b"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",
            b"",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033é-01".as_bytes(),
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields after a dash.
        assert!(
            TraceParent::parse(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn tracestate_is_checked_member_by_member() {
        assert_eq!(
            parse_tracestate(b"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,tenant@vendor=x")
                .as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=x")
        );
        assert_eq!(parse_tracestate(b"Upper=1"), None);
        assert_eq!(parse_tracestate(b"a=1,b"), None);
        assert_eq!(parse_tracestate(b"a=x=y"), None);
        assert_eq!(parse_tracestate(&[b'a'; 600]), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tracestate(many.join(",").as_bytes()), None);
    }

    #[test]
    fn samplers_follow_the_sdk_rules() {
        let id = [0xffu8; 16];
        let parent_based = Sampler::from_name("parentbased_always_on", 1.0).expect("known");
        assert!(parent_based.sample(&id, None));
        assert!(!parent_based.sample(&id, Some(false)));
        assert!(!Sampler::from_name("traceidratio", 0.5)
            .expect("known")
            .sample(&id, None));
        assert!(Sampler::from_name("traceidratio", 0.5)
            .expect("known")
            .sample(&[0; 16], None));
        assert_eq!(Sampler::from_name("sometimes", 1.0), None);
    }
}
