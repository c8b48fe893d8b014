//! Start-up and shutdown: config -> kernel check -> probes -> exporters; signals.
//!
//! Probes live on one collector thread, which owns every libbpf object: scrapes ask it
//! for a snapshot over a channel, so nothing of libbpf is shared between threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::Config;
use crate::export::{jsonl, prometheus, ExportStats};
use crate::kernel::stats::{self, StatsSampler};
use crate::kernel::KernelFeatures;
use crate::model::span::{Span, SpanQueue};
use crate::model::Family;
use crate::probes::{Probe, BUILT_IN};
use crate::selfmetrics::{self, AgentHealth, ExporterHealth, ProbeHealth, SpanHealth};

/// Scrapes waiting for the collector, at most; beyond, scrapes get 503 and are counted.
const SCRAPE_QUEUE: usize = 8;

/// Without scrapes, the collector still reads the maps this often, so exited processes
/// expire and free their kernel entries on time.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// What became of one built-in probe at start-up.
#[derive(Debug, Clone)]
pub struct AttachReport {
    pub probe: &'static str,
    /// The attach method, or why the probe is not running.
    pub outcome: Result<String, String>,
}

enum Command {
    Collect(oneshot::Sender<Vec<Family>>),
    Shutdown,
}

/// Routes libbpf's own messages into our logs instead of stderr.
pub fn route_libbpf_logs() {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |level, message| {
        let message = message.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => warn!(target: "libbpf", "{message}"),
            libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{message}"),
            libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{message}"),
        }
    })));
}

pub fn check_kernel() -> Result<KernelFeatures> {
    let kernel = KernelFeatures::probe();
    if !kernel.btf {
        bail!(
            "this kernel ({}) exposes no BTF at {}: Periscope's probes need BTF (CONFIG_DEBUG_INFO_BTF=y); no probe can run",
            kernel.release,
            crate::kernel::BTF_PATH
        );
    }
    Ok(kernel)
}

/// The spans' way from the probes to the exporters.
#[derive(Clone)]
struct SpanPipeline {
    queue: Arc<SpanQueue>,
    exporters: Vec<Arc<ExportStats>>,
}

