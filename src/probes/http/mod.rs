//! The `http` probe: HTTP/1.x requests of every process, seen at the socket layer.
//!
//! The kernel side (`http.bpf.c`) tracks TCP connections from their establishment
//! (passive: a server's, active: a client's) to their close, and hands the reads and
//! writes of connections that start like HTTP to user space over a ring buffer, with
//! the process and fd of the syscall that made them; here they are framed
//! into exchanges (`parser`, `conn`) and aggregated into RED histograms per process,
//! method, status, route and server port; with traces on, each exchange also becomes a
//! span (`spans`).

pub mod conn;
pub mod dns;
mod endpoints;
mod graph;
pub mod parser;
pub mod mysql;
pub mod pg;
pub mod sql;
mod stream;
pub mod redis;
pub mod resp;
pub mod routes;
pub mod slots;
pub mod spans;
pub mod tls;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::{Link, MapCore, MapFlags, RingBuffer, RingBufferBuilder, UprobeOpts};
use tracing::{debug, info, warn};

use super::kit::programs::{load_degrading, load_object, AttemptError, Degraded, Plan, ProgramSpec};
use super::util::{self, MapFill, ProbeError};
use super::{BuiltIn, LoadContext, Probe};
use super::kit::budget::histogram_samples;
use super::kit::idle::Accumulate;
use super::kit::lifecycle::{FirstSeen, Owner, ProcessSeries};
use crate::enrich::ProcessTable;
use crate::kernel::caps::{self, Need};
use crate::model::histogram::DurationBounds;
use crate::model::native::{KernelHistogram, Unit};
use crate::model::span::{Span, SpanResource};
use crate::model::{Family, MetricKind, Value};
use conn::{Connection, Direction, Exchange, Framing, Protocol, Role};
use families::{
    db_duration_family, db_series_labels, dns_duration_family, dns_series_labels, series_labels,
    ExchangeValues, HttpFamilies,
};
use routes::{RoutePattern, RouteTable};

pub mod config;
mod families;

use config::HttpConfig;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/http.skel.rs"));
}
use skel::{types, HttpSkel, HttpSkelBuilder};
use types::psc_http_counter as Counter;

util::plain_types!(
    types::psc_http_series_key,
    types::psc_http_event,
    types::psc_conn_key,
    types::psc_http_exchange,
    types::psc_http_stats,
    types::psc_http_native,
    types::psc_dns_pending,
    types::psc_host,
);

/// What the ring buffer callback returns to stop a drain whose inbox is full.
const INBOX_FULL: i32 = -1;

/// The ring buffer is drained this often.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Network namespaces whose addresses the service graph keeps, at most.
const MAX_NAMESPACES: usize = 1024;

// The event kinds and the server role, as the BPF object defines them (http.h).
const KIND_READ: u8 = types::psc_http_event_kind::PSC_HTTP_READ.0 as u8;
const KIND_WRITE: u8 = types::psc_http_event_kind::PSC_HTTP_WRITE.0 as u8;
const KIND_CLOSE: u8 = types::psc_http_event_kind::PSC_HTTP_CLOSE.0 as u8;
const KIND_EXEC: u8 = types::psc_http_event_kind::PSC_HTTP_EXEC.0 as u8;
const KIND_OPEN: u8 = types::psc_http_event_kind::PSC_HTTP_OPEN.0 as u8;
const KIND_EXCHANGE: u8 = types::psc_http_event_kind::PSC_HTTP_EXCHANGE.0 as u8;
const KIND_HANDOFF: u8 = types::psc_http_event_kind::PSC_HTTP_HANDOFF.0 as u8;
const KIND_SPAN_START: u8 = types::psc_http_event_kind::PSC_HTTP_SPAN_START.0 as u8;
const KIND_SPAN_END: u8 = types::psc_http_event_kind::PSC_HTTP_SPAN_END.0 as u8;
const ROLE_SERVER: u8 = types::psc_http_role::PSC_ROLE_SERVER.0 as u8;
const ROLE_CLIENT: u8 = types::psc_http_role::PSC_ROLE_CLIENT.0 as u8;
const PROTO_REDIS: u8 = types::psc_l7_protocol::PSC_PROTO_REDIS.0 as u8;
const PROTO_POSTGRES: u8 = types::psc_l7_protocol::PSC_PROTO_POSTGRES.0 as u8;
const PROTO_MYSQL: u8 = types::psc_l7_protocol::PSC_PROTO_MYSQL.0 as u8;
const PROTO_DNS: u8 = types::psc_l7_protocol::PSC_PROTO_DNS.0 as u8;
const RESP_NAME_BYTES: usize = types::psc_resp_line::PSC_RESP_NAME_BYTES.0 as usize;
const RESP_ERROR_AT: usize = types::psc_resp_line::PSC_RESP_ERROR_AT.0 as usize;
const SQL_VERB_AT: usize = types::psc_sql_line::PSC_SQL_VERB_AT.0 as usize;
const SQL_TAG_AT: usize = types::psc_sql_line::PSC_SQL_TAG_AT.0 as usize;
const SQL_CLASS_AT: usize = types::psc_sql_line::PSC_SQL_CLASS_AT.0 as usize;
const SQL_EMPTY_AT: usize = types::psc_sql_line::PSC_SQL_EMPTY_AT.0 as usize;
const SQL_TEXT_AT: usize = types::psc_sql_line::PSC_SQL_TEXT_AT.0 as usize;
const MYSQL_COMMAND_AT: usize = types::psc_sql_line::PSC_MYSQL_COMMAND_AT.0 as usize;
const MYSQL_READING_AT: usize = types::psc_sql_line::PSC_MYSQL_READING_AT.0 as usize;
const MYSQL_CAPS_AT: usize = types::psc_sql_line::PSC_MYSQL_CAPS_AT.0 as usize;
const MYSQL_LEFT_AT: usize = types::psc_sql_line::PSC_MYSQL_LEFT_AT.0 as usize;
const MYSQL_HELD_AT: usize = types::psc_sql_line::PSC_MYSQL_HELD_AT.0 as usize;
const MYSQL_HEADER_AT: usize = types::psc_sql_line::PSC_MYSQL_HEADER_AT.0 as usize;

/// The protocol of the connection an event is of.
fn protocol_of(event: &types::psc_http_event) -> Protocol {
    match event.protocol {
        PROTO_REDIS => Protocol::Redis,
        PROTO_POSTGRES => Protocol::Postgres,
        PROTO_MYSQL => Protocol::Mysql,
        PROTO_DNS => Protocol::Dns,
        _ => Protocol::Http,
    }
}

/// How often lookups are checked for their timeout: a timeout is counted this late at most.
const DNS_EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// Lookups in flight read from the kernel per call when they are swept.
const DNS_SWEEP_BATCH: u32 = 512;

/// Kernel keys (paths of a route, mostly) per series slot, at most, on average.
const KEYS_PER_SLOT: u32 = 4;

/// New processes whose libssl is checked, at most, waiting their turn; beyond, counted.
const MAX_PENDING_EXECS: usize = 4096;
/// When a new process's mappings are read: the loader maps libraries within
/// milliseconds of exec; a late `dlopen` is caught by the second look.
const EXEC_LOOKS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(2)];

pub use crate::model::OVERFLOW as OVERFLOW_NAME;

impl BuiltIn for HttpProbe {
    type Settings = HttpConfig;
    const DESCRIPTION: &'static str =
        "HTTP/1.x requests per process: rate, status, latency, body sizes";

    /// Every new process's libssl is found through its `/proc/PID/root` and maps, for
    /// as long as the agent runs.
    fn capabilities(_settings: &HttpConfig) -> Vec<Need> {
        caps::reading_other_processes(
            "find the libssl of every process through its /proc/PID/root (probes.http)",
            true,
        )
    }

    fn load(settings: &Self::Settings, context: &mut LoadContext<'_>) -> Result<Self, ProbeError> {
        util::check_btf()?;
        let patterns = settings
            .routes
            .iter()
            .map(|r| RoutePattern::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ProbeError::Unsupported)?;
        let (mut probe, degraded) = load_degrading("http", PROGRAMS, |plan| {
            let mut probe = Self::load_with(settings, context, patterns.clone(), plan)?;
            if context.attach {
                probe.attach()?;
            }
            Ok(probe)
        })?;
        probe.degraded = degraded;
        Ok(probe)
    }
}

/// One series of exchanges: its owner (a process, an executable's exited processes,
/// or overflow) and what it counts.
type SeriesKey = (Owner, Exchanges);

/// What a kernel series slot counts: a series, and for a server's, the caller from
/// elsewhere its exchanges came from (graph::RemoteCallers).
type SlotSeries = (SeriesKey, Option<String>);

/// What a series counts: one kind of exchange.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Exchanges {
    protocol: Protocol,
    role: Role,
    /// HTTP: the method. Redis: the command. PostgreSQL: the statement's verb.
    method: String,
    status: u16,
    route: String,
    /// Client series only: the address the client connected to.
    server_address: String,
    server_port: u16,
    /// TLS plaintext (from the OpenSSL uprobes) or plain HTTP.
    tls: bool,
    /// Databases: the error's type on failures, empty otherwise.
    error_type: String,
}

#[derive(Debug, Clone, PartialEq)]
struct SeriesStats {
    duration_ns: KernelHistogram,
    request_bytes: KernelHistogram,
    response_bytes: KernelHistogram,
    /// When the series' process was first seen.
    first_seen: Option<SystemTime>,
}

impl Default for SeriesStats {
    fn default() -> Self {
        SeriesStats {
            duration_ns: KernelHistogram::new(Unit::Nanoseconds),
            request_bytes: KernelHistogram::new(Unit::Bytes),
            response_bytes: KernelHistogram::new(Unit::Bytes),
            first_seen: None,
        }
    }
}

