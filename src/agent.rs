//! Start-up and shutdown: config -> kernel check -> probes -> exporters; signals.
//!
//! Probes live on one collector thread, which owns every libbpf object: scrapes ask it
//! for a snapshot over a channel, so nothing of libbpf is shared between threads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::Config;
use crate::enrich::tenant::TenantLimits;
use crate::enrich::Workloads;
use crate::export::jsonl::{self, JsonLinesConfig};
use crate::export::otlp::{self, Endpoint, OtlpConfig};
use crate::export::profile::config::{ProfilesConfig, OTLP_ENDPOINT, PYROSCOPE_ENDPOINT};
use crate::export::profile::push::{self, Format, ProfileQueue, PushStats, Receiver};
use crate::export::prometheus::{self, PrometheusConfig};
use crate::export::queue::SpanQueue;
use crate::export::tls::TlsConfig;
use crate::export::ExportStats;
use crate::kernel::caps;
use crate::kernel::stats::{self, StatsSampler};
use crate::kernel::KernelFeatures;
use crate::model::connections::AgentConnections;
use crate::model::span::Span;
use crate::model::{Family, MetricKind, Value};
use crate::probes::kit::budget::SeriesBudget;
use crate::probes::{LoadContext, Probe, BUILT_IN};
use crate::selfmetrics::{self, AgentHealth, ExporterHealth, ProbeHealth, SpanHealth};

/// How often the tenants' cgroups are looked for again.
const CGROUP_TENANTS_REFRESH: Duration = Duration::from_secs(2);
/// Cgroups looked at in one search, at most.
const MAX_CGROUPS_WALKED: usize = 65536;

/// Scrapes waiting for the collector, at most; beyond, scrapes get 503 and are counted.
const SCRAPE_QUEUE: usize = 8;

/// Without scrapes, the collector still reads the maps this often, so exited processes
/// expire and free their kernel entries on time.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// From SIGTERM or SIGINT to exit: probes detach, exporters deliver what they can and
/// abandon the rest (counted), within this.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

/// Past the budget, how long a stuck exporter thread is waited for before it is left
/// behind (the process exits anyway).
const EXPORTER_GRACE: Duration = Duration::from_millis(500);

/// What became of one built-in probe at start-up.
#[derive(Debug, Clone)]
pub struct AttachReport {
    pub probe: &'static str,
    /// The attach method, or why the probe is not running.
    pub outcome: Result<String, String>,
    /// The features it runs without, each described in one line.
    pub degraded: Vec<String>,
}

enum Command {
    Collect(oneshot::Sender<Vec<Family>>),
    Shutdown,
}

/// Raises the soft limit on open files to the hard one: connections to the metrics
/// endpoint, BPF maps, programs and links all take fds, and a low soft limit (1024 in
/// many units) would let a flood of connections starve the rest.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed; nothing else.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            soft >= limit.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        tracing::debug!(open_files = limit.rlim_cur, "open-file limit");
    } else {
        warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise the open-file limit"
        );
    }
}

