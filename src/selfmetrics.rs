//! The agent's own metrics (`periscope_*`): what tracing costs and what was refused.
//! Labels name probes, programs, maps and configured tenants only: never a pid, process
//! name or address.

use std::time::Duration;

use serde::Deserialize;

use crate::kernel::stats::{ProgramStats, StatsMode};
use crate::model::{Family, MetricKind, Value};
use crate::probes::MapFill;
use crate::settings::{check_window, Invalid, Range, DAY};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfMetricsConfig {
    /// Kernel run-time statistics of our BPF programs: `always`, `sampled` or `off`.
    /// They cost about as much as the syscalls probe itself, hence sampled by default.
    pub bpf_stats: StatsMode,
    /// In `sampled` mode, statistics are on for this long...
    pub bpf_stats_sample_secs: u64,
    /// ...once in each period of this length.
    pub bpf_stats_period_secs: u64,
}

impl Default for SelfMetricsConfig {
    fn default() -> Self {
        SelfMetricsConfig {
            bpf_stats: StatsMode::Sampled,
            bpf_stats_sample_secs: 5,
            bpf_stats_period_secs: 60,
        }
    }
}

impl SelfMetricsConfig {
    /// Every number with the range it must fall in, keyed below `self_metrics`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new("bpf_stats_sample_secs", self.bpf_stats_sample_secs, 0, DAY),
            Range::new(
                "bpf_stats_period_secs",
                self.bpf_stats_period_secs,
                1,
                7 * DAY,
            ),
        ]
    }

    /// In sampled mode, the window must fit its period.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.bpf_stats == StatsMode::Sampled {
            check_window(
                ("bpf_stats_sample_secs", self.bpf_stats_sample_secs),
                ("bpf_stats_period_secs", self.bpf_stats_period_secs),
            )?;
        }
        Ok(())
    }
}