impl Accumulate for SeriesStats {
    fn merge(&mut self, other: &Self) {
        self.duration_ns.merge(&other.duration_ns);
        self.request_bytes.merge(&other.request_bytes);
        self.response_bytes.merge(&other.response_bytes);
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl SeriesStats {
    fn record(&mut self, exchange: &Exchange) {
        self.duration_ns
            .record(exchange.duration_ns());
        self.request_bytes.record(exchange.request_body_bytes);
        self.response_bytes.record(exchange.response_body_bytes);
    }
}

/// A connection user space frames, by (process, fd).
struct Tracked {
    conn: Framing,
    /// Its bytes are TLS plaintext from the OpenSSL uprobes.
    tls: bool,
    /// The series of its last exchange, and what it was keyed from.
    last: Option<LastSeries>,
    /// Bytes at the start of its next event that the kernel framed already.
    skip: u64,
    /// When it began holding the partial head (or chunk line) it holds, if any.
    holding_since: Option<u64>,
}

struct LastSeries {
    method: String,
    path: String,
    status: u16,
    error_type: String,
    key: SeriesKey,
}

/// Raw events handed over by the ring buffer callback.
type Inbox = Rc<RefCell<InboxBuffers>>;

/// Events of one drain: headers, and all captured bytes back to back in one buffer, so
/// that an event costs no allocation once the buffers have grown.
#[derive(Default)]
struct InboxBuffers {
    events: Vec<(types::psc_http_event, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
}

impl InboxBuffers {
    /// About what the events held took in the ring buffer: headers and captured bytes.
    fn ring_bytes(&self) -> usize {
        self.bytes.len() + self.events.len() * std::mem::size_of::<types::psc_http_event>()
    }
}

pub struct HttpProbe {
    skel: HttpSkel<'static>,
    links: Vec<Link>,
    ring: Option<RingBuffer<'static>>,
    inbox: Inbox,
    /// User-space state per (process, fd), with whether it carries TLS plaintext.
    connections: HashMap<(u32, u32), Tracked>,
    max_connections: usize,
    connections_refused: u64,
    /// Bytes of partial heads and lines held by all connections, and the cap.
    head_bytes: usize,
    max_head_bytes: usize,
    /// The connections holding partial heads, by when they began: when the budget is
    /// spent the longest-held go first, so that slow or hostile clients holding heads
    /// open cannot take the share of the quick ones that complete.
    head_holders: BTreeSet<(u64, (u32, u32))>,
    /// Partial heads given up because the cap was reached.
    heads_abandoned: u64,
    /// Requests dropped unanswered past a connection's pending limit.
    pending_dropped: u64,
    /// PostgreSQL statement and portal names refused past each connection's cap.
    prepared_refused: u64,
    /// Times a connection's framing was lost to bytes the probe did not capture.
    uncaptured_losses: u64,
    /// Times a connection's framing restarted after ring buffer events were lost.
    gap_resets: u64,
    /// Series of live processes; those of exited processes are in `lifecycle`.
    series: BTreeMap<SeriesKey, SeriesStats>,
    max_series: usize,
    series_folded: u64,
    /// Where exited processes' series fold, what the budget admits, `_created`.
    lifecycle: ProcessSeries<Exchanges, SeriesStats>,
    routes: RouteTable,
    addresses: routes::PerServiceCap,
    /// Processes by tgid and generation (bpf/process.h).
    processes: ProcessTable<(u32, u16)>,
    pid_label: bool,
    durations: DurationBounds,
    /// Bounds of database operation durations.
    db_durations: DurationBounds,
    /// DNS sockets with lookups in flight (UDP) or open (TCP), by (process, fd), with
    /// the event of their last query: the process and server a timeout counts under.
    dns_sockets: HashMap<(u32, u32), (dns::DnsSocket, types::psc_http_event)>,
    dns_timeout_ns: u64,
    /// Lookups the kernel held in flight at the last sweep.
    dns_kernel_pending: u64,
    question_names: routes::PerServiceCap,
    dns_durations: DurationBounds,
    next_dns_expiry: Instant,
    /// Service graph edges, at most, and the requests of those past it (folded into the
    /// overflow edge) at the last collection.
    max_edges: usize,
    edges_folded: u64,
    body_bounds: Vec<u64>,
    body_bounds_exported: Vec<f64>,
    tls_libraries: usize,
    /// libssl files already traced, by (device, inode).
    tls_files: std::collections::HashSet<(u64, u64)>,
    /// New processes to look at, soonest first.
    pending_execs: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u32)>>,
    execs_refused: u64,
    exited_ttl: Duration,
    next_sweep: Instant,
    fill: Vec<MapFill>,
    /// Spans of exchanges, when traces are on.
    spans: Option<spans::SpanMaker>,
    /// Series the kernel framer counts in slots (when it frames).
    slots: slots::SlotTable<SlotSeries>,
    /// Server exchanges of callers from elsewhere, for the service graph.
    callers: graph::RemoteCallers,
    /// The processes serving each port (port, tgid, generation), at most `max_series`,
    /// and the addresses of their network namespaces: where the graph finds the local
    /// server a client called at a non-loopback address.
    serving: BTreeSet<(u16, u32, u16)>,
    serving_refused: u64,
    /// Clients are traced: the kernel notes their addresses, and so does `attach` for
    /// those connected before it.
    trace_clients: bool,
    /// Addresses of clients connected before the programs were attached that the
    /// kernel's map had no room for.
    local_clients_refused: u64,
    namespaces: endpoints::NamespaceAddresses,
    kernel_framing: bool,
    /// Exchanges the kernel framed and sent one by one, their series having no slot.
    kernel_records: u64,
    /// The hook received bytes are read at.
    ingress: &'static str,
    /// The programs the kernel took.
    loaded: Vec<&'static str>,
    /// Features the kernel refused.
    degraded: Vec<Degraded>,
}

const TLS_LOSS: &str = "HTTP inside TLS connections of OpenSSL programs";

/// Socket I/O is the probe; each OpenSSL uprobe and the exec hook add TLS plaintext.
static PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec::required("psc_http_state", "tp_btf/inet_sock_set_state"),
    ProgramSpec::required("psc_http_recv", "tp_btf/sock_recv_length with socket storage and ring buffer"),
    ProgramSpec::required("psc_http_send", "tp_btf/sock_send_length with socket storage and ring buffer"),
    ProgramSpec::optional(
        "psc_http_copy",
        "tp_btf/skb_copy_datagram_iovec with bpf_dynptr_from_skb",
        "io_uring reads",
        "HTTP that processes read through io_uring",
    ),
    ProgramSpec::optional(
        "psc_ssl_ret",
        "uretprobe with task storage and ring buffer",
        "TLS plaintext (OpenSSL)",
        TLS_LOSS,
    ),
    ProgramSpec::optional(
        "psc_ssl_read",
        "uprobe with task storage",
        "TLS reads by SSL_read",
        "HTTP that OpenSSL programs read with SSL_read",
    ),
    ProgramSpec::optional(
        "psc_ssl_write",
        "uprobe with task storage",
        "TLS writes by SSL_write",
        "HTTP that OpenSSL programs write with SSL_write",
    ),
    ProgramSpec::optional(
        "psc_ssl_read_ex",
        "uprobe with task storage",
        "TLS reads by SSL_read_ex",
        "HTTP that OpenSSL programs read with SSL_read_ex",
    ),
    ProgramSpec::optional(
        "psc_ssl_write_ex",
        "uprobe with task storage",
        "TLS writes by SSL_write_ex",
        "HTTP that OpenSSL programs write with SSL_write_ex",
    ),
    ProgramSpec::optional(
        "psc_ssl_set_fd",
        "uprobe",
        "SSL_set_fd",
        "nothing counted: an SSL object's socket is learned at its first read or write instead",
    ),
    ProgramSpec::optional(
        "psc_http_exec",
        "tp_btf/sched_process_exec with ring buffer",
        "libssl of programs started after the agent",
        "TLS plaintext of programs whose own libssl (a container's copy) appears after the agent started",
    ),
];

impl HttpProbe {

    /// One load attempt, with the programs `plan` leaves.
    fn load_with(
        settings: &HttpConfig,
        context: &LoadContext<'_>,
        patterns: Vec<RoutePattern>,
        plan: &Plan,
    ) -> Result<Self, AttemptError> {
        let (workloads, processes) = (context.workloads, context.processes);
        let mut open = util::open_object(HttpSkelBuilder::default(), "http")?;
        util::set_entries(&mut open.maps.tls_conns, settings.max_connections.get(), "tls_conns")?;
        util::set_entries(&mut open.maps.events, settings.ring_buffer_bytes, "events")?;
        let slot_count = settings.kernel_series.get();
        let key_count = slot_count.saturating_mul(KEYS_PER_SLOT);
        util::set_entries(&mut open.maps.slot_stats, slot_count, "slot_stats")?;
        util::set_entries(&mut open.maps.slot_native, slot_count, "slot_native")?;
        util::set_entries(&mut open.maps.slots, key_count, "slots")?;
        let callers = settings.max_remote_callers.get();
        util::set_entries(&mut open.maps.remote_callers, callers, "remote_callers")?;
        let local = settings.max_local_client_addresses.get();
        util::set_entries(&mut open.maps.local_clients, local, "local_clients")?;
        let kernel_framing = settings.kernel_framing;
        let durations = DurationBounds::new(&settings.duration_buckets_seconds.0);
        let body = &settings.body_size_buckets_bytes.0;
        let body_bounds: Vec<u64> = body.iter().map(|b| *b as u64).collect();
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.trace_clients = u8::from(settings.clients);
            rodata.agent_tgid = std::process::id();
            rodata.kernel_framing = u8::from(kernel_framing);
            rodata.protocols = settings.protocols.kernel_bits();
            rodata
                .psc_native_thresholds
                .copy_from_slice(Unit::Nanoseconds.kernel_thresholds());
            rodata
                .psc_bytes_thresholds
                .copy_from_slice(Unit::Bytes.kernel_thresholds());
            if let Some(sampler) = context.spans {
                let sampling = spans::KernelSampling::of(sampler);
                rodata.span_sampling = 1;
                rodata.span_root_always = u8::from(sampling.root_always);
                rodata.span_root_threshold = sampling.root_threshold;
                rodata.span_parent = match sampling.parent {
                    spans::ParentRule::Flag => types::psc_span_parent::PSC_PARENT_FLAG,
                    spans::ParentRule::Ask => types::psc_span_parent::PSC_PARENT_ASK,
                    spans::ParentRule::Never => types::psc_span_parent::PSC_PARENT_NEVER,
                }
                .0 as u8;
            }
        }
        let skel = load_object(open, plan, "http")?;
        let loaded: Vec<&'static str> = PROGRAMS
            .iter()
            .map(|p| p.name)
            .filter(|name| plan.loads(name))
            .collect();

