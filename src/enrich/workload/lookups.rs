//! The background thread that learns names: from the Docker Engine API one container
//! at a time, and from the kubelet's `/pods`, each source backing off on its own.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::docker::{docker_container, LookupError};
use super::http::Client;
use super::kubelet::fetch_pods;
use super::{lock, Shared};

const WANTED_POD_REFETCH: Duration = Duration::from_secs(2);

/// Exponential backoff between failed attempts at one source.
#[derive(Debug)]
pub(super) struct Backoff {
    next_try: Option<Instant>,
    delay: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(max: Duration) -> Backoff {
        Backoff {
            next_try: None,
            delay: Duration::from_secs(1),
            max,
        }
    }

    pub(super) fn ready(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|at| now >= at)
    }

    pub(super) fn failed(&mut self, now: Instant) {
        self.next_try = Some(now + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    pub(super) fn succeeded(&mut self) {
        self.next_try = None;
        self.delay = Duration::from_secs(1);
    }
}

/// The background lookups: ends when the last handle of the service is dropped.
pub(super) fn lookup_loop(weak: Weak<Shared>) {
    // Sockets and HTTP need no capability: this thread gives up what it inherited.
    if let Err(err) = crate::kernel::caps::keep_only(&[]) {
        warn!(error = %err, "the name lookup thread keeps its capabilities");
    }
    let Some(timeout) = weak.upgrade().map(|shared| shared.settings.timeout) else {
        return;
    };
    let client = match Client::new(timeout) {
        Ok(client) => client,
        Err(err) => {
            warn!(error = %err, "could not start the name lookups; series carry ids only");
            return;
        }
    };
    let mut announced = (false, false);
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let settings = shared.settings.clone();
        let now = Instant::now();
        if let Some(socket) = &settings.docker_socket {
            lookup_docker(&shared, &client, socket, now, &mut announced.0);
        }
        if let Some(url) = &settings.kubelet_url {
            lookup_kubelet(&shared, &client, url, now, &mut announced.1);
        }
        let names = lock(&shared.names);
        let _ = shared
            .wake
            .wait_timeout(names, Duration::from_secs(1))
            .map(|(guard, _)| drop(guard));
    }
}

fn lookup_docker(
    shared: &Shared,
    client: &Client,
    socket: &Path,
    now: Instant,
    announced: &mut bool,
) {
    loop {
        let id = {
            let mut names = lock(&shared.names);
            if !names.docker_backoff.ready(now) {
                return;
            }
            match names.docker_pending.pop_front() {
                Some(id) => id,
                None => return,
            }
        };
        let outcome = docker_container(client, socket, &id);
        let mut names = lock(&shared.names);
        match outcome {
            Ok(answer) => {
                shared.counters.docker_ok.fetch_add(1, Ordering::Relaxed);
                names.docker_backoff.succeeded();
                if !*announced {
                    info!(socket = %socket.display(), "container names from the Docker Engine API");
                    *announced = true;
                }
                if names.containers.contains_key(&id) {
                    names.docker_arrived.push((id, answer));
                }
            }
            Err(LookupError::Unavailable(err)) => {
                // No Docker here (or not yet): try again later, without counting each
                // container as a failure.
                debug!(socket = %socket.display(), error = %err, "Docker Engine API not reachable");
                names.docker_pending.push_front(id);
                names.docker_backoff.failed(now);
                return;
            }
            Err(LookupError::Failed(err)) => {
                shared
                    .counters
                    .docker_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(container = %id, error = %err, "Docker lookup failed");
                if names.containers.contains_key(&id) {
                    names.docker_pending.push_back(id);
                }
                names.docker_backoff.failed(now);
                return;
            }
        }
    }
}

fn lookup_kubelet(shared: &Shared, client: &Client, url: &str, now: Instant, announced: &mut bool) {
    {
        let names = lock(&shared.names);
        // A pod not in the last list makes a new fetch, at most every few seconds.
        let due = names.pods_fetched.is_none_or(|at| {
            let age = now.duration_since(at);
            age >= shared.settings.refresh
                || (!names.pods_wanted.is_empty() && age >= WANTED_POD_REFETCH)
        });
        if !due || !names.kubelet_backoff.ready(now) {
            return;
        }
    }
    let token = shared
        .settings
        .kubelet_token_file
        .as_ref()
        .and_then(|file| std::fs::read_to_string(file).ok())
        .map(|t| t.trim().to_string());
    let outcome = fetch_pods(
        client,
        url,
        token.as_deref(),
        shared.settings.kubelet_trust.as_ref(),
    );
    let mut names = lock(&shared.names);
    match outcome {
        Ok(pods) => {
            shared.counters.kubelet_ok.fetch_add(1, Ordering::Relaxed);
            if !*announced {
                info!(url, pods = pods.len(), "pod names from the kubelet");
                *announced = true;
            }
            names.kubelet_backoff.succeeded();
            names.pods_fetched = Some(now);
            let unknown: Vec<String> = names
                .pods_wanted
                .iter()
                .filter(|uid| !pods.contains_key(*uid))
                .cloned()
                .collect();
            names.pods_arrived = Some(pods);
            names.pods_wanted.clear();
            if !unknown.is_empty() {
                // Pods the kubelet does not list (yet, or any more): wait for the next
                // refresh.
                debug!(pods = unknown.len(), "pods not listed by the kubelet");
            }
            names.pods_unlisted = unknown.into_iter().collect();
        }
        Err(err) => {
            shared
                .counters
                .kubelet_failed
                .fetch_add(1, Ordering::Relaxed);
            warn!(url, error = %err, "kubelet /pods lookup failed; pod labels fall back to ids");
            names.kubelet_backoff.failed(now);
        }
    }
}