pub async fn run(mut config: Config) -> Result<()> {
    let started = Instant::now();
    config
        .traces
        .apply_env(|name| std::env::var(name).ok())
        .map_err(anyhow::Error::msg)?;
    // Installed first, so that a signal during start-up also stops the agent cleanly.
    let mut signals = Signals::install()?;
    let kernel = check_kernel()?;
    info!(kernel = %kernel.release, "kernel has BTF; loading probes");

    let address = config.prometheus.listen_address;
    let listener = prometheus::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (prometheus.listen_address)"))?;

    let jsonl_config = config.exporters.jsonl.clone();
    let pipeline = config.traces.enabled.then(|| SpanPipeline {
        queue: Arc::new(SpanQueue::new(config.traces.queue_spans.get() as usize)),
        exporters: jsonl_config
            .enabled
            .then(|| Arc::new(ExportStats::new("jsonl")))
            .into_iter()
            .collect(),
    });
    if pipeline.as_ref().is_some_and(|p| p.exporters.is_empty()) {
        warn!("traces.enabled is set but no span exporter is: spans are made and dropped (periscope_spans_dropped_total)");
    }
    let jsonl_stats = if jsonl_config.enabled {
        Some(
            pipeline
                .as_ref()
                .and_then(|p| p.exporters.first().cloned())
                .unwrap_or_else(|| Arc::new(ExportStats::new("jsonl"))),
        )
    } else {
        None
    };

    let (commands, inbox) = mpsc::sync_channel(SCRAPE_QUEUE);
    let scrapes_refused = Arc::new(AtomicU64::new(0));
    let refused_count = scrapes_refused.clone();
    let (report_tx, report_rx) = oneshot::channel();
    let collector_pipeline = pipeline.clone();
    let collector = thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            collector_main(
                config,
                kernel,
                inbox,
                report_tx,
                started,
                refused_count,
                collector_pipeline,
            )
        })
        .context("starting the collector thread")?;
    let reports = tokio::select! {
        reports = report_rx => reports.context("the collector thread stopped during start-up")?,
        signal = signals.recv() => {
            // The collector finds nobody to report to and drops, detaching, what it loaded.
            info!(signal, "stopping during start-up");
            let _ = tokio::task::spawn_blocking(move || collector.join()).await;
            return Ok(());
        }
    };

    let attached: Vec<_> = reports.iter().filter(|r| r.outcome.is_ok()).collect();
    for report in &reports {
        match &report.outcome {
            Ok(method) => println!("periscope: attached {} ({method})", report.probe),
            Err(reason) => println!("periscope: not running {}: {reason}", report.probe),
        }
    }
    if attached.is_empty() {
        warn!("no probe is running; /metrics serves only the agent's own metrics");
    }
    println!(
        "periscope: serving metrics at http://{address}/metrics (started in {:.2}s)",
        started.elapsed().as_secs_f64()
    );

    let exporters_stop = Arc::new(AtomicBool::new(false));
    let mut exporter_threads = Vec::new();
    if let Some(stats) = jsonl_stats {
        let path = (jsonl_config.path != "-").then(|| std::path::PathBuf::from(&jsonl_config.path));
        let settings = jsonl::JsonLinesSettings {
            path: path.clone(),
            max_file_bytes: u64::from(jsonl_config.max_file_bytes.get()),
            max_files: jsonl_config.max_files,
            metrics_interval: (jsonl_config.metrics_interval_secs > 0)
                .then(|| Duration::from_secs(jsonl_config.metrics_interval_secs)),
            host_name: crate::export::host_name(),
        };
        // Without traces the queue stays empty and only snapshots are written.
        let queue = pipeline
            .as_ref()
            .map(|p| p.queue.clone())
            .unwrap_or_else(|| Arc::new(SpanQueue::new(1)));
        let snapshot_commands = commands.clone();
        let snapshot = move || {
            let (reply, answer) = oneshot::channel();
            snapshot_commands.send(Command::Collect(reply)).ok()?;
            answer.blocking_recv().ok()
        };
        let stop = exporters_stop.clone();
        let thread = thread::Builder::new()
            .name("jsonl".into())
            .spawn(move || jsonl::run(settings, queue, snapshot, stats, stop))
            .context("starting the JSON lines exporter")?;
        let target = path.map_or("standard output".to_string(), |p| p.display().to_string());
        println!("periscope: writing JSON lines to {target}");
        exporter_threads.push(thread);
    }

    let ready = Arc::new(AtomicBool::new(true));
    let source = CollectorHandle {
        commands: commands.clone(),
        refused: scrapes_refused,
    };
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(prometheus::serve(listener, source, ready.clone(), async {
        let _ = server_stopped.await;
    }));

    let mut collector_done = tokio::task::spawn_blocking(move || collector.join());
    let collector_failed = tokio::select! {
        signal = signals.recv() => {
            info!(signal, "stopping: detaching probes");
            false
        }
        _ = &mut collector_done => true,
    };
    ready.store(false, Ordering::Release);
    if !collector_failed {
        // Detach first: the kernel stops running our programs before anything else
        // winds down.
        let _ = commands.send(Command::Shutdown);
        let _ = collector_done.await;
    }
    // The collector handed its last spans over when it stopped: the exporters write
    // them, then stop.
    exporters_stop.store(true, Ordering::Release);
    for thread in exporter_threads {
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Err(err))) => {
                warn!(error = %err, "the JSON lines exporter stopped with an error")
            }
            Ok(Err(_)) => warn!("an exporter thread panicked"),
            _ => {}
        }
    }
    let _ = stop_server.send(());
    match tokio::time::timeout(Duration::from_secs(1), server).await {
        Ok(Ok(Err(err))) => warn!(error = %err, "the metrics server stopped with an error"),
        Err(_) => warn!("open scrapes did not finish within a second; closing them"),
        _ => {}
    }
    if collector_failed {
        bail!("the collector thread stopped unexpectedly; its probes are detached");
    }
    info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[derive(Clone)]
struct CollectorHandle {
    commands: mpsc::SyncSender<Command>,
    refused: Arc<AtomicU64>,
}

impl prometheus::Source for CollectorHandle {
    fn snapshot(&self) -> impl std::future::Future<Output = Option<Vec<Family>>> + Send {
        let commands = self.commands.clone();
        let refused = self.refused.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            match commands.try_send(Command::Collect(reply)) {
                Ok(()) => answer.await.ok(),
                Err(mpsc::TrySendError::Full(_)) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(mpsc::TrySendError::Disconnected(_)) => None,
            }
        }
    }
}

struct Collector {
    probes: Vec<Box<dyn Probe>>,
    down: Vec<&'static str>,
    start_time: Duration,
    stats: StatsSampler,
    scrapes_refused: Arc<AtomicU64>,
    spans: Option<SpanPipeline>,
    span_buffer: Vec<Span>,
}