        let probe = HttpProbe {
            skel,
            links: Vec::new(),
            ring: None,
            inbox: Rc::new(RefCell::new(InboxBuffers::default())),
            connections: HashMap::new(),
            max_connections: settings.max_connections.get() as usize,
            connections_refused: 0,
            head_bytes: 0,
            head_holders: BTreeSet::new(),
            max_head_bytes: settings.max_buffered_head_bytes.get() as usize,
            heads_abandoned: 0,
            pending_dropped: 0,
            prepared_refused: 0,
            uncaptured_losses: 0,
            gap_resets: 0,
            series: BTreeMap::new(),
            max_series: settings.max_series.get() as usize,
            series_folded: 0,
            lifecycle: ProcessSeries::new(
                workloads.clone(),
                processes.max_exited_executables.get() as usize,
                context.budget.for_probe("http"),
            ),
            routes: RouteTable::new(patterns, settings.max_routes_per_service.get() as usize),
            addresses: routes::PerServiceCap::new(
                settings.max_server_addresses_per_service.get() as usize
            ),
            processes: ProcessTable::new().with_workloads(workloads),
            pid_label: processes.pid_label,
            durations,
            db_durations: DurationBounds::new(&settings.db_duration_buckets_seconds.0),
            dns_sockets: HashMap::new(),
            dns_timeout_ns: u64::from(settings.dns.timeout_ms.get()) * 1_000_000,
            dns_kernel_pending: 0,
            question_names: routes::PerServiceCap::new(
                settings.dns.max_question_names_per_process.get() as usize,
            ),
            dns_durations: DurationBounds::new(&settings.dns.duration_buckets_seconds.0),
            next_dns_expiry: Instant::now(),
            max_edges: settings.max_service_graph_edges.get() as usize,
            edges_folded: 0,
            body_bounds,
            body_bounds_exported: body.clone(),
            tls_libraries: 0,
            tls_files: std::collections::HashSet::new(),
            pending_execs: std::collections::BinaryHeap::new(),
            execs_refused: 0,
            exited_ttl: Duration::from_secs(processes.exited_ttl_secs),
            next_sweep: Instant::now(),
            fill: Vec::new(),
            spans: context
                .spans
                .map(|sampler| spans::SpanMaker::new(sampler, context.agent_connections.clone())),
            slots: slots::SlotTable::new(slot_count, key_count),
            callers: graph::RemoteCallers::new(settings.max_service_graph_edges.get() as usize),
            serving: BTreeSet::new(),
            serving_refused: 0,
            trace_clients: settings.clients,
            local_clients_refused: 0,
            namespaces: endpoints::NamespaceAddresses::new(MAX_NAMESPACES),
            kernel_framing,
            kernel_records: 0,
            ingress: "sock_recv_length",
            loaded,
            degraded: Vec::new(),
        };
        Ok(probe)
    }

