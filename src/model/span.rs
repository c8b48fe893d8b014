//! Spans: what probes produce for the tracing exporters, their place in a trace, and
//! the ids that name them; and the bounded queue between the probes and the exporters.

use std::collections::VecDeque;
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

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
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
