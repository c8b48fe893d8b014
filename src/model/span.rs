//! Spans: what probes produce for the tracing exporters, their place in a trace, and
//! the ids that name them.

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

#[cfg(test)]
impl Span {
    /// A one-nanosecond `GET` span of a process with pid 7 named `executable`, in
    /// service `web`, with the given workload labels: what exporters' tests encode.
    pub fn example(kind: SpanKind, executable: &str, workload: crate::model::Labels) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: String::new(),
            kind,
            name: "GET".into(),
            start_unix_ns: 1,
            end_unix_ns: 2,
            error: false,
            attributes: Vec::new(),
            resource: SpanResource {
                pid: 7,
                executable_name: executable.into(),
                service_name: "web".into(),
                workload,
            },
        }
    }
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
}