    fn attach(&mut self) -> Result<(), AttemptError> {
        if self.trace_clients {
            self.note_connected_clients();
        }
        // Establishment first, so that no connection's first bytes pass untracked.
        let progs = &self.skel.progs;
        for (prog, program) in [
            (&progs.psc_http_state, "psc_http_state"),
            (&progs.psc_http_recv, "psc_http_recv"),
            (&progs.psc_http_send, "psc_http_send"),
        ] {
            let link = prog.attach().map_err(AttemptError::attach(program))?;
            self.links.push(link);
        }
        // io_uring reads, from the skb, where the kernel allows it.
        if self.loads("psc_http_copy") {
            match progs.psc_http_copy.attach() {
                Ok(link) => {
                    self.links.push(link);
                    self.ingress = "sock_recv_length, skb_copy_datagram_iovec (io_uring)";
                }
                Err(error) => warn!(%error, "io_uring reads will not be seen"),
            }
        }
        self.attach_tls();
        if self.loads("psc_http_exec") {
            let link = self
                .skel
                .progs
                .psc_http_exec
                .attach()
                .map_err(AttemptError::attach("psc_http_exec"))?;
            self.links.push(link);
        }
        let inbox = self.inbox.clone();
        // One drain takes at most a ring buffer's worth: under a flood the producers
        // would otherwise keep the consumer looping while the inbox grew without bound.
        // What stays in the ring is taken at the next drain; what then does not fit in
        // the ring is counted as lost by the kernel.
        let inbox_limit = self.skel.maps.events.max_entries() as usize;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, move |data: &[u8]| {
                let mut event = types::psc_http_event::default();
                let header = std::mem::size_of::<types::psc_http_event>();
                if plain::copy_from_bytes(&mut event, data).is_ok() {
                    let captured = (event.captured as usize).min(data.len().saturating_sub(header));
                    let mut inbox = inbox.borrow_mut();
                    let start = inbox.bytes.len();
                    inbox
                        .bytes
                        .extend_from_slice(&data[header..header + captured]);
                    inbox.events.push((event, start..start + captured));
                    if inbox.ring_bytes() >= inbox_limit {
                        return INBOX_FULL;
                    }
                }
                0
            })
            .map_err(ProbeError::bpf("opening the http ring buffer"))?;
        self.ring = Some(
            builder
                .build()
                .map_err(ProbeError::bpf("opening the http ring buffer"))?,
        );
        Ok(())
    }

    /// Whether the kernel took `program`.
    fn loads(&self, program: &str) -> bool {
        self.loaded.contains(&program)
    }

    /// Uprobes on every libssl found: uprobes attach to the file, so every process that
    /// maps it, now or later, is covered.
    fn attach_tls(&mut self) {
        for library in tls::libssl_paths() {
            self.attach_libssl(&library);
        }
    }

    /// Looks at the libssl of processes that started a while ago.
    fn check_new_processes(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((due, pid))) = self.pending_execs.peek().copied() {
            if due > now {
                break;
            }
            self.pending_execs.pop();
            for library in tls::libssl_of(pid) {
                self.attach_libssl(&library);
            }
        }
    }

    fn attach_libssl(&mut self, found: &tls::Library) {
        // Without the return probe, no entry probe could finish a call.
        if !self.loads("psc_ssl_ret") {
            return;
        }
        let Some(id) = found.id() else {
            return;
        };
        // The open file itself, not a path that could lead elsewhere by now.
        let path = found.path();
        let library = path.as_path();
        if !self.tls_files.insert(id) {
            return;
        }
        let progs = &self.skel.progs;
        let mut attached = 0;
        for (function, program, prog, ret) in [
            ("SSL_read", "psc_ssl_read", &progs.psc_ssl_read, true),
            ("SSL_write", "psc_ssl_write", &progs.psc_ssl_write, true),
            (
                "SSL_read_ex",
                "psc_ssl_read_ex",
                &progs.psc_ssl_read_ex,
                true,
            ),
            (
                "SSL_write_ex",
                "psc_ssl_write_ex",
                &progs.psc_ssl_write_ex,
                true,
            ),
            ("SSL_set_fd", "psc_ssl_set_fd", &progs.psc_ssl_set_fd, false),
        ] {
            if !self.loaded.contains(&program) {
                continue;
            }
            let probe = |prog: &libbpf_rs::ProgramMut, retprobe: bool| {
                prog.attach_uprobe_with_opts(
                    -1,
                    library,
                    0,
                    UprobeOpts {
                        func_name: Some(function.to_string()),
                        retprobe,
                        ..Default::default()
                    },
                )
            };
            // The return probe first: an entry probe whose return is never seen would
            // leave its thread marked as inside an SSL call.
            if ret {
                match probe(&progs.psc_ssl_ret, true) {
                    Ok(link) => self.links.push(link),
                    Err(err) => {
                        debug!(library = %found.shown.display(), function, error = %err, "function not traced");
                        continue;
                    }
                }
            }
            match probe(prog, false) {
                Ok(link) => {
                    self.links.push(link);
                    attached += 1;
                }
                // The _ex variants exist from OpenSSL 1.1.1 on.
                Err(err) => {
                    debug!(library = %found.shown.display(), function, error = %err, "function not traced")
                }
            }
        }
        if attached > 0 {
            info!(library = %found.shown.display(), functions = attached, "tracing TLS plaintext");
            self.tls_libraries += 1;
        }
    }

    /// Takes every event the kernel has handed over and frames it.
    fn drain(&mut self) {
        if let Some(spans) = &mut self.spans {
            spans.sync_clock();
        }
        if let Some(ring) = &self.ring {
            // A full inbox stops the consumer (the record it stopped on is taken).
            if let Err(err) = ring.consume() {
                if !self.inbox_full() {
                    warn!(error = %err, "reading the http ring buffer failed");
                }
            }
        }
        // Taken out for the loop (handle needs &mut self), and put back, emptied, so the
        // buffers keep their capacity.
        let mut inbox = std::mem::take(&mut *self.inbox.borrow_mut());
        for (event, range) in &inbox.events {
            self.handle(event, &inbox.bytes[range.clone()]);
        }
        inbox.events.clear();
        inbox.bytes.clear();
        // A burst may have grown them to the ring buffer's size: give most of it back.
        inbox.events.shrink_to(16 * 1024);
        inbox.bytes.shrink_to(1 << 20);
        *self.inbox.borrow_mut() = inbox;
    }

    fn inbox_full(&self) -> bool {
        self.inbox.borrow().ring_bytes() >= self.skel.maps.events.max_entries() as usize
    }

    fn handle(&mut self, event: &types::psc_http_event, data: &[u8]) {
        if event.kind == KIND_EXEC {
            if self.pending_execs.len() >= MAX_PENDING_EXECS {
                self.execs_refused += 1;
            } else {
                let now = Instant::now();
                for look in EXEC_LOOKS {
                    self.pending_execs
                        .push(std::cmp::Reverse((now + look, event.tgid)));
                }
            }
            return;
        }
        // A connection's first event carries the process's name: learn it now, while
        // the process may still be there to read /proc from.
        let process = (event.tgid, event.gen);
        if event.comm[0] != 0 && self.processes.get(process).is_none() {
            let comm = util::c_string(&event.comm);
            self.processes.observe(process, Instant::now(), Some(&comm));
        }
        let key = (event.tgid, event.fd);
        let role = if event.role == ROLE_SERVER {
            Role::Server
        } else {
            Role::Client
        };
        if event.kind == KIND_EXCHANGE {
            self.kernel_exchange(event, role, data);
            return;
        }
        if event.kind == KIND_HANDOFF {
            self.take_over(event, role, data);
            return;
        }
        if event.kind == KIND_SPAN_START {
            if let Some(spans) = &mut self.spans {
                // A database's statement carries no trace context: no head follows.
                let head = match protocol_of(event) {
                    Protocol::Http => parser::parse_request_head(data),
                    Protocol::Redis | Protocol::Postgres | Protocol::Mysql | Protocol::Dns => None,
                };
                // Without a traceparent, the kernel's draw made it a root that is kept;
                // with one user space finds invalid, the sampler decides its root.
                let drawn = !head.as_ref().is_some_and(|h| h.carries_traceparent);
                let trace = head.and_then(|head| head.trace);
                let start = spans::Start {
                    role,
                    tgid: event.tgid,
                    tid: event.tid,
                    at: event.ts,
                    drawn,
                };
                spans.start_sampled(start, trace.as_ref());
            }
            return;
        }
        if event.kind == KIND_SPAN_END {
            self.kernel_span_end(event, role, data);
            return;
        }
        // A close ends the fd's connection; an open means whatever was known of this fd
        // belonged to an earlier one.
        if event.kind == KIND_OPEN || event.kind == KIND_CLOSE {
            if let Some((mut socket, query)) = self.dns_sockets.remove(&key) {
                for exchange in socket.close(event.ts) {
                    self.record(&query, Role::Client, exchange);
                }
            }
            if let Some(mut tracked) = self.connections.remove(&key) {
                self.head_bytes = self.head_bytes.saturating_sub(tracked.conn.buffered());
                if let Some(since) = tracked.holding_since {
                    self.head_holders.remove(&(since, key));
                }
                for exchange in tracked.conn.close(event.ts) {
                    self.record(event, role, exchange);
                }
            }
            return;
        }
        let direction = match event.kind {
            KIND_READ => Direction::Ingress,
            KIND_WRITE => Direction::Egress,
            _ => return,
        };
        let protocol = protocol_of(event);
        if protocol == Protocol::Dns {
            self.dns_io(event, direction, data);
            return;
        }
        if !self.connections.contains_key(&key) {
            if self.connections.len() >= self.max_connections {
                self.connections_refused += 1;
                return;
            }
            self.connections.insert(
                key,
                Tracked {
                    conn: Framing::new(protocol, role),
                    tls: false,
                    last: None,
                    skip: 0,
                    holding_since: None,
                },
            );
        }
        let Some(Tracked {
            conn,
            tls,
            skip,
            holding_since,
            ..
        }) = self.connections.get_mut(&key)
        else {
            return;
        };
        // The part of a read or write that belongs to the request the kernel framed.
        if event.gap != 0 {
            *skip = 0; // what it was for may be among the events lost
        }
        let (data, len) = if *skip > 0 {
            // A burst arrives as several events: the framed part may span more than one.
            let framed = (*skip).min(event.len);
            *skip -= framed;
            let from = (framed as usize).min(data.len());
            (&data[from..], event.len - framed)
        } else {
            (data, event.len)
        };
        // A reused fd with another role is a new connection; so is the switch to TLS
        // plaintext (what came before was the handshake). After lost events, the
        // requests awaiting responses would pair with the wrong ones: framing restarts
        // at the next message that starts in this event or later.
        let event_tls = event.tls != 0;
        let before = conn.buffered();
        if conn.role() != role || conn.protocol() != protocol || *tls != event_tls || event.gap != 0
        {
            if event.gap != 0 {
                self.gap_resets += 1;
            }
            *conn = if event.gap != 0 && conn.protocol() == protocol && *tls == event_tls {
                conn.after_gap(role)
            } else {
                Framing::new(protocol, role)
            };
            *tls = event_tls;
        }
        let exchanges = conn.feed_by(direction, data, len, event.ts, event.tid);
        let (pending_dropped, uncaptured_losses) = conn.take_losses();
        self.pending_dropped += pending_dropped;
        self.prepared_refused += conn.take_names_refused();
        self.uncaptured_losses += uncaptured_losses;
        if let Some(spans) = &mut self.spans {
            conn.decide_spans(|request| spans.decide(role, request));
        }
        // Partial heads are held across reads; all connections together hold at most
        // `max_buffered_head_bytes` (slow or hostile clients cannot grow the agent).
        let holding = conn.buffered() > 0;
        match (holding, *holding_since) {
            (true, None) => {
                *holding_since = Some(event.ts);
                self.head_holders.insert((event.ts, key));
            }
            (false, Some(since)) => {
                self.head_holders.remove(&(since, key));
                *holding_since = None;
            }
            _ => {}
        }
        self.head_bytes = self.head_bytes.saturating_sub(before) + conn.buffered();
        if self.head_bytes > self.max_head_bytes {
            self.abandon_oldest_heads();
        }
        for exchange in exchanges {
            self.record(event, role, exchange);
        }
    }

    /// A DNS query or answer a client wrote or read: a datagram, or a piece of a TCP
    /// stream. An answer on a socket no query was seen on makes nothing.
    fn dns_io(&mut self, event: &types::psc_http_event, direction: Direction, data: &[u8]) {
        let key = (event.tgid, event.fd);
        let datagrams = event.datagram != 0;
        let known = self
            .dns_sockets
            .get(&key)
            .is_some_and(|(socket, _)| socket.is_datagrams() == datagrams);
        if !known {
            if datagrams && direction == Direction::Ingress {
                return;
            }
            if !self.dns_sockets.contains_key(&key) && self.dns_sockets.len() >= self.max_connections
            {
                self.connections_refused += 1;
                return;
            }
            self.dns_sockets
                .insert(key, (dns::DnsSocket::new(datagrams), *event));
        }
        let Some((socket, last_query)) = self.dns_sockets.get_mut(&key) else {
            return;
        };
        if direction == Direction::Egress {
            *last_query = *event;
        }
        // What waited past the timeout failed before this answer came.
        let mut done = socket.expire(event.ts, self.dns_timeout_ns);
        done.extend(socket.feed(direction, data, event.len, event.ts, event.tid));
        if let Some(spans) = &mut self.spans {
            socket.decide_spans(|request| spans.decide(Role::Client, request));
        }
        let (refused, lost) = socket.take_losses();
        self.pending_dropped += refused;
        self.uncaptured_losses += lost;
        let query = *last_query;
        if socket.is_datagrams() && socket.is_idle() {
            self.dns_sockets.remove(&key);
        }
        for exchange in done {
            self.record(&query, Role::Client, exchange);
        }
    }

    /// Lookups the kernel holds unanswered past the timeout fail as `timeout`: each is
    /// taken out of its map first, so that an answer the kernel pairs meanwhile is not
    /// counted twice.
    fn expire_kernel_lookups(&mut self, now: u64) {
        let map = &self.skel.maps.dns_pending;
        let mut timed_out = Vec::new();
        // A batch reads the map in a few calls, not two per lookup in flight. A kernel
        // that refuses batches reads as empty: the map is then read key by key, which
        // costs one call when it is empty indeed.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = map
            .lookup_batch(DNS_SWEEP_BATCH, MapFlags::ANY, MapFlags::ANY)
            .map(Iterator::collect)
            .unwrap_or_default();
        if entries.is_empty() {
            entries = map
                .keys()
                .filter_map(|key| {
                    let value = map.lookup(&key, MapFlags::ANY).ok().flatten()?;
                    Some((key, value))
                })
                .collect();
        }
        let read = entries.len();
        for (key, value) in entries {
            let Some(pending) = util::decode::<types::psc_dns_pending>(&value) else {
                continue;
            };
            if now.saturating_sub(pending.start_ns) >= self.dns_timeout_ns && map.delete(&key).is_ok() {
                timed_out.push(pending);
            }
        }
        self.dns_kernel_pending = (read - timed_out.len()) as u64;
        for pending in timed_out {
            let line = whole_line_of(&pending.line);
            let end = pending.start_ns + self.dns_timeout_ns;
            let len = usize::from(pending.line_len).min(line.len());
            let Some(lookup) =
                dns::kernel_lookup(&line[..len], 0, Some(dns::TIMEOUT), pending.start_ns, end, pending.tid)
            else {
                continue;
            };
            let owner = types::psc_http_event {
                tgid: pending.tgid,
                fd: pending.fd,
                gen: pending.gen,
                tid: pending.tid,
                protocol: PROTO_DNS,
                role: ROLE_CLIENT,
                datagram: 1,
                server: pending.server,
                ..Default::default()
            };
            self.record(&owner, Role::Client, lookup);
        }
    }

    /// Lookups unanswered past the timeout fail as `timeout`.
    fn expire_lookups(&mut self) {
        let now = dns::monotonic_ns();
        if self.kernel_framing {
            self.expire_kernel_lookups(now);
        }
        let timeout = self.dns_timeout_ns;
        let mut timed_out = Vec::new();
        self.dns_sockets.retain(|_, (socket, query)| {
            for exchange in socket.expire(now, timeout) {
                timed_out.push((*query, exchange));
            }
            !(socket.is_datagrams() && socket.is_idle())
        });
        for (query, exchange) in timed_out {
            self.record(&query, Role::Client, exchange);
        }
    }

    /// Gives up the partial heads held longest until what is held fits the budget; each
    /// connection resumes framing at its next message.
    fn abandon_oldest_heads(&mut self) {
        while self.head_bytes > self.max_head_bytes {
            let Some((since, key)) = self.head_holders.pop_first() else {
                break;
            };
            let Some(tracked) = self.connections.get_mut(&key) else {
                continue;
            };
            if tracked.holding_since != Some(since) {
                continue;
            }
            self.head_bytes = self.head_bytes.saturating_sub(tracked.conn.buffered());
            tracked.conn.abandon_partial();
            tracked.holding_since = None;
            self.heads_abandoned += 1;
        }
    }

    fn record(&mut self, event: &types::psc_http_event, role: Role, exchange: Exchange) {
        // A keep-alive connection mostly repeats its last series: then no name, route
        // or address is looked up and nothing is allocated.
        let conn_key = (event.tgid, event.fd);
        if let Some(last) = self
            .connections
            .get(&conn_key)
            .and_then(|t| t.last.as_ref())
        {
            if last.status == exchange.status
                && last.method == exchange.method
                && last.path == exchange.path
                && last.error_type == exchange.error_type
                && last.key.1.protocol == exchange.protocol
                && last.key.1.tls == (event.tls != 0)
                && last.key.1.role == role
            {
                if let Some(stats) = self.series.get_mut(&last.key) {
                    stats.record(&exchange);
                    if let Some(caller) = event_caller(event, role) {
                        let took = exchange.duration_ns();
                        self.callers.count_one(&last.key.0, &last.key.1, &caller, took);
                    }
                    if self.spans.is_some() {
                        let route = last.key.1.route.clone();
                        self.finish_span(event, role, exchange, &route);
                    }
                    return;
                }
            }
        }
        let key = self.series_key(event, role, &exchange);
        // Folding into an overflow series is counted per exchange: never remembered.
        let folded = [&key.0.name, &key.1.route, &key.1.server_address]
            .iter()
            .any(|label| label.as_str() == OVERFLOW_NAME);
        if let (false, Some(tracked)) = (folded, self.connections.get_mut(&conn_key)) {
            tracked.last = Some(LastSeries {
                method: exchange.method.clone(),
                path: exchange.path.clone(),
                status: exchange.status,
                error_type: exchange.error_type.clone(),
                key: key.clone(),
            });
        }
        let created = self
            .processes
            .get((event.tgid, event.gen))
            .map(|info| info.first_seen);
        let route = self.spans.is_some().then(|| key.1.route.clone());
        if let Some(caller) = event_caller(event, role) {
            self.callers
                .count_one(&key.0, &key.1, &caller, exchange.duration_ns());
        }
        let stats = self.series.entry(key).or_default();
        if stats.first_seen.is_none() {
            stats.first_seen = created;
        }
        stats.record(&exchange);
        if let Some(route) = route {
            self.finish_span(event, role, exchange, &route);
        }
    }

    /// Notes in the kernel the addresses of this node's clients connected before the
    /// programs are attached, so that servers here adopting their connections know them
    /// as local (the kernel notes later clients as they connect).
    fn note_connected_clients(&mut self) {
        let map = &self.skel.maps.local_clients;
        for address in endpoints::connected_clients() {
            let mut host = types::psc_host::default();
            match address {
                std::net::IpAddr::V4(v4) => {
                    host.family = libc::AF_INET as u32;
                    host.addr[..4].copy_from_slice(&v4.octets());
                }
                std::net::IpAddr::V6(v6) => {
                    host.family = libc::AF_INET6 as u32;
                    host.addr = v6.octets();
                }
            }
            let key = util::plain_bytes(&host);
            if map.update(key, &[1], MapFlags::NO_EXIST).is_err()
                && !matches!(map.lookup(key, MapFlags::ANY), Ok(Some(_)))
            {
                self.local_clients_refused += 1;
            }
        }
    }

    /// An exchange the kernel framed whose series has no slot yet: counted here, and its
    /// key installed, so that the kernel counts the next ones itself.
    fn kernel_exchange(&mut self, event: &types::psc_http_event, role: Role, data: &[u8]) {
        let Some(record) = util::decode::<types::psc_http_exchange>(data) else {
            return;
        };
        self.kernel_records += 1;
        let Some((owner, exchange)) = framed_exchange(event, &record) else {
            return;
        };
        let key = self.series_key(&owner, role, &exchange);
        let created = self
            .processes
            .get((owner.tgid, owner.gen))
            .map(|info| info.first_seen);
        let stats = self.series.entry(key.clone()).or_default();
        if stats.first_seen.is_none() {
            stats.first_seen = created;
        }
        stats.record(&exchange);
        let caller = key_caller(role, &record.key);
        if let Some(caller) = &caller {
            self.callers
                .count_one(&key.0, &key.1, caller, exchange.duration_ns());
        }
        let kernel_key = util::plain_bytes(&record.key);
        let counted = (key.clone(), caller);
        if let Err(refused) = self.slots.install(&self.skel.maps.slots, kernel_key, &counted) {
            debug!(?refused, "series left to user space");
        }
        if record.sampled != 0 {
            let route = key.1.route.clone();
            self.kernel_span(&owner, role, &record, exchange, &route);
        }
    }

    /// A sampled exchange the kernel counted in its slot: its span alone.
    fn kernel_span_end(&mut self, event: &types::psc_http_event, role: Role, data: &[u8]) {
        let Some(record) = util::decode::<types::psc_http_exchange>(data) else {
            return;
        };
        let Some((owner, exchange)) = framed_exchange(event, &record) else {
            return;
        };
        let name = self
            .processes
            .get((owner.tgid, owner.gen))
            .map(|info| info.name.clone())
            .unwrap_or_default();
        let route = self.routes.route(&name, &exchange.path);
        self.kernel_span(&owner, role, &record, exchange, &route);
    }

    /// Makes the span of a kernel-framed exchange from the context its start decided.
    fn kernel_span(
        &mut self,
        owner: &types::psc_http_event,
        role: Role,
        record: &types::psc_http_exchange,
        mut exchange: Exchange,
        route: &str,
    ) {
        let Some(spans) = &mut self.spans else {
            return;
        };
        exchange.context = spans.take_started(started_key(record));
        self.finish_span(owner, role, exchange, route);
    }

    /// The kernel hands a connection over: it is framed here from now on, starting from
    /// the request the kernel framed, if any, and past the bytes of the next event that
    /// belong to it.
    fn take_over(&mut self, event: &types::psc_http_event, role: Role, data: &[u8]) {
        let Some(record) = util::decode::<types::psc_http_exchange>(data) else {
            return;
        };
        // DNS over TCP is never framed as a connection: dns_io pairs its messages.
        if protocol_of(event) == Protocol::Dns {
            return;
        }
        let key = (event.tgid, event.fd);
        if let Some(old) = self.connections.remove(&key) {
            self.head_bytes = self.head_bytes.saturating_sub(old.conn.buffered());
            if let Some(since) = old.holding_since {
                self.head_holders.remove(&(since, key));
            }
        }
        if self.connections.len() >= self.max_connections {
            self.connections_refused += 1;
            return;
        }
        // The request the kernel framed, awaiting its answer, if any: its span was
        // decided in the kernel, the context it started or none.
        let pending = record.line_len > 0;
        let context = match &mut self.spans {
            Some(spans) if pending && record.sampled != 0 => spans.take_started(started_key(&record)),
            _ => None,
        };
        let conn = match protocol_of(event) {
            Protocol::Http => {
                let mut conn = Connection::new(role);
                let framed = pending
                    .then(|| parser::parse_framed_line(framed_line(&record)))
                    .flatten();
                if let Some((method, path)) = framed {
                    conn.resume(
                        method,
                        path,
                        record.start_ns,
                        record.request_body,
                        record.tid,
                        context,
                    );
                }
                Framing::Http(conn)
            }
            Protocol::Redis => {
                let mut resp = resp::RespConnection::new(role);
                if pending {
                    let (command, _) = redis_line(&record);
                    resp.resume(command, record.start_ns, record.tid, context);
                }
                Framing::Redis(resp)
            }
            // Handed over at its first bytes (an SSL request): framed from its startup.
            Protocol::Postgres if record.mid_stream == 0 => Framing::new(Protocol::Postgres, role),
            Protocol::Postgres => {
                let resumed = pending.then(|| pg::Resumed {
                    statement: pg_statement(&record),
                    start: record.start_ns,
                    tid: record.tid,
                    context,
                });
                let (conn, done) = pg::PgConnection::resume(role, resumed, event.ts);
                if let Some(exchange) = done {
                    self.record(event, role, exchange);
                }
                Framing::Postgres(conn)
            }
            // Handed over at its greeting (kernel framing off): framed from its handshake.
            Protocol::Mysql if record.mid_stream == 0 => Framing::new(Protocol::Mysql, role),
            Protocol::Mysql => {
                let resumed = pending.then(|| mysql::Resumed {
                    command: mysql_command(&record),
                    reading: mysql_reading(&record),
                    start: record.start_ns,
                    tid: record.tid,
                    context,
                });
                Framing::Mysql(mysql::MysqlConnection::resume(role, &mysql_connection(&record), resumed))
            }
            // Never framed in the kernel: handed over at its first bytes.
            Protocol::Dns => Framing::new(Protocol::Dns, role),
        };
        self.connections.insert(
            key,
            Tracked {
                conn,
                tls: false,
                last: None,
                skip: u64::from(record.skip),
                holding_since: None,
            },
        );
    }

    /// Adds what the kernel counted in its series slots since the last look.
    fn fold_slots(&mut self) {
        if !self.kernel_framing {
            return;
        }
        let (stats_map, native_map) = (&self.skel.maps.slot_stats, &self.skel.maps.slot_native);
        let deltas = self.slots.deltas(|slot| {
            let key = slot.to_ne_bytes();
            // The count is the buckets' total, whatever the timing; a duration counted
            // between the two reads may show its sum now and its bucket next time.
            let native = native_map.lookup(&key, MapFlags::ANY).ok().flatten()?;
            let native = util::decode::<types::psc_http_native>(&native)?;
            let values = stats_map.lookup_percpu(&key, MapFlags::ANY).ok().flatten()?;
            let cpus: Vec<slots::CpuCounts> = values
                .iter()
                .filter_map(|bytes| util::decode::<types::psc_http_stats>(bytes))
                .map(|stats| cpu_counts(&stats))
                .collect();
            Some(slots::SlotCounts::of(
                &cpus,
                [&native.duration, &native.request_body, &native.response_body],
            ))
        });
        for ((key, caller), delta) in deltas {
            if let Some(caller) = caller {
                self.callers.count(&key.0, &key.1, &caller, &delta.duration);
            }
            let stats = self.series.entry(key).or_default();
            stats.duration_ns.merge(&delta.duration);
            stats.request_bytes.merge(&delta.request_body);
            stats.response_bytes.merge(&delta.response_body);
        }
    }

    /// Frees the slots of series that left `series`, zeroing their counts for reuse.
    fn release_slots(&mut self) {
        if !self.kernel_framing {
            return;
        }
        let live = &self.series;
        let freed = self
            .slots
            .release(&self.skel.maps.slots, |(key, _)| !live.contains_key(key));
        if freed.is_empty() {
            return;
        }
        let Ok(cpus) = libbpf_rs::num_possible_cpus() else {
            return;
        };
        let zeroes = vec![vec![0u8; std::mem::size_of::<types::psc_http_stats>()]; cpus];
        let no_buckets = vec![0u8; std::mem::size_of::<types::psc_http_native>()];
        let maps = &self.skel.maps;
        for slot in freed {
            let key = slot.to_ne_bytes();
            let cleared = maps
                .slot_stats
                .update_percpu(&key, &zeroes, MapFlags::ANY)
                .and_then(|()| maps.slot_native.update(&key, &no_buckets, MapFlags::ANY));
            if let Err(err) = cleared {
                warn!(slot, error = %err, "clearing a series slot failed");
            }
        }
    }

    /// Hands a finished exchange to the span maker.
    fn finish_span(
        &mut self,
        event: &types::psc_http_event,
        role: Role,
        exchange: Exchange,
        route: &str,
    ) {
        let Some(context) = exchange.context else {
            return;
        };
        let Some(spans) = &mut self.spans else {
            return;
        };
        // Unsampled spans cost no names or addresses, only the end of their serving.
        let (name, workload, server_address, client_address) = if context.sampled {
            let (name, workload) = self
                .processes
                .get((event.tgid, event.gen))
                .map(|info| (info.name.clone(), info.workload.clone()))
                .unwrap_or_default();
            let server = match role {
                Role::Client => peer_address(&event.server),
                Role::Server => String::new(),
            };
            (name, workload, server, peer_address(&event.client))
        } else {
            Default::default()
        };
        let workloads = self.processes.workloads();
        let service_name = workload.service().unwrap_or(&name).to_string();
        let workload_labels = workloads.workload_labels(&workload);
        let db = match exchange.protocol {
            Protocol::Http | Protocol::Dns => None,
            Protocol::Redis => Some(spans::DbCall {
                system: exchange.protocol.name(),
                operation: redis::command_name(&exchange.method),
                summary: String::new(),
                error_type: redis::error_type(exchange.status != 0, &exchange.error_type)
                    .to_string(),
            }),
            Protocol::Postgres | Protocol::Mysql => Some(spans::DbCall {
                system: exchange.protocol.name(),
                operation: sql::verb(exchange.method.as_bytes()),
                summary: exchange.path.clone(),
                error_type: exchange.error_type.clone(),
            }),
        };
        spans.finish(spans::Finished {
            role,
            tid: exchange.tid,
            context,
            db,
            dns: (exchange.protocol == Protocol::Dns).then(|| spans::DnsCall {
                question_type: dns::type_name_of(&exchange.method),
                question_name: exchange.path.clone(),
                error_type: exchange.error_type.clone(),
            }),
            method: &normalize_method(&exchange.method),
            route,
            path: &exchange.path,
            status: exchange.status,
            tls: event.tls != 0,
            start_ns: exchange.start_ns,
            end_ns: exchange.end_ns,
            server_address,
            server_port: event.server.port,
            client_address,
            client_port: event.client.port,
            resource: SpanResource {
                pid: event.tgid,
                executable_name: name,
                service_name,
                workload: workload_labels,
            },
        });
    }

    /// The series an exchange belongs to, admitting its route and server address
    /// within their caps, or the overflow series when the series cap is reached.
    fn series_key(
        &mut self,
        event: &types::psc_http_event,
        role: Role,
        exchange: &Exchange,
    ) -> SeriesKey {
        let tgid = event.tgid;
        let process = (tgid, event.gen);
        let server_port = event.server.port;
        // /proc is read once per process here; collections refresh it.
        let (name, workload) = match self.processes.get(process) {
            Some(info) => (info.name.clone(), info.workload.clone()),
            None => {
                let info = self.processes.observe(process, Instant::now(), None);
                (info.name.clone(), info.workload.clone())
            }
        };
        let route = match exchange.protocol {
            Protocol::Http => self.routes.route(&name, &exchange.path),
            Protocol::Redis | Protocol::Postgres | Protocol::Mysql => String::new(),
            // The question's name, capped per executable.
            Protocol::Dns => self.question_names.admit(&name, exchange.path.clone()),
        };
        // Clients report whom they called, capped per service; servers are themselves.
        let mut server_port = server_port;
        let server_address = match role {
            Role::Client => {
                let address = peer_address(&event.server);
                let admitted = self
                    .addresses
                    .admit(&name, format!("{address}:{server_port}"));
                if admitted == routes::OVERFLOW_ROUTE {
                    server_port = 0;
                    admitted
                } else {
                    address
                }
            }
            Role::Server => String::new(),
        };
        let owner = Owner::new(self.pid_label.then_some(tgid), name, workload);
        let (method, status, error_type) = match exchange.protocol {
            Protocol::Http => (
                normalize_method(&exchange.method),
                exchange.status,
                String::new(),
            ),
            Protocol::Redis => (
                redis::command_name(&exchange.method).to_string(),
                0,
                redis::error_type(exchange.status != 0, &exchange.error_type).to_string(),
            ),
            // The framer names statements and errors from closed sets already.
            Protocol::Postgres | Protocol::Mysql | Protocol::Dns => (
                exchange.method.clone(),
                0,
                exchange.error_type.clone(),
            ),
        };
        let exchanges = Exchanges {
            protocol: exchange.protocol,
            role,
            method,
            status,
            route,
            server_address,
            server_port,
            tls: event.tls != 0,
            error_type,
        };
        let key = (owner, exchanges);
        let held = self.series.len() + self.lifecycle.aggregates();
        if self.series.contains_key(&key) || held < self.max_series {
            let serving = (server_port, tgid, event.gen);
            if role == Role::Server && !self.serving.contains(&serving) {
                if self.serving.len() < self.max_series {
                    self.serving.insert(serving);
                } else {
                    self.serving_refused += 1;
                }
            }
            return key;
        }
        self.series_folded += 1;
        let exchanges = Exchanges {
            protocol: exchange.protocol,
            role,
            method: "_OTHER".into(),
            status: exchange.status,
            route: routes::OVERFLOW_ROUTE.into(),
            server_address: String::new(),
            server_port: 0,
            tls: false,
            error_type: String::new(),
        };
        (Owner::overflow(None), exchanges)
    }

    /// Forgets connections of processes that exited (their fds closed without close(2)).
    fn sweep(&mut self) {
        let mut dead = Vec::new();
        for key in self.skel.maps.tls_conns.keys() {
            let mut k = types::psc_conn_key::default();
            if plain::copy_from_bytes(&mut k, &key).is_ok()
                && !std::path::Path::new(&format!("/proc/{}", k.tgid)).exists()
            {
                dead.push(key);
            }
        }
        for key in &dead {
            let _ = self.skel.maps.tls_conns.delete(key);
        }
        self.connections
            .retain(|(tgid, _), _| std::path::Path::new(&format!("/proc/{tgid}")).exists());
        self.dns_sockets
            .retain(|(tgid, _), _| std::path::Path::new(&format!("/proc/{tgid}")).exists());
        self.head_bytes = self.connections.values().map(|t| t.conn.buffered()).sum();
        self.head_holders = self
            .connections
            .iter()
            .filter_map(|(key, t)| t.holding_since.map(|since| (since, *key)))
            .collect();
        if let Some(spans) = &mut self.spans {
            let now = spans.kernel_now_ns();
            spans.expire_serving(now);
        }
        if !dead.is_empty() {
            debug!(
                connections = dead.len(),
                "forgot connections of exited processes"
            );
        }
    }

    /// Series of processes gone for the TTL fold into the aggregate of their
    /// executable (the rule every probe follows), and the processes are forgotten.
    fn expire(&mut self, now: Instant) {
        for pid in self.processes.pids() {
            self.processes.observe(pid, now, None);
        }
        // An expired process's series are those of its pid with its name and workload (a
        // new process under a reused pid labels its own). Without pid labels, series are
        // per executable already.
        let pid_label = self.pid_label;
        let expired: std::collections::HashSet<Owner> = self
            .processes
            .expired(now, self.exited_ttl)
            .into_iter()
            .filter_map(|process| {
                let info = self.processes.remove(process)?;
                pid_label.then(|| Owner::new(Some(process.0), info.name, info.workload))
            })
            .collect();
        // Servers are known while their processes are.
        let processes = &self.processes;
        self.serving
            .retain(|(_, tgid, gen)| processes.get((*tgid, *gen)).is_some());
        if expired.is_empty() {
            return;
        }
        let keys: Vec<SeriesKey> = self
            .series
            .keys()
            .filter(|(owner, _)| expired.contains(owner))
            .cloned()
            .collect();
        let mut folding: BTreeMap<Owner, Vec<(Exchanges, SeriesStats)>> = BTreeMap::new();
        for key in keys {
            if let Some(stats) = self.series.remove(&key) {
                folding.entry(key.0).or_default().push((key.1, stats));
            }
        }
        for (owner, rows) in folding {
            self.lifecycle
                .fold_exited(&owner, rows, |_, exchanges, _| exchanges);
        }
    }

    /// The series to export, live and exited, under the series budget.
    fn export(&mut self) -> BTreeMap<SeriesKey, SeriesStats> {
        let mut first_seen = FirstSeen::new();
        for ((owner, _), stats) in &self.series {
            if let Some(seen) = stats.first_seen {
                let earliest = first_seen.entry(owner.clone()).or_insert(seen);
                *earliest = (*earliest).min(seen);
            }
        }
        let duration = histogram_samples(self.durations.seconds.len());
        let db_duration = histogram_samples(self.db_durations.seconds.len());
        let dns_duration = histogram_samples(self.dns_durations.seconds.len());
        let body = histogram_samples(self.body_bounds.len());
        let cost = |key: &Exchanges, _: &SeriesStats| match key.protocol {
            Protocol::Http => duration + 2 * body,
            Protocol::Redis | Protocol::Postgres | Protocol::Mysql => db_duration,
            Protocol::Dns => dns_duration,
        };
        self.lifecycle
            .export(self.series.clone(), &first_seen, cost)
    }

    /// What the kernel framer did with the exchanges it saw.
    fn kernel_framer_family(&self) -> Family {
        Family::counters_by(
            "periscope_http_kernel_framer_exchanges",
            "What the kernel framer did: exchanges it counted in series slots (counted) or sent one by one to user space, their series having no slot yet (recorded); connections it handed to user space to frame (handed_off); responses cut short by a new request or close, which no framer counts (abandoned); DNS queries over UDP it left to user space to pair, its map of lookups in flight full or the question too long for it (dns_to_user_space).",
            "outcome",
            &[
                ("counted", self.counter(Counter::PSC_HTTP_KERNEL_FRAMED)),
                ("recorded", self.kernel_records),
                ("handed_off", self.counter(Counter::PSC_HTTP_HANDOFFS)),
                ("abandoned", self.counter(Counter::PSC_HTTP_ABANDONED)),
                ("dns_to_user_space", self.counter(Counter::PSC_HTTP_DNS_UNPAIRED)),
            ],
        )
    }

    /// The kernel framer's span decisions, while traces are on.
    fn span_decisions_family(&self) -> Family {
        Family::counters_by(
            "periscope_http_kernel_span_decisions",
            "Requests the kernel framer decided a span for while traces are on: sampled ones went to user space for their span, unsampled ones cost no record.",
            "decision",
            &[
                ("sampled", self.counter(Counter::PSC_HTTP_SPANS_SAMPLED)),
                ("unsampled", self.counter(Counter::PSC_HTTP_SPANS_UNSAMPLED)),
            ],
        )
    }

    /// Where user-space framing lost its place, so that requests may have gone uncounted.
    fn framing_lost_family(&self) -> Family {
        Family::counters_by(
            "periscope_http_framing_lost",
            "Times the user-space framer lost its place in a connection, so that the requests until its next message went uncounted: bytes of a read or write the probe did not capture (uncaptured), or ring buffer events lost (events_lost).",
            "cause",
            &[
                ("uncaptured", self.uncaptured_losses),
                ("events_lost", self.gap_resets),
            ],
        )
    }

    fn counter(&self, slot: Counter) -> u64 {
        util::percpu_array_u64(&self.skel.maps.counters, slot.0)
    }
}