/// Routes libbpf's own messages into our logs instead of stderr.
pub fn route_libbpf_logs() {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |level, message| {
        let message = message.trim_end();
        let in_load_attempt = crate::kernel::libbpf_log::note_libbpf_message(message);
        match level {
            libbpf_rs::PrintLevel::Warn if in_load_attempt => {
                tracing::debug!(target: "libbpf", "{message}")
            }
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

/// What the metrics endpoint counts, for the agent's own metrics.
#[derive(Clone, Default)]
struct EndpointCounters {
    scrapes_refused: Arc<AtomicU64>,
    server: Arc<prometheus::ServerStats>,
}

/// What the collector hands the push exporters: spans, and at its end the last
/// families it collected; and what they hand its probes: their connections.
struct CollectorExports {
    exporters: Vec<PushExporter>,
    profiles: Option<ProfileExporter>,
    last_families: Arc<Mutex<Option<Vec<Family>>>>,
    agent_connections: AgentConnections,
}

/// One push exporter as the collector sees it: its counters and, when traces are on,
/// its own span queue (each exporter gets every span).
#[derive(Clone)]
struct PushExporter {
    stats: Arc<ExportStats>,
    spans: Option<Arc<SpanQueue>>,
}

/// Runs the agent until SIGTERM or SIGINT: checks, the collector thread and its
/// probes, the exporters and the metrics endpoint, then their shutdown in order.
pub async fn run(mut config: Config) -> Result<()> {
    let started = Instant::now();
    let wall_start = SystemTime::now();
    let env = |name: &str| std::env::var(name).ok();
    config.traces.apply_env(env).map_err(anyhow::Error::msg)?;
    config
        .exporters
        .otlp
        .apply_env(env)
        .map_err(anyhow::Error::msg)?;
    // Installed first, so that a signal during start-up also stops the agent cleanly.
    let mut signals = Signals::install()?;
    raise_fd_limit();
    let needs = capability_needs(&config);
    caps::check(&needs)?;
    let kept_caps = caps::kept_after_start(&needs);
    let kernel = check_kernel()?;
    info!(kernel = %kernel.release, "kernel has BTF; loading probes");

    let endpoint = MetricsEndpoint::open(&config.prometheus).await?;
    let say = Say::new(&config.exporters.jsonl);
    let push = PushExporters::new(&config);
    let exporter_configs = ExporterConfigs::new(&config, wall_start);

    let (commands, inbox) = mpsc::sync_channel(SCRAPE_QUEUE);
    let counters = EndpointCounters::default();
    let snapshots = Snapshots {
        commands: commands.clone(),
        last: Arc::new(Mutex::new(None)),
    };
    let (report_tx, report_rx) = oneshot::channel();
    let collector = {
        let counters = counters.clone();
        let exports = CollectorExports {
            exporters: push.all(),
            profiles: push.profiles.clone(),
            last_families: snapshots.last.clone(),
            agent_connections: push.connections.clone(),
        };
        thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                collector_main(config, kernel, inbox, report_tx, started, counters, exports)
            })
            .context("starting the collector thread")?
    };
    let reports = tokio::select! {
        reports = report_rx => reports.context("the collector thread stopped during start-up")?,
        signal = signals.recv() => {
            // The collector finds nobody to report to and drops, detaching, what it loaded.
            info!(signal, "stopping during start-up");
            let _ = tokio::task::spawn_blocking(move || collector.join()).await;
            return Ok(());
        }
    };
    confine_network_side(&kept_caps)?;
    announce(&reports, say, &endpoint, started);

    let exporters_stop = Arc::new(crate::export::Shutdown::default());
    let exporter_threads =
        start_exporters(&push, &exporter_configs, &snapshots, &exporters_stop, say)?;
    let ready = Arc::new(AtomicBool::new(true));
    let source = CollectorHandle {
        commands: commands.clone(),
        refused: counters.scrapes_refused,
    };
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(prometheus::serve(
        endpoint.listener,
        source,
        ready.clone(),
        prometheus::Serving {
            limits: endpoint.limits,
            web: endpoint.web,
            native_schema: endpoint.native_schema,
        },
        counters.server,
        async {
            let _ = server_stopped.await;
        },
    ));

    let running = Running {
        ready,
        commands,
        exporters_stop,
        exporter_threads,
        stop_server,
        server,
    };
    let mut collector_done = tokio::task::spawn_blocking(move || collector.join());
    tokio::select! {
        signal = signals.recv() => {
            info!(signal, "stopping: detaching probes");
            running.stop(Some(collector_done)).await
        }
        _ = &mut collector_done => running.stop(None).await,
    }
}

/// What runs once the agent has started, stopped in order.
struct Running {
    ready: Arc<AtomicBool>,
    commands: mpsc::SyncSender<Command>,
    exporters_stop: Arc<crate::export::Shutdown>,
    exporter_threads: Vec<ExporterThread>,
    stop_server: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops everything within SHUTDOWN_BUDGET. `collector`: the collector, still
    /// running; None when it stopped by itself, which is an error.
    async fn stop(
        self,
        collector: Option<tokio::task::JoinHandle<thread::Result<()>>>,
    ) -> Result<()> {
        let deadline = Instant::now() + SHUTDOWN_BUDGET;
        self.ready.store(false, Ordering::Release);
        let collector_failed = collector.is_none();
        if let Some(collector) = collector {
            // Detach first: the kernel stops running our programs before anything else
            // winds down.
            let _ = self.commands.send(Command::Shutdown);
            let _ = collector.await;
        }
        // The collector handed its last spans over when it stopped: the exporters write
        // them, then stop.
        self.exporters_stop.request(deadline);
        join_exporters(self.exporter_threads, deadline).await;
        let _ = self.stop_server.send(());
        match tokio::time::timeout(Duration::from_secs(1), self.server).await {
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
}

/// The metrics endpoint, ready to serve once the probes are loaded: its web
/// configuration, its socket and its limits.
struct MetricsEndpoint {
    web: Arc<prometheus::web::WebConfig>,
    scheme: &'static str,
    address: SocketAddr,
    listener: tokio::net::TcpListener,
    limits: prometheus::Limits,
    native_schema: i8,
}

impl MetricsEndpoint {
    async fn open(config: &PrometheusConfig) -> Result<MetricsEndpoint> {
        let web = Arc::new(
            prometheus::web::WebConfig::start(
                (!config.web_config_file.is_empty())
                    .then(|| PathBuf::from(&config.web_config_file)),
            )
            .context("loading the web configuration (prometheus.web_config_file)")?,
        );
        let scheme = if web.current().tls.is_some() {
            "https"
        } else {
            "http"
        };
        let address = config.listen_address;
        let listener = prometheus::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (prometheus.listen_address)"))?;
        let limits = prometheus::Limits {
            max_connections: config.max_connections.get() as usize,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        };
        Ok(MetricsEndpoint {
            web,
            scheme,
            address,
            listener,
            limits,
            native_schema: config.native_histogram_schema,
        })
    }
}

/// Where the CLI's own lines go: to standard error when JSON lines take standard
/// output, so that every line of standard output parses.
#[derive(Clone, Copy)]
struct Say {
    to_stderr: bool,
}

impl Say {
    fn new(jsonl: &JsonLinesConfig) -> Say {
        Say {
            to_stderr: jsonl.enabled && jsonl.path == "-",
        }
    }

    fn line(self, line: String) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// The push exporters the configuration turns on, before their threads start.
struct PushExporters {
    jsonl: Option<PushExporter>,
    otlp: Option<PushExporter>,
    /// The profile exporter: its queue and its receivers' counters.
    profiles: Option<ProfileExporter>,
    /// One table of the exporters' connections, so that the probes do not trace them.
    connections: AgentConnections,
}

/// The profile exporter as the collector sees it.
#[derive(Clone)]
struct ProfileExporter {
    queue: Arc<ProfileQueue>,
    receivers: Vec<(Format, Arc<PushStats>)>,
}

impl PushExporters {
    fn new(config: &Config) -> PushExporters {
        let traces = config.traces.enabled;
        let queue_spans = config.traces.queue_spans.get() as usize;
        let exporter = |name| PushExporter {
            stats: Arc::new(ExportStats::new(name)),
            spans: traces.then(|| Arc::new(SpanQueue::new(queue_spans))),
        };
        let push = PushExporters {
            jsonl: config.exporters.jsonl.enabled.then(|| exporter("jsonl")),
            otlp: config.exporters.otlp.enabled.then(|| exporter("otlp")),
            profiles: config.exporters.profiles.any().then(|| {
                let profiles = &config.exporters.profiles;
                ProfileExporter {
                    queue: Arc::new(ProfileQueue::new(profiles.queue_profiles.get() as usize)),
                    receivers: [
                        (Format::Pyroscope, profiles.pyroscope.enabled),
                        (Format::Otlp, profiles.otlp.enabled),
                    ]
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(format, _)| (format, Arc::new(PushStats::default())))
                    .collect(),
                }
            }),
            connections: AgentConnections::default(),
        };
        if config.probes.profile.enabled == crate::probes::profile::config::Switch::On
            && push.profiles.is_none()
        {
            warn!("probes.profile is on but no profile exporter is: profiles are only counted");
        }
        if traces && push.all().is_empty() {
            warn!("traces.enabled is set but no exporter is: spans are not made");
        }
        push
    }

    fn all(&self) -> Vec<PushExporter> {
        self.jsonl.iter().chain(self.otlp.iter()).cloned().collect()
    }
}

impl PushExporter {
    /// The queue the exporter takes spans from. Without traces it is an empty one: the
    /// exporter sends metrics only.
    fn queue(&self) -> Arc<SpanQueue> {
        self.spans
            .clone()
            .unwrap_or_else(|| Arc::new(SpanQueue::new(1)))
    }
}

/// The push exporters' settings, kept before the collector takes the configuration.
struct ExporterConfigs {
    jsonl: JsonLinesConfig,
    otlp: OtlpConfig,
    profiles: ProfilesConfig,
    traces: bool,
    wall_start: SystemTime,
}

impl ExporterConfigs {
    fn new(config: &Config, wall_start: SystemTime) -> ExporterConfigs {
        ExporterConfigs {
            jsonl: config.exporters.jsonl.clone(),
            otlp: config.exporters.otlp.clone(),
            profiles: config.exporters.profiles.clone(),
            traces: config.traces.enabled,
            wall_start,
        }
    }
}

/// Where exporters get metric snapshots: from the collector while it runs, then the
/// families it collected last.
struct Snapshots {
    commands: mpsc::SyncSender<Command>,
    last: Arc<Mutex<Option<Vec<Family>>>>,
}

impl Snapshots {
    fn source(&self) -> impl Fn() -> Option<Vec<Family>> + Send + 'static {
        let (commands, last) = (self.commands.clone(), self.last.clone());
        move || {
            let (reply, answer) = oneshot::channel();
            let live = commands
                .send(Command::Collect(reply))
                .ok()
                .and_then(|()| answer.blocking_recv().ok());
            live.or_else(|| last.lock().ok().and_then(|l| l.clone()))
        }
    }
}

/// Only the collector, which owns the BPF objects, needs capabilities from here on (it
/// kept its own). This thread serves HTTP and starts the exporters' threads, which
/// inherit its set, none, and its seccomp filter: from here on it, and they, may make
/// only the system calls they use.
fn confine_network_side(kept_caps: &[caps::Capability]) -> Result<()> {
    caps::keep_only(&[]).context("dropping the capabilities start-up needed")?;
    match crate::kernel::seccomp::confine_network_thread() {
        Ok(()) => info!("the HTTP server and the exporters run under a seccomp filter"),
        Err(err) => {
            warn!(error = %err, "could not install the seccomp filter of the network threads")
        }
    }
    info!(
        collector = %caps::describe(kept_caps),
        "dropped every capability but those the collector still needs"
    );
    Ok(())
}

/// Tells the user what became of each probe, and where metrics are served.
fn announce(reports: &[AttachReport], say: Say, endpoint: &MetricsEndpoint, started: Instant) {
    for report in reports {
        match &report.outcome {
            Ok(method) => {
                say.line(format!("periscope: attached {} ({method})", report.probe));
                for degraded in &report.degraded {
                    say.line(format!(
                        "periscope:   degraded {}: {degraded}",
                        report.probe
                    ));
                }
            }
            Err(reason) => say.line(format!("periscope: not running {}: {reason}", report.probe)),
        }
    }
    if !reports.iter().any(|r| r.outcome.is_ok()) {
        warn!("no probe is running; /metrics serves only the agent's own metrics");
    }
    say.line(format!(
        "periscope: serving metrics at {}://{}/metrics (started in {:.2}s)",
        endpoint.scheme,
        endpoint.address,
        started.elapsed().as_secs_f64()
    ));
}

type ExporterThread = (&'static str, thread::JoinHandle<std::io::Result<()>>);

/// Starts the threads of the push exporters that are on.
fn start_exporters(
    push: &PushExporters,
    configs: &ExporterConfigs,
    snapshots: &Snapshots,
    stop: &Arc<crate::export::Shutdown>,
    say: Say,
) -> Result<Vec<ExporterThread>> {
    let mut threads = Vec::new();
    if let Some(exporter) = &push.jsonl {
        let config = &configs.jsonl;
        let path = (config.path != "-").then(|| PathBuf::from(&config.path));
        let settings = jsonl::JsonLinesSettings {
            path: path.clone(),
            max_file_bytes: u64::from(config.max_file_bytes.get()),
            max_files: config.max_files,
            metrics_interval: (config.metrics_interval_secs > 0)
                .then(|| Duration::from_secs(config.metrics_interval_secs)),
            host_name: crate::export::host_name(),
            file_mode: config.mode().unwrap_or(0o640),
        };
        let (queue, snapshot) = (exporter.queue(), snapshots.source());
        let (stats, stop) = (exporter.stats.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("jsonl".into())
            .spawn(move || jsonl::run(settings, queue, snapshot, stats, stop))
            .context("starting the JSON lines exporter")?;
        let target = path.map_or("standard output".to_string(), |p| p.display().to_string());
        say.line(format!("periscope: writing JSON lines to {target}"));
        threads.push(("jsonl", thread));
    }
    if let Some(exporter) = &push.otlp {
        let settings = otlp_settings(&configs.otlp, configs.traces, configs.wall_start)?;
        let targets: Vec<String> = [&settings.traces, &settings.metrics]
            .into_iter()
            .flatten()
            .map(|destination| destination.endpoint.url())
            .collect();
        let (queue, snapshot) = (exporter.queue(), snapshots.source());
        let (stats, stop) = (exporter.stats.clone(), stop.clone());
        let connections = push.connections.clone();
        let thread = thread::Builder::new()
            .name("otlp".into())
            .spawn(move || otlp::run(settings, queue, snapshot, stats, stop, connections))
            .context("starting the OTLP exporter")?;
        say.line(format!(
            "periscope: pushing OTLP to {}",
            targets.join(" and ")
        ));
        threads.push(("otlp", thread));
    }
    if let Some(exporter) = &push.profiles {
        let config = &configs.profiles;
        let mut receivers = Vec::new();
        let mut targets = Vec::new();
        for (format, stats) in &exporter.receivers {
            let (receiver, default, path) = match format {
                Format::Pyroscope => (&config.pyroscope, PYROSCOPE_ENDPOINT, "/ingest"),
                Format::Otlp => (&config.otlp, OTLP_ENDPOINT, "/v1development/profiles"),
            };
            let endpoint = receiver.endpoint_or(default);
            let target = Endpoint::parse(endpoint).map_err(anyhow::Error::msg)?;
            let tls = if target.tls {
                let key = format!("exporters.profiles.{}.tls", format.name());
                Some(
                    receiver
                        .tls
                        .client_config(b"http/1.1")
                        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?,
                )
            } else {
                None
            };
            receivers.push(Receiver {
                format: *format,
                target,
                tls,
                timeout: Duration::from_secs(receiver.timeout_secs),
                max_retry: Duration::from_secs(receiver.max_retry_secs),
                stats: stats.clone(),
            });
            targets.push(format!("{}{path}", endpoint.trim_end_matches('/')));
        }
        let (queue, stop) = (exporter.queue.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("profiles".into())
            .spawn(move || push::run(receivers, queue, stop))
            .context("starting the profile exporter")?;
        say.line(format!(
            "periscope: pushing profiles to {}",
            targets.join(" and ")
        ));
        threads.push(("profiles", thread));
    }
    Ok(threads)
}

/// The profile exporter's own metrics, per receiver.
fn profile_exporter_families(exporter: &ProfileExporter) -> Vec<Family> {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    let mut pushes = Family::new(
        "periscope_profile_pushes",
        "Profile pushes (Pyroscope: one per service and interval; OTLP: one per interval): delivered, or given up after retries (failed).",
        MetricKind::Counter,
    );
    let mut retries = Family::new(
        "periscope_profile_push_retries",
        "Profile pushes tried again after 429, a 5xx or no answer.",
        MetricKind::Counter,
    );
    for (format, stats) in &exporter.receivers {
        let receiver = || vec![("exporter", format.name().to_string())];
        for (outcome, counter) in [
            ("sent", &stats.pushes_sent),
            ("failed", &stats.pushes_failed),
        ] {
            let mut labels = receiver();
            labels.push(("outcome", outcome.to_string()));
            pushes.push(labels, Value::Counter(load(counter)));
        }
        retries.push(receiver(), Value::Counter(load(&stats.retries)));
    }
    let mut dropped = Family::new(
        "periscope_profile_queue_dropped",
        "Interval profiles dropped unsent because the exporter's queue was full.",
        MetricKind::Counter,
    );
    dropped.push(Vec::new(), Value::Counter(load(&exporter.queue.dropped)));
    let mut queued = Family::new(
        "periscope_profile_queue_length",
        "Interval profiles waiting to be pushed.",
        MetricKind::Gauge,
    );
    queued.push(Vec::new(), Value::Gauge(exporter.queue.len() as f64));
    vec![pushes, retries, dropped, queued]
}

/// Waits for each exporter to stop; one still running past the deadline and its
/// grace is left behind.
async fn join_exporters(threads: Vec<ExporterThread>, deadline: Instant) {
    for (exporter, thread) in threads {
        let join = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout_at((deadline + EXPORTER_GRACE).into(), join).await {
            Err(_) => warn!(exporter, "the exporter did not stop in time; leaving it"),
            Ok(Ok(Ok(Err(err)))) => {
                warn!(exporter, error = %err, "the exporter stopped with an error")
            }
            Ok(Ok(Err(_))) => warn!(exporter, "the exporter thread panicked"),
            _ => {}
        }
    }
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
    server_stats: Arc<prometheus::ServerStats>,
    exporters: Vec<PushExporter>,
    span_buffer: Vec<Span>,
    profiles: Option<ProfileExporter>,
    workloads: Workloads,
    tenants: Option<TenantLimits>,
    /// The cgroups of tenants the probes know, and when they were last found.
    cgroup_tenants: Vec<(u64, u32)>,
    cgroup_tenants_at: Option<Instant>,
}

fn collector_main(
    config: Config,
    mut kernel: KernelFeatures,
    inbox: mpsc::Receiver<Command>,
    report: oneshot::Sender<Vec<AttachReport>>,
    started: Instant,
    endpoint: EndpointCounters,
    exports: CollectorExports,
) {
    let EndpointCounters {
        scrapes_refused,
        server: server_stats,
    } = endpoint;
    let CollectorExports {
        exporters,
        profiles,
        last_families,
        agent_connections,
    } = exports;
    let workloads = Workloads::start(&config.workloads, &config.tenants);
    let (probes, reports) = load_probes(&config, &mut kernel, true, &workloads, &agent_connections);
    let kept_caps = caps::kept_after_start(&capability_needs(&config));
    if let Err(err) = caps::keep_only(&kept_caps) {
        warn!(error = %err, "the collector thread keeps its capabilities");
    }
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
        server_stats,
        exporters,
        span_buffer: Vec::new(),
        profiles,
        workloads,
        tenants: TenantLimits::new(&config.tenants),
        cgroup_tenants: Vec::new(),
        cgroup_tenants_at: None,
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
        collector.forward_profiles();
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
        probe.flush();
    }
    collector.probes = probes;
    collector.forward_spans();
    collector.forward_profiles();
    // What the exporters send last, now that no snapshot can be asked for.
    if let Ok(mut last) = last_families.lock() {
        *last = Some(collector.collect());
    }
    drop(collector);
    info!(probes = count, "all probes detached");
}

/// The capabilities the configuration needs: those of any probe, of the kernel's
/// statistics, and each enabled probe's own.
pub fn capability_needs(config: &Config) -> Vec<caps::Need> {
    let enabled: Vec<_> = BUILT_IN
        .iter()
        .filter(|spec| spec.enabled(&config.probes))
        .collect();
    let probe_needs = enabled
        .iter()
        .flat_map(|spec| spec.capabilities(&config.probes))
        .collect();
    caps::needed(
        !enabled.is_empty(),
        config.self_metrics.bpf_stats,
        probe_needs,
    )
}

/// Loads every enabled built-in probe; one the kernel cannot run is reported, not fatal.
/// `agent_connections`: the exporters' connections, which the probes do not trace.
pub fn load_probes(
    config: &Config,
    kernel: &mut KernelFeatures,
    attach: bool,
    workloads: &Workloads,
    agent_connections: &AgentConnections,
) -> (Vec<Box<dyn Probe>>, Vec<AttachReport>) {
    let mut probes = Vec::new();
    let mut reports = Vec::new();
    let drops_tenants = config.tenants.rules.iter().any(|rule| rule.drop);
    let spans = config.traces.enabled.then(|| config.traces.sampler());
    let budget = SeriesBudget::new(config.processes.series_budget.get() as usize);
    for spec in BUILT_IN {
        let probe = spec.name();
        if !spec.enabled(&config.probes) {
            info!(probe, "disabled in the configuration");
            reports.push(AttachReport {
                probe,
                outcome: Err("disabled in the configuration".into()),
                degraded: Vec::new(),
            });
            continue;
        }
        info!(probe, "loading");
        let mut context = LoadContext {
            processes: &config.processes,
            drops_tenants,
            spans,
            kernel,
            attach,
            workloads,
            budget: &budget,
            agent_connections,
            profile_interval: Duration::from_secs(config.exporters.profiles.interval_secs),
        };
        match spec.load(&config.probes, &mut context) {
            Ok(loaded) => {
                let method = loaded.attach_method();
                if attach {
                    info!(probe, %method, "attached");
                }
                reports.push(AttachReport {
                    probe,
                    outcome: Ok(method),
                    degraded: loaded.degraded().iter().map(|d| d.describe()).collect(),
                });
                probes.push(loaded);
            }
            Err(err) => {
                warn!(probe, error = %err, "probe disabled: the kernel cannot run it");
                reports.push(AttachReport {
                    probe,
                    outcome: Err(err.to_string()),
                    degraded: Vec::new(),
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
        let queues: Vec<&Arc<SpanQueue>> = self
            .exporters
            .iter()
            .filter_map(|e| e.spans.as_ref())
            .collect();
        if let Some((last, others)) = queues.split_last() {
            for queue in others {
                queue.push(&mut self.span_buffer.clone());
            }
            last.push(&mut self.span_buffer);
        }
        self.span_buffer.clear();
    }

    /// Moves the probes' profiles to the profile exporter's queue. With no exporter they
    /// stay with the probes, which give them up and count them.
    fn forward_profiles(&mut self) {
        let Some(exporter) = &self.profiles else {
            return;
        };
        let mut profiles = Vec::new();
        for probe in &mut self.probes {
            probe.take_profiles(&mut profiles);
        }
        for profile in profiles {
            exporter.queue.push(profile);
        }
    }

    /// Tells the probes which cgroups belong to which tenant, found again at most every
    /// few seconds (until then, a new container of a dropped tenant is counted and its
    /// series removed on export, and one of a kept tenant counts in the share of no
    /// tenant).
    fn refresh_cgroup_tenants(&mut self, now: Instant) {
        if self
            .cgroup_tenants_at
            .is_some_and(|at| now.duration_since(at) < CGROUP_TENANTS_REFRESH)
        {
            return;
        }
        self.cgroup_tenants_at = Some(now);
        let found = self.workloads.cgroup_tenants(MAX_CGROUPS_WALKED);
        if found != self.cgroup_tenants {
            for probe in &mut self.probes {
                probe.set_cgroup_tenants(&found);
            }
            self.cgroup_tenants = found;
        }
    }

    fn collect(&mut self) -> Vec<Family> {
        let began = Instant::now();
        let now = Instant::now();
        self.workloads.begin_collection();
        if self.tenants.is_some() {
            self.refresh_cgroup_tenants(now);
        }
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
                tenant_folded: probe.tenant_folded(),
                expired_series: probe.expired_series(),
                events_lost: probe.events_lost(),
                degraded: probe.degraded().iter().map(|d| d.feature).collect(),
            });
        }
        for probe in &self.down {
            health.push(ProbeHealth {
                probe,
                up: false,
                programs: Vec::new(),
                maps: Vec::new(),
                folded: Vec::new(),
                tenant_folded: Vec::new(),
                expired_series: 0,
                events_lost: 0,
                degraded: Vec::new(),
            });
        }
        if let Some(tenants) = &mut self.tenants {
            tenants.apply(&mut families);
            families.extend(tenants.families());
        }
        families.extend(self.workloads.families());
        if let Some(exporter) = &self.profiles {
            families.extend(profile_exporter_families(exporter));
        }
        families.extend(selfmetrics::families(
            &health,
            &AgentHealth {
                collect_time: began.elapsed(),
                start_time: self.start_time,
                stats_enabled: self.stats.enabled_for(Instant::now()),
                scrapes_refused: self.scrapes_refused.load(Ordering::Relaxed),
                endpoint_connections: self.server_stats.open.load(Ordering::Relaxed),
                endpoint_evicted: self.server_stats.evicted.load(Ordering::Relaxed),
                endpoint_refused: self.server_stats.refused.load(Ordering::Relaxed),
                endpoint_tls_failed: self.server_stats.tls_failed.load(Ordering::Relaxed),
                scrapes: [0, 1, 2]
                    .map(|format| self.server_stats.scrapes[format].load(Ordering::Relaxed)),
                spans: self
                    .exporters
                    .iter()
                    .any(|e| e.spans.is_some())
                    .then(|| SpanHealth {
                        probe_dropped: self.probes.iter().map(|p| p.spans_dropped()).sum(),
                    }),
                exporters: self
                    .exporters
                    .iter()
                    .map(|e| {
                        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
                        let stats = &e.stats;
                        let queue = e.spans.as_deref();
                        ExporterHealth {
                            exporter: stats.exporter,
                            spans_queued: queue.map_or(0, |q| load(&q.accepted)),
                            spans_dropped: queue.map_or(0, |q| load(&q.dropped)),
                            queue_len: queue.map_or(0, SpanQueue::len),
                            queue_capacity: queue.map_or(0, SpanQueue::capacity),
                            spans_sent: load(&stats.spans_sent),
                            spans_failed: load(&stats.spans_failed),
                            metric_points_sent: load(&stats.metric_points_sent),
                            failures: load(&stats.failures),
                            rejected_spans: load(&stats.rejected_spans),
                            rejected_points: load(&stats.rejected_points),
                            retries: load(&stats.retries),
                            throttled: load(&stats.throttled),
                        }
                    })
                    .collect(),
            },
        ));
        families
    }
}

/// The OTLP exporter's settings from its configuration and the OpenTelemetry resource
/// variables.
fn otlp_settings(
    config: &OtlpConfig,
    traces: bool,
    started: SystemTime,
) -> Result<otlp::OtlpSettings> {
    let endpoint = |url: &str, key: &str| {
        Endpoint::parse(url).map_err(|e| anyhow::anyhow!("exporters.otlp.{key}: {e}"))
    };
    let base = endpoint(config.base_endpoint(), "endpoint")?;
    let protocol = if config.protocol == "grpc" {
        otlp::Protocol::Grpc
    } else {
        otlp::Protocol::HttpProtobuf
    };
    let alpn: &[u8] = match protocol {
        otlp::Protocol::Grpc => b"h2",
        otlp::Protocol::HttpProtobuf => b"http/1.1",
    };
    let signal = |url: &str, key: &str, path: &str, grpc_path: &str, tls: (&str, &TlsConfig)| {
        let given = if url.is_empty() {
            None
        } else {
            Some(endpoint(url, key)?)
        };
        let endpoint = match (protocol, given) {
            // gRPC names the method, whatever path the URL has.
            (otlp::Protocol::Grpc, given) => Endpoint {
                path: grpc_path.to_string(),
                ..given.unwrap_or_else(|| base.clone())
            },
            (otlp::Protocol::HttpProtobuf, Some(given)) => given,
            (otlp::Protocol::HttpProtobuf, None) => base.join(path),
        };
        let (tls_key, tls) = tls;
        let tls = if endpoint.tls {
            Some(
                tls.or(&config.tls)
                    .client_config(alpn)
                    .map_err(|e| anyhow::anyhow!("exporters.otlp.{tls_key}: {e}"))?,
            )
        } else {
            None
        };
        anyhow::Ok(otlp::Destination { endpoint, tls })
    };
    let mut resource = vec![otlp::proto::KeyValue::string(
        "host.name",
        crate::export::host_name(),
    )];
    if let Ok(attributes) = std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
        resource.extend(otlp::parse_resource_attributes(&attributes));
    }
    // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES.
    if let Some(service) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
    {
        resource.retain(|kv| kv.key != "service.name");
        resource.push(otlp::proto::KeyValue::string("service.name", service));
    } else if !resource.iter().any(|kv| kv.key == "service.name") {
        resource.push(otlp::proto::KeyValue::string("service.name", "periscope"));
    }
    Ok(otlp::OtlpSettings {
        protocol,
        traces: if traces {
            Some(signal(
                &config.traces_endpoint,
                "traces_endpoint",
                "v1/traces",
                otlp::GRPC_TRACES_PATH,
                ("traces_tls", &config.traces_tls),
            )?)
        } else {
            None
        },
        metrics: if config.metrics_interval_secs > 0 {
            Some(signal(
                &config.metrics_endpoint,
                "metrics_endpoint",
                "v1/metrics",
                otlp::GRPC_METRICS_PATH,
                ("metrics_tls", &config.metrics_tls),
            )?)
        } else {
            None
        },
        headers: config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        gzip: config.compression == "gzip",
        timeout: Duration::from_secs(config.timeout_secs.max(1)),
        exponential_scale: (config.histograms == otlp::HistogramKind::Exponential)
            .then_some(config.exponential_scale),
        metrics_interval: (config.metrics_interval_secs > 0)
            .then(|| Duration::from_secs(config.metrics_interval_secs)),
        batch_spans: config.batch_spans.get() as usize,
        max_retry: Duration::from_secs(config.max_retry_secs),
        resource,
        started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_needs_the_daemonsets_capabilities() {
        let needs = capability_needs(&Config::embedded_default());
        let names: Vec<&str> = needs.iter().map(|n| n.capability.name).collect();
        assert_eq!(
            names,
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        let kept: Vec<&str> = caps::kept_after_start(&needs)
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(kept, ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]);
    }

    #[test]
    fn the_error_names_each_missing_capability() {
        let needs = capability_needs(&Config::embedded_default());
        let message = caps::CapsError::Missing(vec![needs[3]]).to_string();
        assert!(
            message.starts_with("missing capability CAP_SYS_PTRACE: "),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn without_probes_no_capability_is_needed() {
        let mut config = Config::default();
        config.probes.syscalls.enabled = false;
        config.probes.process.enabled = false;
        config.probes.tcp.enabled = false;
        config.probes.http.enabled = false;
        assert!(capability_needs(&config).is_empty());
    }

    #[test]
    fn the_http_probe_keeps_what_it_reads_other_processes_with() {
        let mut config = Config::default();
        config.probes.http.enabled = true;
        let kept: Vec<&str> = caps::kept_after_start(&capability_needs(&config))
            .iter()
            .map(|c| c.name)
            .collect();
        assert!(kept.contains(&"CAP_SYS_PTRACE"), "{kept:?}");
        assert!(kept.contains(&"CAP_DAC_READ_SEARCH"), "{kept:?}");
    }
}
