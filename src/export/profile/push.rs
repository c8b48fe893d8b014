//! Pushes profiles to their receivers: as pprof to a Pyroscope-compatible `/ingest`
//! endpoint, one push per service and interval, named `<service>.cpu{container=...,
//! pod=...}` as Pyroscope names series, with the process's pid and name on every
//! sample; and as an OTLP profiles request to `/v1development/profiles`. Plain HTTP/1.1
//! over a fresh connection per push; a push that fails with 429, a 5xx or no answer is
//! retried with backoff, then dropped and counted.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{otlp, pprof};
use crate::export::endpoint::Endpoint;
use crate::export::Shutdown;
use crate::model::agent_labels;
use crate::model::profile::Profile;
use prost::Message;

/// Profiles waiting to be pushed, bounded: the oldest gives way and is counted.
pub struct ProfileQueue {
    profiles: Mutex<VecDeque<Profile>>,
    ready: Condvar,
    capacity: usize,
    pub dropped: AtomicU64,
}

impl ProfileQueue {
    pub fn new(capacity: usize) -> ProfileQueue {
        ProfileQueue {
            profiles: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn push(&self, profile: Profile) {
        let mut profiles = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        if profiles.len() >= self.capacity {
            profiles.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        profiles.push_back(profile);
        self.ready.notify_one();
    }

    fn pop(&self, wait: Duration) -> Option<Profile> {
        let profiles = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        let (mut profiles, _) = self
            .ready
            .wait_timeout_while(profiles, wait, |p| p.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        profiles.pop_front()
    }

    pub fn len(&self) -> usize {
        self.profiles.lock().map_or(0, |p| p.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a receiver's pushes came to, for the agent's own metrics.
#[derive(Debug, Default)]
pub struct PushStats {
    pub pushes_sent: AtomicU64,
    pub pushes_failed: AtomicU64,
    pub retries: AtomicU64,
}

/// The formats profiles are pushed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pprof to Pyroscope's `/ingest`, one push per service.
    Pyroscope,
    /// One OTLP profiles request to `/v1development/profiles`.
    Otlp,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Pyroscope => "pyroscope",
            Format::Otlp => "otlp",
        }
    }
}

/// A receiver: where, in which format, and its counters.
pub struct Receiver {
    pub format: Format,
    pub target: Endpoint,
    /// For an `https://` target.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    pub max_retry: Duration,
    pub stats: Arc<PushStats>,
}

/// The exporter's thread: pushes every profile queued to every receiver until
/// shutdown, then what is still queued until the shutdown deadline; what is left then
/// is counted as failed.
pub fn run(
    receivers: Vec<Receiver>,
    queue: Arc<ProfileQueue>,
    stop: Arc<Shutdown>,
) -> io::Result<()> {
    loop {
        let Some(profile) = queue.pop(Duration::from_millis(200)) else {
            if stop.requested() {
                return Ok(());
            }
            continue;
        };
        for receiver in &receivers {
            let pushes = match receiver.format {
                Format::Pyroscope => pyroscope_pushes(&profile),
                Format::Otlp => vec![otlp_push(&profile)],
            };
            // A receiver that gave up on one push this round gets no more of them: the
            // others would wait out the same retries, and hold the other receivers.
            let mut given_up = false;
            for push in pushes {
                let past_deadline = stop.deadline().is_some_and(|d| Instant::now() >= d);
                given_up = given_up || past_deadline || !push_retrying(receiver, &push, &stop);
                let counter = if given_up {
                    &receiver.stats.pushes_failed
                } else {
                    &receiver.stats.pushes_sent
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One push: its path below the receiver's, with its query, and its body.
struct Push {
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
}

fn otlp_push(profile: &Profile) -> Push {
    Push {
        path: "/v1development/profiles".into(),
        content_type: "application/x-protobuf",
        body: otlp::request(profile).encode_to_vec(),
    }
}

/// The labels that name a service's series: every process label but the pid and the
/// executable, which go on each sample.
fn series_labels(labels: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    labels
        .iter()
        .filter(|(key, _)| {
            *key != agent_labels::PROCESS_PID && *key != agent_labels::PROCESS_EXECUTABLE_NAME
        })
        .cloned()
        .collect()
}

/// A label value as Pyroscope's series names take it: `{`, `}`, `,`, `=` and the like
/// would end it early, so everything but letters, digits and `_.:/-` becomes `_`.
fn name_part(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:/-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

fn pyroscope_pushes(profile: &Profile) -> Vec<Push> {
    let mut by_series: BTreeMap<Vec<(&'static str, String)>, Profile> = BTreeMap::new();
    for stack in &profile.stacks {
        let part = by_series
            .entry(series_labels(&stack.labels))
            .or_insert_with(|| Profile {
                start: profile.start,
                duration: profile.duration,
                frequency_hz: profile.frequency_hz,
                ..Profile::default()
            });
        part.stacks.push(stack.clone());
    }
    let from = profile.since_epoch();
    let until = from + profile.duration;
    by_series
        .into_iter()
        .filter_map(|(labels, part)| {
            let service = labels
                .iter()
                .find(|(key, _)| *key == agent_labels::SERVICE_NAME)
                .map_or("unknown", |(_, v)| v.as_str());
            let tags: Vec<String> = labels
                .iter()
                .filter(|(key, _)| *key != agent_labels::SERVICE_NAME)
                .map(|(key, value)| format!("{key}={}", name_part(value)))
                .collect();
            let name = format!("{}.cpu{{{}}}", name_part(service), tags.join(","));
            let body = pprof::encode(&part).ok()?;
            Some(Push {
                content_type: "binary/octet-stream",
                path: format!(
                    "/ingest?name={}&from={}&until={}&format=pprof&sampleRate={}&spyName=periscope",
                    percent_encode(&name),
                    from.as_secs(),
                    until.as_secs().max(from.as_secs() + 1),
                    profile.frequency_hz
                ),
                body,
            })
        })
        .collect()
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a push came to.
enum Outcome {
    Delivered,
    /// Worth another try: 429, a 5xx, no answer.
    Retry,
    /// Refused for good: another 4xx.
    Refused,
}

fn push_retrying(receiver: &Receiver, push: &Push, stop: &Shutdown) -> bool {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match push_once(receiver, push, stop) {
            Outcome::Delivered => return true,
            Outcome::Refused => return false,
            Outcome::Retry => {}
        }
        let next = Instant::now() + backoff;
        let past_retries = next.duration_since(started) > receiver.max_retry;
        let past_deadline = stop.deadline().is_some_and(|deadline| next > deadline);
        if past_retries || past_deadline {
            return false;
        }
        receiver.stats.retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn push_once(receiver: &Receiver, push: &Push, stop: &Shutdown) -> Outcome {
    let target = &receiver.target;
    // No push outlives the shutdown deadline.
    let timeout = match stop.deadline() {
        Some(deadline) => receiver
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1)),
        None => receiver.timeout,
    };
    let request = || -> io::Result<u16> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut connected = None;
        for address in (target.host.as_str(), target.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(err) => last = err,
            }
        }
        let stream = connected.ok_or(last)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: periscope/{}\r\n\r\n",
            target.join(&push.path).path,
            target.authority(),
            push.content_type,
            push.body.len(),
            env!("CARGO_PKG_VERSION")
        );
        match &receiver.tls {
            None => exchange(stream, head.as_bytes(), &push.body),
            Some(config) => {
                let name = crate::export::tls::server_name(&target.host)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
                let connection = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(io::Error::other)?;
                exchange(
                    rustls::StreamOwned::new(connection, stream),
                    head.as_bytes(),
                    &push.body,
                )
            }
        }
    };
    match request() {
        Ok(code) if (200..300).contains(&code) => Outcome::Delivered,
        Ok(429) => Outcome::Retry,
        Ok(code) if code >= 500 => Outcome::Retry,
        Ok(code) => {
            tracing::warn!(
                code,
                receiver = receiver.format.name(),
                "a profile receiver refused a push"
            );
            Outcome::Refused
        }
        Err(err) => {
            let why = crate::export::tls::explain(&err);
            if receiver.tls.is_some() && crate::export::tls::refused_certificate(&why) {
                tracing::warn!(error = %why, receiver = receiver.format.name(), "TLS with a profile receiver failed; will retry");
            } else {
                tracing::debug!(error = %why, receiver = receiver.format.name(), "a profile push failed");
            }
            Outcome::Retry
        }
    }
}

/// Writes one request and reads its status. A receiver may answer (413, 401) and close
/// before the body is written: its answer is what counts.
fn exchange(mut stream: impl Read + Write, head: &[u8], body: &[u8]) -> io::Result<u16> {
    let written = stream
        .write_all(head)
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
    let mut status = [0u8; 12];
    if let Err(err) = stream.read_exact(&mut status) {
        return Err(written.err().unwrap_or(err));
    }
    status_code(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))
}

/// The status of an HTTP/1.x status line's first 12 bytes: `HTTP/1.1 200`.
fn status_code(line: &[u8; 12]) -> Option<u16> {
    if !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
        return None;
    }
    let code: u16 = std::str::from_utf8(&line[9..12]).ok()?.parse().ok()?;
    (100..600).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_status_line_gives_a_status() {
        assert_eq!(status_code(b"HTTP/1.1 204"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_code(b"SSH-2.0-Open"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x4"), None);
        assert_eq!(status_code(b"HTTP/1.1 999"), None);
    }

    #[test]
    fn series_names_cannot_be_broken_by_label_values() {
        assert_eq!(name_part("web,evil}{x=1"), "web_evil__x_1");
        assert_eq!(name_part(""), "_");
        assert_eq!(percent_encode("a.cpu{b=c}"), "a.cpu%7Bb%3Dc%7D");
    }

    #[test]
    fn a_full_queue_gives_up_its_oldest_profile_and_counts_it() {
        let queue = ProfileQueue::new(2);
        for seconds in 1..=3 {
            queue.push(Profile {
                duration: Duration::from_secs(seconds),
                ..Profile::default()
            });
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(
            queue.pop(Duration::ZERO).map(|p| p.duration.as_secs()),
            Some(2)
        );
        assert_eq!(queue.len(), 1);
    }
}