/// Methods outside the standard set are reported as `_OTHER`, as the semantic
/// conventions say, so that a hostile method cannot add series.
fn normalize_method(method: &str) -> String {
    match method {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" | "CONNECT" | "TRACE" => {
            method.to_string()
        }
        _ => "_OTHER".into(),
    }
}

impl Probe for HttpProbe {
    fn name(&self) -> &'static str {
        "http"
    }

    fn attach_method(&self) -> String {
        format!(
            "tp_btf inet_sock_set_state, {} and sock_send_length, uprobes on {} libssl, ring buffer",
            self.ingress, self.tls_libraries
        )
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        self.ring.as_ref()?;
        self.drain();
        self.check_new_processes(now);
        if now >= self.next_dns_expiry {
            self.expire_lookups();
            self.next_dns_expiry = now + DNS_EXPIRY_INTERVAL;
        }
        if now >= self.next_sweep {
            self.sweep();
            self.next_sweep = now + Duration::from_secs(30);
        }
        Some(now + DRAIN_INTERVAL)
    }

    fn collect(&mut self, now: Instant, out: &mut Vec<Family>) {
        self.drain();
        self.expire_lookups();
        self.fold_slots();
        self.expire(now);
        self.release_slots();
        let rows = self.export();
        let mut families = HttpFamilies::new();
        let mut db_durations = db_duration_family();
        let mut dns_durations = dns_duration_family();
        for ((owner, exchanges), stats) in &rows {
            if exchanges.protocol == Protocol::Dns {
                let labels = dns_series_labels(self.processes.workloads(), owner, exchanges);
                let duration = self.dns_durations.classic_and_native(&stats.duration_ns);
                dns_durations.push_created(
                    labels,
                    Value::Histogram(duration),
                    self.lifecycle.created(owner),
                );
                continue;
            }
            if exchanges.protocol != Protocol::Http {
                let labels = db_series_labels(self.processes.workloads(), owner, exchanges);
                let duration = self.db_durations.classic_and_native(&stats.duration_ns);
                db_durations.push_created(
                    labels,
                    Value::Histogram(duration),
                    self.lifecycle.created(owner),
                );
                continue;
            }
            let labels = series_labels(self.processes.workloads(), owner, exchanges);
            let body =
                |hist: &KernelHistogram| hist.to_classic(&self.body_bounds, &self.body_bounds_exported);
            let values = ExchangeValues {
                duration: self.durations.classic_and_native(&stats.duration_ns),
                request_body: body(&stats.request_bytes),
                response_body: body(&stats.response_bytes),
            };
            families.push(exchanges.role, &labels, values, self.lifecycle.created(owner));
        }
        let mut libraries = Family::new(
            "periscope_tls_libraries",
            "OpenSSL libraries whose SSL_read/SSL_write are traced.",
            MetricKind::Gauge,
        );
        libraries.push(Vec::new(), Value::Gauge(self.tls_libraries as f64));
        out.extend(families.into_families(libraries));
        out.push(db_durations);
        out.push(dns_durations);
        let series = rows.iter().map(|((owner, key), stats)| (owner, key, &stats.duration_ns));
        let servers = self.serving.iter().filter_map(|&(port, tgid, gen)| {
            let info = self.processes.get((tgid, gen))?;
            Some((tgid, port, Owner::new(None, info.name.clone(), info.workload.clone())))
        });
        let local = endpoints::endpoints(servers, &mut self.namespaces, Instant::now());
        let graph = graph::Graph {
            callers: &self.callers,
            local: &local,
            workloads: self.processes.workloads(),
            bounds: &self.durations,
            max_edges: self.max_edges,
        };
        let (graph, folded) = graph.families(series);
        self.edges_folded = folded;
        out.extend(graph);
        out.push(self.kernel_framer_family());
        out.push(self.framing_lost_family());
        if self.spans.is_some() {
            out.push(self.span_decisions_family());
        }
        self.fill = vec![
            MapFill::of("tls_conns", &self.skel.maps.tls_conns),
            MapFill {
                map: "connections",
                entries: self.connections.len() as u64,
                capacity: self.max_connections as u64,
            },
            MapFill {
                map: "dns_sockets",
                entries: self.dns_sockets.len() as u64,
                capacity: self.max_connections as u64,
            },
            MapFill {
                map: "dns_pending",
                entries: self.dns_kernel_pending,
                capacity: u64::from(self.skel.maps.dns_pending.max_entries()),
            },
            MapFill::of("remote_callers", &self.skel.maps.remote_callers),
            MapFill::of("local_clients", &self.skel.maps.local_clients),
            MapFill {
                map: "local_servers",
                entries: self.serving.len() as u64,
                capacity: self.max_series as u64,
            },
            MapFill {
                map: "remote_caller_pairs",
                entries: self.callers.len() as u64,
                capacity: self.max_edges as u64,
            },
            MapFill {
                map: "kernel_series_keys",
                entries: self.slots.keys() as u64,
                capacity: u64::from(self.skel.maps.slots.max_entries()),
            },
            MapFill {
                map: "series",
                entries: (self.series.len() + self.lifecycle.aggregates()) as u64,
                capacity: self.max_series as u64,
            },
        ];
        self.fill.extend(self.lifecycle.fill());
    }

    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let progs = &self.skel.progs;
        [
            ("psc_http_state", &progs.psc_http_state),
            ("psc_http_recv", &progs.psc_http_recv),
            ("psc_http_copy", &progs.psc_http_copy),
            ("psc_http_send", &progs.psc_http_send),
            ("psc_http_exec", &progs.psc_http_exec),
            ("psc_ssl_read", &progs.psc_ssl_read),
            ("psc_ssl_write", &progs.psc_ssl_write),
            ("psc_ssl_read_ex", &progs.psc_ssl_read_ex),
            ("psc_ssl_write_ex", &progs.psc_ssl_write_ex),
            ("psc_ssl_ret", &progs.psc_ssl_ret),
            ("psc_ssl_set_fd", &progs.psc_ssl_set_fd),
        ]
        .into_iter()
        // Only those the kernel took have an fd.
        .filter(|(name, _)| self.loads(name))
        .map(|(name, prog)| (name.to_string(), prog.as_fd()))
        .collect()
    }

    fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    fn map_fill(&self) -> Vec<MapFill> {
        self.fill.clone()
    }

    fn folded(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("conns", self.counter(Counter::PSC_HTTP_CONNS_REFUSED)),
            ("connections", self.connections_refused),
            ("head_buffers", self.heads_abandoned),
            ("pending_requests", self.pending_dropped),
            ("prepared_statements", self.prepared_refused),
            ("series", self.series_folded),
            ("kernel_series", self.slots.refused),
            ("exited_executables", self.lifecycle.exited_refused()),
            ("series_budget", self.lifecycle.budget_refused()),
            ("routes", self.routes.folded()),
            ("server_addresses", self.addresses.folded()),
            ("dns_question_names", self.question_names.folded()),
            ("service_graph_edges", self.edges_folded),
            ("remote_callers", self.counter(Counter::PSC_HTTP_CALLERS_REFUSED)),
            (
                "local_clients",
                self.counter(Counter::PSC_HTTP_LOCAL_CLIENTS_REFUSED) + self.local_clients_refused,
            ),
            ("remote_caller_pairs", self.callers.folded()),
            ("local_servers", self.serving_refused),
            ("tls_unknown_socket", self.counter(Counter::PSC_HTTP_TLS_NO_FD)),
            ("pending_execs", self.execs_refused),
            (
                "span_threads",
                self.spans.as_ref().map_or(0, |s| s.threads_refused),
            ),
        ]
    }

    fn events_lost(&self) -> u64 {
        self.counter(Counter::PSC_HTTP_LOST_EVENTS)
    }

    fn take_spans(&mut self, out: &mut Vec<Span>) {
        if let Some(spans) = &mut self.spans {
            spans.take(out);
        }
    }

    fn spans_dropped(&self) -> u64 {
        self.spans.as_ref().map_or(0, |s| s.dropped)
    }

    fn expired_series(&self) -> u64 {
        self.lifecycle.expired_series()
    }
}

