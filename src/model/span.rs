//! Spans: what probes produce for the tracing exporters, the W3C trace context they
//! carry, the sampler that decides which are kept, and the bounded queue between the
//! probes and the exporters.

mod config;
pub use config::{SamplerName, TracesConfig};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Str(String),
    Int(i64),
}

/// The process a span comes from: its OpenTelemetry resource.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanResource {
    pub pid: u32,
    pub executable_name: String,
    pub service_name: String,
    /// The process's workload (container, pod, tenant), as Prometheus label names;
    /// exporters name them as the OpenTelemetry resource conventions do.
    pub workload: crate::model::Labels,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The W3C `tracestate` the span's context carries (validated), or empty.
    pub trace_state: String,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Set for 5xx on servers and 4xx/5xx on clients, as the HTTP conventions say.
    pub error: bool,
    /// Semantic-convention attributes (`http.request.method`, ...).
    pub attributes: Vec<(&'static str, AttributeValue)>,
    pub resource: SpanResource,
}

/// A span's place in its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: String,
}

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

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
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

/// Random trace and span ids: xoshiro256** seeded from the kernel's random source.
pub struct IdGenerator {
    state: [u64; 4],
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        let mut seed = [0u8; 32];
        // getrandom(2) blocks only before the kernel's pool is initialised at boot.
        // SAFETY: writes at most seed.len() bytes into seed.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut state = [0u64; 4];
        for (i, word) in state.iter_mut().enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&seed[i * 8..i * 8 + 8]);
            *word = u64::from_le_bytes(bytes);
        }
        if got != seed.len() as isize || state == [0; 4] {
            // No kernel randomness: the clock and pid still make ids unique per agent.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            state = [
                now | 1,
                u64::from(std::process::id()),
                now.rotate_left(17),
                0x9e37_79b9,
            ];
        }
        IdGenerator { state }
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    pub fn trace_id(&mut self) -> TraceId {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&self.next().to_be_bytes());
            id[8..].copy_from_slice(&self.next().to_be_bytes());
            if id != [0; 16] {
                return id;
            }
        }
    }

    pub fn span_id(&mut self) -> SpanId {
        loop {
            let id = self.next().to_be_bytes();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

/// The connections the agent's own exporters open, as (local port, receiver's port), each
/// remembered for a while after its request. A server on this host that answers one of
/// them (a node-local collector) makes no span: exporting it would make the next one,
/// without end. Both ports must match: the kernel reuses ephemeral port numbers for
/// other destinations, and a port alone would hide other clients' requests.
static AGENT_CONNECTIONS: Mutex<Option<HashMap<(u16, u16), std::time::Instant>>> = Mutex::new(None);

/// How long a connection stays known after its request: well beyond the probes' drain
/// interval.
const AGENT_CONNECTION_MEMORY: Duration = Duration::from_secs(5);

/// Records (or refreshes) one of the agent's connections.
pub fn register_agent_connection(local_port: u16, remote_port: u16) {
    let now = std::time::Instant::now();
    let mut known = AGENT_CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    let known = known.get_or_insert_with(HashMap::new);
    if known.len() >= 1024 {
        known.retain(|_, at| now.duration_since(*at) < AGENT_CONNECTION_MEMORY);
    }
    known.insert((local_port, remote_port), now);
}

/// Whether a server exchange on `server_port` came from one of the agent's connections.
pub fn is_agent_connection(client_port: u16, server_port: u16) -> bool {
    let now = std::time::Instant::now();
    AGENT_CONNECTIONS
        .lock()
        .map(|known| {
            known
                .as_ref()
                .and_then(|k| k.get(&(client_port, server_port)))
                .is_some_and(|at| now.duration_since(*at) < AGENT_CONNECTION_MEMORY)
        })
        .unwrap_or(false)
}

/// Spans on their way from the probes to the exporters. Bounded: when it is full the
/// oldest spans are dropped, so a slow or dead backend costs the newest data nothing
/// and the agent's memory stays flat; every drop is counted.
pub struct SpanQueue {
    spans: Mutex<VecDeque<Span>>,
    ready: Condvar,
    capacity: usize,
    pub dropped: AtomicU64,
    pub accepted: AtomicU64,
}

impl SpanQueue {
    pub fn new(capacity: usize) -> SpanQueue {
        SpanQueue {
            spans: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    pub fn push(&self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        spans.extend(batch.drain(..));
        let excess = spans.len().saturating_sub(self.capacity);
        if excess > 0 {
            spans.drain(..excess);
            self.dropped.fetch_add(excess as u64, Ordering::Relaxed);
        }
        drop(spans);
        self.accepted.fetch_add(count, Ordering::Relaxed);
        self.ready.notify_all();
    }

    /// Up to `max` spans, waiting at most `wait` for the first.
    pub fn pop(&self, max: usize, wait: Duration) -> Vec<Span> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.is_empty() {
            spans = self
                .ready
                .wait_timeout(spans, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let n = spans.len().min(max);
        spans.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.spans.lock().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ids_are_unique_and_never_zero() {
        let mut ids = IdGenerator::new();
        let traces: std::collections::HashSet<_> = (0..10000).map(|_| ids.trace_id()).collect();
        assert_eq!(traces.len(), 10000);
        assert!(!traces.contains(&[0u8; 16]));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let queue = SpanQueue::new(3);
        let span = |n: u64| Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            trace_state: String::new(),
            kind: SpanKind::Server,
            name: String::new(),
            start_unix_ns: n,
            end_unix_ns: n,
            error: false,
            attributes: Vec::new(),
            resource: SpanResource {
                pid: 1,
                executable_name: String::new(),
                service_name: String::new(),
                workload: Vec::new(),
            },
        };
        queue.push(&mut (0..5).map(span).collect());
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 2);
        let left: Vec<u64> = queue
            .pop(10, Duration::ZERO)
            .iter()
            .map(|s| s.start_unix_ns)
            .collect();
        assert_eq!(left, vec![2, 3, 4]);
    }
}
