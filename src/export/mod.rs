//! Exporters: each reads the model only.

pub mod endpoint;
pub mod jsonl;
pub mod otlp;
pub mod profile;
pub mod prometheus;
pub mod queue;
pub mod tls;

use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// The agent's request to stop, with the one deadline every exporter honours: what is
/// not delivered by then is counted as failed, and requests in flight are abandoned.
#[derive(Debug)]
pub struct Shutdown {
    deadline: tokio::sync::watch::Sender<Option<Instant>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            deadline: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl Shutdown {
    /// Asks every exporter to stop by `deadline` (the first call counts).
    pub fn request(&self, deadline: Instant) {
        self.deadline.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(deadline);
            }
            first
        });
    }

    pub fn requested(&self) -> bool {
        self.deadline().is_some()
    }

    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// Resolves when the deadline has passed (never, while no stop is asked).
    pub async fn passed(&self) {
        let mut asked = self.deadline.subscribe();
        let deadline = match asked.wait_for(Option::is_some).await {
            Ok(deadline) => *deadline,
            // The sender lives as long as `self`: this does not happen.
            Err(_) => return std::future::pending().await,
        };
        if let Some(deadline) = deadline {
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// What one push exporter has delivered and lost, for the agent's own metrics.
#[derive(Debug)]
pub struct ExportStats {
    pub exporter: &'static str,
    pub spans_sent: AtomicU64,
    /// Spans lost because their export failed.
    pub spans_failed: AtomicU64,
    pub metric_points_sent: AtomicU64,
    /// Failed writes or requests (each retry of a request counts).
    pub failures: AtomicU64,
    /// Items the receiver rejected in a partial success.
    pub rejected_spans: AtomicU64,
    pub rejected_points: AtomicU64,
    /// Requests retried, and how many of those waited for the receiver's Retry-After.
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
}

impl ExportStats {
    pub fn new(exporter: &'static str) -> ExportStats {
        ExportStats {
            exporter,
            spans_sent: AtomicU64::new(0),
            spans_failed: AtomicU64::new(0),
            metric_points_sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rejected_spans: AtomicU64::new(0),
            rejected_points: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }
}

/// This machine's name, for the `host.name` resource attribute.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Standard base64, padded or not (gRPC sends binary trailers unpadded; HTTP basic
/// auth pads).
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text
        .trim()
        .trim_end_matches('=')
        .bytes()
        .map(value)
        .collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            acc |= u32::from(*d) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}