/// The request line bytes the kernel kept: method, space, target.
/// The exchange a kernel record holds, and the event naming its series' process: the one
/// that read (server) or wrote (client) the request. None for a line user space would
/// not take for a request.
fn framed_exchange(
    event: &types::psc_http_event,
    record: &types::psc_http_exchange,
) -> Option<(types::psc_http_event, Exchange)> {
    let mut owner = *event;
    owner.tgid = record.key.tgid;
    owner.gen = record.key.gen;
    if record.key.protocol == PROTO_POSTGRES {
        let statement = pg_statement(record);
        return Some((owner, statement.exchange(record.start_ns, record.end_ns, record.tid, None)));
    }
    if record.key.protocol == PROTO_MYSQL {
        let command = mysql_command(record);
        return Some((owner, command.exchange(record.start_ns, record.end_ns, record.tid, None)));
    }
    if record.key.protocol == PROTO_DNS {
        let line = framed_line(record);
        // The status of a DNS lookup's key is its response code.
        let rcode = u8::try_from(record.key.status).unwrap_or(u8::MAX);
        let lookup = dns::kernel_lookup(line, rcode, None, record.start_ns, record.end_ns, record.tid)?;
        return Some((owner, lookup));
    }
    let (protocol, method, path, error_type) = if record.key.protocol == PROTO_REDIS {
        let (command, error) = redis_line(record);
        (Protocol::Redis, command, String::new(), error)
    } else {
        let (method, path) = parser::parse_framed_line(framed_line(record))?;
        (Protocol::Http, method, path, String::new())
    };
    let exchange = Exchange {
        protocol,
        method,
        path,
        status: record.key.status,
        error_type,
        request_body_bytes: record.request_body,
        response_body_bytes: record.response_body,
        start_ns: record.start_ns,
        end_ns: record.end_ns,
        context: None,
        tid: record.tid,
    };
    Some((owner, exchange))
}

