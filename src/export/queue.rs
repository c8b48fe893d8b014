//! The bounded queue of spans between the collector, which hands over what the probes
//! made, and each push exporter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::model::span::Span;

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
    use crate::model::span::{SpanKind, SpanResource};

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