/// What one probe reports about itself at a collection.
pub struct ProbeHealth {
    pub probe: &'static str,
    pub up: bool,
    pub programs: Vec<(String, ProgramStats)>,
    pub maps: Vec<MapFill>,
    pub folded: Vec<(&'static str, u64)>,
    /// Map, tenant (None: no tenant's), new keys its full share refused.
    pub tenant_folded: Vec<(&'static str, Option<String>, u64)>,
    pub expired_series: u64,
    pub events_lost: u64,
    /// Features it runs without, because the kernel refused their programs.
    pub degraded: Vec<&'static str>,
}

/// What the agent reports about itself, beside its probes.
pub struct AgentHealth {
    /// Time this collection spent reading the kernel's maps.
    pub collect_time: Duration,
    /// Time from start until every probe was attached.
    pub start_time: Duration,
    /// How long kernel run-time statistics have been on.
    pub stats_enabled: Duration,
    /// Scrapes refused because the collector's queue was full.
    pub scrapes_refused: u64,
    /// Connections to the metrics endpoint: open now, closed to make room for a new one
    /// at the cap, and refused at the cap because every open one was busy.
    pub endpoint_connections: u64,
    pub endpoint_evicted: u64,
    pub endpoint_refused: u64,
    /// TLS handshakes that failed or did not finish within the head deadline.
    pub endpoint_tls_failed: u64,
    /// Scrapes answered in the text 0.0.4, OpenMetrics and protobuf formats.
    pub scrapes: [u64; 3],
    /// The span pipeline, when traces are on.
    pub spans: Option<SpanHealth>,
    /// What each push exporter delivered and lost.
    pub exporters: Vec<ExporterHealth>,
}

/// The span pipeline: spans probes dropped before handing them over.
pub struct SpanHealth {
    pub probe_dropped: u64,
}

/// One push exporter: its span queue (when traces are on) and what it delivered.
#[derive(Default)]
pub struct ExporterHealth {
    pub exporter: &'static str,
    /// Spans handed to its queue, dropped from it (the oldest, when full), waiting, cap.
    pub spans_queued: u64,
    pub spans_dropped: u64,
    pub queue_len: usize,
    pub queue_capacity: usize,
    pub spans_sent: u64,
    pub spans_failed: u64,
    pub metric_points_sent: u64,
    pub failures: u64,
    pub rejected_spans: u64,
    pub rejected_points: u64,
    pub retries: u64,
    pub throttled: u64,
}

pub fn families(health: &[ProbeHealth], agent: &AgentHealth) -> Vec<Family> {
    let mut probes = ProbeFamilies::new();
    for probe in health {
        probes.add(probe);
    }
    let mut families = vec![
        build_info(),
        probes.up,
        probes.degraded,
        probes.runs,
        probes.run_time,
        probes.missed,
        stats_enabled(agent),
        probes.entries,
        probes.capacity,
        probes.folded,
        probes.share_folded,
        probes.expired,
        probes.lost,
    ];
    families.extend(agent_families(agent));
    if agent.spans.is_some() || !agent.exporters.is_empty() {
        families.extend(span_families(agent.spans.as_ref(), &agent.exporters));
    }
    families
}

fn build_info() -> Family {
    let mut build = Family::new(
        "periscope_build_info",
        "Periscope's version; always 1.",
        MetricKind::Gauge,
    );
    build.push(
        vec![("version", env!("CARGO_PKG_VERSION").to_string())],
        Value::Gauge(1.0),
    );
    build
}

/// The families each probe has its series in.
struct ProbeFamilies {
    up: Family,
    degraded: Family,
    runs: Family,
    run_time: Family,
    missed: Family,
    entries: Family,
    capacity: Family,
    folded: Family,
    share_folded: Family,
    expired: Family,
    lost: Family,
}

impl ProbeFamilies {
    fn new() -> ProbeFamilies {
        ProbeFamilies {
            up: Family::new(
                "periscope_probe_up",
                "1 when the probe is loaded and attached, 0 when disabled or unsupported.",
                MetricKind::Gauge,
            ),
            degraded: Family::new(
                "periscope_probe_degraded",
                "1 for each feature a running probe does without, because this kernel refused the BPF programs that give it (the agent's log names them and what is lost).",
                MetricKind::Gauge,
            ),
            runs: Family::new(
                "periscope_bpf_program_runs",
                "Times each BPF program ran while kernel statistics were on (BPF_ENABLE_STATS; see periscope_bpf_stats_enabled_seconds_total).",
                MetricKind::Counter,
            ),
            run_time: Family::new(
                "periscope_bpf_program_run_seconds",
                "CPU time spent in each BPF program while kernel statistics were on (BPF_ENABLE_STATS).",
                MetricKind::Counter,
            )
            .with_unit("seconds"),
            missed: Family::new(
                "periscope_bpf_program_recursion_misses",
                "Runs the kernel skipped because the program was already running on that CPU: events it did not see.",
                MetricKind::Counter,
            ),
            entries: Family::new(
                "periscope_bpf_map_entries",
                "Entries in each keyed BPF map.",
                MetricKind::Gauge,
            ),
            capacity: Family::new(
                "periscope_bpf_map_capacity",
                "Configured cap of each keyed BPF map.",
                MetricKind::Gauge,
            ),
            folded: Family::new(
                "periscope_series_folded",
                "Updates that found their map full and went to the overflow series instead.",
                MetricKind::Counter,
            ),
            share_folded: Family::new(
                "periscope_tenant_share_folded",
                "Updates whose new key was refused because their tenant held its share of the kernel map (each map is divided equally between the tenants and the processes of none); their data went to the tenant's overflow series instead.",
                MetricKind::Counter,
            ),
            expired: Family::new(
                "periscope_series_expired",
                "Series of exited processes folded into per-executable aggregates after the TTL.",
                MetricKind::Counter,
            ),
            lost: Family::new(
                "periscope_events_lost",
                "Events the kernel could not hand to the agent (full ring buffer).",
                MetricKind::Counter,
            ),
        }
    }

    /// A probe's series: whether it is up, and what a running one reports.
    fn add(&mut self, probe: &ProbeHealth) {
        let probe_label = || vec![("probe", probe.probe.to_string())];
        self.up.push(
            probe_label(),
            Value::Gauge(if probe.up { 1.0 } else { 0.0 }),
        );
        if !probe.up {
            return;
        }
        for feature in &probe.degraded {
            let mut labels = probe_label();
            labels.push(("feature", feature.to_string()));
            self.degraded.push(labels, Value::Gauge(1.0));
        }
        for (program, stats) in &probe.programs {
            let mut labels = probe_label();
            labels.push(("program", program.clone()));
            self.runs
                .push(labels.clone(), Value::Counter(stats.run_count as f64));
            self.missed.push(
                labels.clone(),
                Value::Counter(stats.recursion_misses as f64),
            );
            self.run_time
                .push(labels, Value::Counter(stats.run_time_ns as f64 / 1e9));
        }
        for fill in &probe.maps {
            let mut labels = probe_label();
            labels.push(("map", fill.map.to_string()));
            self.entries
                .push(labels.clone(), Value::Gauge(fill.entries as f64));
            self.capacity
                .push(labels, Value::Gauge(fill.capacity as f64));
        }
        for (map, count) in &probe.folded {
            let mut labels = probe_label();
            labels.push(("map", map.to_string()));
            self.folded.push(labels, Value::Counter(*count as f64));
        }
        for (map, tenant, count) in &probe.tenant_folded {
            let mut labels = probe_label();
            labels.push(("map", map.to_string()));
            if let Some(tenant) = tenant {
                labels.push(("tenant", tenant.clone()));
            }
            self.share_folded
                .push(labels, Value::Counter(*count as f64));
        }
        self.expired
            .push(probe_label(), Value::Counter(probe.expired_series as f64));
        self.lost
            .push(probe_label(), Value::Counter(probe.events_lost as f64));
    }
}

/// How long kernel run-time statistics have been on.
fn stats_enabled(agent: &AgentHealth) -> Family {
    let mut stats = Family::new(
        "periscope_bpf_stats_enabled_seconds",
        "Time kernel run-time statistics were on: divide program runs and run time by it for rates.",
        MetricKind::Counter,
    )
    .with_unit("seconds");
    stats.push(vec![], Value::Counter(agent.stats_enabled.as_secs_f64()));
    stats
}

/// The collector's and the metrics endpoint's own families.
fn agent_families(agent: &AgentHealth) -> Vec<Family> {
    let mut scrape = Family::new(
        "periscope_scrape_duration_seconds",
        "Time this scrape spent reading the kernel's maps.",
        MetricKind::Gauge,
    )
    .with_unit("seconds");
    scrape.push(vec![], Value::Gauge(agent.collect_time.as_secs_f64()));
    let mut refused = Family::new(
        "periscope_scrapes_refused",
        "Scrapes answered 503 because too many were waiting for the collector.",
        MetricKind::Counter,
    );
    refused.push(vec![], Value::Counter(agent.scrapes_refused as f64));
    let mut endpoint_open = Family::new(
        "periscope_endpoint_connections",
        "Open connections to the metrics endpoint (capped by prometheus.max_connections).",
        MetricKind::Gauge,
    );
    endpoint_open.push(vec![], Value::Gauge(agent.endpoint_connections as f64));
    let endpoint_closed = Family::counters_by(
        "periscope_endpoint_connections_closed",
        "Connections to the metrics endpoint it closed: `evicted`, the one idle longest, to make room for a new one at the cap; `refused`, a new one at the cap because every open one was busy; `tls_failed`, a TLS handshake that failed or did not finish in time.",
        "reason",
        &[
            ("evicted", agent.endpoint_evicted),
            ("refused", agent.endpoint_refused),
            ("tls_failed", agent.endpoint_tls_failed),
        ],
    );
    let scrapes = Family::counters_by(
        "periscope_scrapes",
        "Scrapes of /metrics answered, by the format the scraper asked for: `text` (0.0.4), `openmetrics`, or `protobuf` (as Prometheus asks with native histograms on).",
        "format",
        &[
            ("text", agent.scrapes[0]),
            ("openmetrics", agent.scrapes[1]),
            ("protobuf", agent.scrapes[2]),
        ],
    );
    let mut start = Family::new(
        "periscope_start_duration_seconds",
        "Time from agent start until every probe was loaded and attached.",
        MetricKind::Gauge,
    )
    .with_unit("seconds");
    start.push(vec![], Value::Gauge(agent.start_time.as_secs_f64()));
    vec![
        scrape,
        refused,
        scrapes,
        endpoint_open,
        endpoint_closed,
        start,
    ]
}

fn span_families(spans: Option<&SpanHealth>, exporters: &[ExporterHealth]) -> Vec<Family> {
    let counter = |name, help| Family::new(name, help, MetricKind::Counter);
    let gauge = |name, help| Family::new(name, help, MetricKind::Gauge);
    let mut queued = counter(
        "periscope_spans_queued",
        "Spans handed to each exporter's queue.",
    );
    let mut dropped = counter(
        "periscope_spans_dropped",
        "Spans dropped before export: queue_full (an exporter's oldest, when it falls behind) or probe_buffer (held too long by a probe).",
    );
    let mut queue = gauge(
        "periscope_span_queue_spans",
        "Spans waiting in each exporter's queue.",
    );
    let mut capacity = gauge(
        "periscope_span_queue_capacity_spans",
        "Spans each exporter's queue holds at most (traces.queue_spans).",
    );
    let mut sent = counter(
        "periscope_exporter_spans_sent",
        "Spans each exporter delivered.",
    );
    let mut failed = counter(
        "periscope_exporter_spans_failed",
        "Spans each exporter lost because their delivery failed (after retries).",
    );
    let mut points = counter(
        "periscope_exporter_metric_points_sent",
        "Metric points (series) each exporter delivered.",
    );
    let mut failures = counter(
        "periscope_exporter_failures",
        "Failed writes or requests of each exporter, retries included.",
    );
    let mut rejected = counter(
        "periscope_exporter_rejected",
        "Items an OTLP receiver reported rejected in a partial success, by signal.",
    );
    let mut retries = counter(
        "periscope_exporter_retries",
        "Requests each exporter retried; throttled ones waited for the receiver's Retry-After.",
    );
    if let Some(spans) = spans {
        dropped.push(
            vec![("reason", "probe_buffer".to_string())],
            Value::Counter(spans.probe_dropped as f64),
        );
    }
    for e in exporters {
        let label = || vec![("exporter", e.exporter.to_string())];
        if spans.is_some() {
            queued.push(label(), Value::Counter(e.spans_queued as f64));
            let mut labels = label();
            labels.push(("reason", "queue_full".to_string()));
            dropped.push(labels, Value::Counter(e.spans_dropped as f64));
            queue.push(label(), Value::Gauge(e.queue_len as f64));
            capacity.push(label(), Value::Gauge(e.queue_capacity as f64));
        }
        sent.push(label(), Value::Counter(e.spans_sent as f64));
        failed.push(label(), Value::Counter(e.spans_failed as f64));
        points.push(label(), Value::Counter(e.metric_points_sent as f64));
        failures.push(label(), Value::Counter(e.failures as f64));
        for (signal, count) in [("spans", e.rejected_spans), ("metrics", e.rejected_points)] {
            let mut labels = label();
            labels.push(("signal", signal.to_string()));
            rejected.push(labels, Value::Counter(count as f64));
        }
        for (kind, count) in [
            ("backoff", e.retries - e.throttled.min(e.retries)),
            ("throttled", e.throttled),
        ] {
            let mut labels = label();
            labels.push(("wait", kind.to_string()));
            retries.push(labels, Value::Counter(count as f64));
        }
    }
    vec![
        queued, dropped, queue, capacity, sent, failed, points, failures, rejected, retries,
    ]
}