/// What the span maker holds a kernel-sampled request's context under.
fn started_key(record: &types::psc_http_exchange) -> spans::StartedKey {
    (record.key.tgid, record.tid, record.start_ns)
}

/// The command and error prefix of a Redis exchange the kernel framed: the command in
/// the line's first bytes, the prefix at PSC_RESP_ERROR_AT (each NUL-padded).
fn redis_line(record: &types::psc_http_exchange) -> (String, String) {
    let line = whole_line(record);
    let field = |from: usize| {
        let bytes = line.get(from..from + RESP_NAME_BYTES).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    (field(0), field(RESP_ERROR_AT))
}

/// The statement of a PostgreSQL exchange the kernel framed, from its line (pg.h).
fn pg_statement(record: &types::psc_http_exchange) -> pg::KernelStatement<'_> {
    let line = whole_line(record);
    let end = usize::from(record.line_len).clamp(SQL_TEXT_AT, line.len());
    // The text runs to its NUL; what follows it in the line is not the query's.
    let text = pg::until_nul(&line[SQL_TEXT_AT..end]);
    pg::KernelStatement {
        verb_word: &line[SQL_VERB_AT..SQL_TAG_AT],
        tag_word: &line[SQL_TAG_AT..SQL_CLASS_AT],
        class: &line[SQL_CLASS_AT..SQL_CLASS_AT + 2],
        empty: line[SQL_EMPTY_AT] != 0,
        text,
        failed: record.key.status != 0,
    }
}