fn collector_main(
    config: Config,
    mut kernel: KernelFeatures,
    inbox: mpsc::Receiver<Command>,
    report: oneshot::Sender<Vec<AttachReport>>,
    started: Instant,
    scrapes_refused: Arc<AtomicU64>,
    spans: Option<SpanPipeline>,
) {
    let (probes, reports) = load_probes(&config, &mut kernel, true);
    let down = reports
        .iter()
        .filter(|r| r.outcome.is_err())
        .map(|r| r.probe)
        .collect();
    let mut collector = Collector {
        probes,
        down,
        start_time: started.elapsed(),
        stats: StatsSampler::start(
            config.self_metrics.bpf_stats,
            Duration::from_secs(config.self_metrics.bpf_stats_sample_secs),
            Duration::from_secs(config.self_metrics.bpf_stats_period_secs),
            Instant::now(),
        ),
        scrapes_refused,
        spans,
        span_buffer: Vec::new(),
    };
    info!(
        seconds = collector.start_time.as_secs_f64(),
        "all probes loaded and attached"
    );
    if report.send(reports).is_err() {
        return;
    }
    let mut next_upkeep = Instant::now() + UPKEEP_INTERVAL;
    let mut probe_deadlines = collector.tick_probes(Instant::now());
    loop {
        let deadline = collector
            .stats
            .next_change()
            .into_iter()
            .chain(probe_deadlines)
            .fold(next_upkeep, Instant::min);
        let wait = deadline.saturating_duration_since(Instant::now());
        match inbox.recv_timeout(wait) {
            Ok(Command::Collect(reply)) => {
                let _ = reply.send(collector.collect());
            }
            Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        collector.stats.tick(now);
        probe_deadlines = collector.tick_probes(now);
        collector.forward_spans();
        if now >= next_upkeep {
            collector.collect();
            next_upkeep = now + UPKEEP_INTERVAL;
        }
    }
    let count = collector.probes.len();
    // One last drain, its spans handed over; dropping the probes then detaches them.
    let mut probes = std::mem::take(&mut collector.probes);
    for probe in &mut probes {
        probe.tick(Instant::now());
    }
    collector.probes = probes;
    collector.forward_spans();
    drop(collector);
    info!(probes = count, "all probes detached");
}

/// Loads every enabled built-in probe; one the kernel cannot run is reported, not fatal.
pub fn load_probes(
    config: &Config,
    kernel: &mut KernelFeatures,
    attach: bool,
) -> (Vec<Box<dyn Probe>>, Vec<AttachReport>) {
    let mut probes = Vec::new();
    let mut reports = Vec::new();
    for spec in BUILT_IN {
        let probe = spec.name();
        if !spec.enabled(config) {
            info!(probe, "disabled in the configuration");
            reports.push(AttachReport {
                probe,
                outcome: Err("disabled in the configuration".into()),
            });
            continue;
        }
        info!(probe, "loading");
        match spec.load(config, kernel, attach) {
            Ok(loaded) => {
                let method = loaded.attach_method();
                if attach {
                    info!(probe, %method, "attached");
                }
                reports.push(AttachReport {
                    probe,
                    outcome: Ok(method),
                });
                probes.push(loaded);
            }
            Err(err) => {
                warn!(probe, error = %err, "probe disabled: the kernel cannot run it");
                reports.push(AttachReport {
                    probe,
                    outcome: Err(err.to_string()),
                });
            }
        }
    }
    (probes, reports)
}

impl Collector {
    /// Lets each probe do its scheduled work; the earliest time one wants to be called.
    fn tick_probes(&mut self, now: Instant) -> Option<Instant> {
        self.probes
            .iter_mut()
            .filter_map(|probe| probe.tick(now))
            .min()
    }

    /// Moves the probes' finished spans to the exporters' queue.
    fn forward_spans(&mut self) {
        for probe in &mut self.probes {
            probe.take_spans(&mut self.span_buffer);
        }
        match &self.spans {
            Some(pipeline) => pipeline.queue.push(&mut self.span_buffer),
            None => self.span_buffer.clear(),
        }
    }

    fn collect(&mut self) -> Vec<Family> {
        let began = Instant::now();
        let now = Instant::now();
        let mut families = Vec::new();
        let mut health = Vec::new();
        for probe in &mut self.probes {
            probe.collect(now, &mut families);
            let programs = probe
                .programs()
                .into_iter()
                .map(|(name, fd)| (name, stats::program_stats(fd).unwrap_or_default()))
                .collect();
            health.push(ProbeHealth {
                probe: probe.name(),
                up: true,
                programs,
                maps: probe.map_fill(),
                folded: probe.folded(),
                expired_series: probe.expired_series(),
                events_lost: probe.events_lost(),
            });
        }
        for probe in &self.down {
            health.push(ProbeHealth {
                probe,
                up: false,
                programs: Vec::new(),
                maps: Vec::new(),
                folded: Vec::new(),
                expired_series: 0,
                events_lost: 0,
            });
        }
        families.extend(selfmetrics::families(
            &health,
            &AgentHealth {
                collect_time: began.elapsed(),
                start_time: self.start_time,
                stats_enabled: self.stats.enabled_for(Instant::now()),
                scrapes_refused: self.scrapes_refused.load(Ordering::Relaxed),
                spans: self.spans.as_ref().map(|p| SpanHealth {
                    queued: p.queue.accepted.load(Ordering::Relaxed),
                    dropped: vec![
                        ("queue_full", p.queue.dropped.load(Ordering::Relaxed)),
                        (
                            "probe_buffer",
                            self.probes.iter().map(|probe| probe.spans_dropped()).sum(),
                        ),
                    ],
                    queue_len: p.queue.len(),
                    queue_capacity: p.queue.capacity(),
                }),
                exporters: self
                    .spans
                    .iter()
                    .flat_map(|p| &p.exporters)
                    .map(|e| ExporterHealth {
                        exporter: e.exporter,
                        spans_sent: e.spans_sent.load(Ordering::Relaxed),
                        spans_failed: e.spans_failed.load(Ordering::Relaxed),
                        metric_points_sent: e.metric_points_sent.load(Ordering::Relaxed),
                        failures: e.failures.load(Ordering::Relaxed),
                    })
                    .collect(),
            },
        ));
        families
    }
}