/// The command of a MySQL exchange the kernel framed, from its line (mysql.h).
fn mysql_command(record: &types::psc_http_exchange) -> mysql::KernelCommand<'_> {
    let line = whole_line(record);
    let answer = match u32::from(line[MYSQL_COMMAND_AT]) {
        c if c == types::psc_mysql_command::PSC_MYSQL_PREPARE.0 => mysql::KernelAnswer::Prepared,
        c if c == types::psc_mysql_command::PSC_MYSQL_ONE.0 => mysql::KernelAnswer::One,
        _ => mysql::KernelAnswer::Results,
    };
    mysql::KernelCommand {
        text: pg::until_nul(&line[SQL_TEXT_AT..]),
        answer,
        error: (record.key.status != 0)
            .then(|| u16::from_le_bytes([line[SQL_CLASS_AT], line[SQL_CLASS_AT + 1]])),
    }
}

/// Where the kernel's walk of a MySQL answer stood when it handed the connection over.
fn mysql_reading(record: &types::psc_http_exchange) -> mysql::Reading {
    use types::psc_mysql_reading as kernel;
    let line = whole_line(record);
    let left = u64::from(u32::from_le_bytes([
        line[MYSQL_LEFT_AT],
        line[MYSQL_LEFT_AT + 1],
        line[MYSQL_LEFT_AT + 2],
        line[MYSQL_LEFT_AT + 3],
    ]));
    match u32::from(line[MYSQL_READING_AT]) {
        r if r == kernel::PSC_MYSQL_COLUMNS.0 => mysql::Reading::Columns(left),
        r if r == kernel::PSC_MYSQL_COLUMNS_EOF.0 => mysql::Reading::ColumnsEof,
        r if r == kernel::PSC_MYSQL_ROWS.0 => mysql::Reading::Rows,
        r if r == kernel::PSC_MYSQL_DEFINITIONS.0 => mysql::Reading::Definitions(left),
        _ => mysql::Reading::Start,
    }
}

/// What the kernel knew of a MySQL connection it handed over: the capabilities both ends
/// have, from its handshake, and a command's header read apart from its payload.
fn mysql_connection(record: &types::psc_http_exchange) -> mysql::KernelConnection {
    use types::psc_mysql_caps as caps;
    let line = whole_line(record);
    let bits = u32::from(line[MYSQL_CAPS_AT]);
    let held = &line[MYSQL_HEADER_AT..MYSQL_HEADER_AT + 4];
    mysql::KernelConnection {
        deprecate_eof: bits & caps::PSC_MYSQL_CAP_DEPRECATE_EOF.0 != 0,
        query_attributes: bits & caps::PSC_MYSQL_CAP_QUERY_ATTRIBUTES.0 != 0,
        held_header: (line[MYSQL_HELD_AT] == 4).then(|| [held[0], held[1], held[2], held[3]]),
    }
}

fn framed_line(record: &types::psc_http_exchange) -> &[u8] {
    let line = whole_line(record);
    &line[..usize::from(record.line_len).min(line.len())]
}

/// The record's line as bytes, all PSC_HTTP_LINE of them, whatever its length says.
fn whole_line(record: &types::psc_http_exchange) -> &[u8] {
    whole_line_of(&record.line)
}

fn whole_line_of(line: &[std::ffi::c_char]) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and alignment.
    unsafe { std::slice::from_raw_parts(line.as_ptr().cast::<u8>(), line.len()) }
}

/// One CPU's counts of a slot, as the kernel keeps them.
fn cpu_counts(stats: &types::psc_http_stats) -> slots::CpuCounts {
    slots::CpuCounts {
        duration_sum: stats.duration_sum,
        request_body_sum: stats.request_body_sum,
        response_body_sum: stats.response_body_sum,
    }
}

/// The caller from elsewhere of a server's exchange, by its series key: its address,
/// or `__overflow__` past the cap of callers; none for the others.
fn key_caller(role: Role, key: &types::psc_http_series_key) -> Option<String> {
    if role != Role::Server || key.family == 0 {
        return None;
    }
    if key.family == types::psc_caller_family::PSC_FAMILY_OVERFLOW.0 as u8 {
        return Some(OVERFLOW_NAME.to_string());
    }
    caller_address(key.family, &key.addr)
}

/// A caller's address as the graph names it: an IPv4-mapped one (a dual-stack server's
/// caller over IPv4) as IPv4, as the kernel told it apart.
fn caller_address(family: u8, addr: &[u8; 16]) -> Option<String> {
    let address = util::socket_address(family, addr);
    match address.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => Some(v6.to_ipv4_mapped().map_or(address, |v4| v4.to_string())),
        Err(_) => Some(address).filter(|address| !address.is_empty()),
    }
}

/// The caller from elsewhere of a server's exchange, by its connection's event.
fn event_caller(event: &types::psc_http_event, role: Role) -> Option<String> {
    let caller = u32::from(event.client.caller);
    if role != Role::Server || caller == types::psc_caller::PSC_CALLER_LOCAL.0 {
        return None;
    }
    if caller == types::psc_caller::PSC_CALLER_REMOTE.0 {
        return caller_address(event.client.family, &event.client.addr);
    }
    Some(OVERFLOW_NAME.to_string())
}

/// The text form of a server address the kernel recorded ("" when unknown).
fn peer_address(peer: &types::psc_peer) -> String {
    util::socket_address(peer.family, &peer.addr)
}

#[cfg(test)]
mod caller_tests {
    use super::*;

    #[test]
    fn callers_are_named_by_address_ipv4_mapped_ones_as_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[10, 0, 0, 7]);
        assert_eq!(caller_address(10, &mapped).as_deref(), Some("10.0.0.7"));
        let mut v6 = [0u8; 16];
        v6[..2].copy_from_slice(&[0xfd, 0x00]);
        v6[15] = 9;
        assert_eq!(caller_address(10, &v6).as_deref(), Some("fd00::9"));
        assert_eq!(caller_address(2, &mapped).as_deref(), Some("0.0.0.0"));
        assert_eq!(caller_address(0, &v6), None);
        let mut key = types::psc_http_series_key {
            family: types::psc_caller_family::PSC_FAMILY_OVERFLOW.0 as u8,
            ..Default::default()
        };
        assert_eq!(key_caller(Role::Server, &key).as_deref(), Some(OVERFLOW_NAME));
        assert_eq!(key_caller(Role::Client, &key), None);
        key.family = 0;
        assert_eq!(key_caller(Role::Server, &key), None);
    }
}
