//! Spans of HTTP exchanges: which trace each request belongs to (its `traceparent`,
//! or the request its thread is serving), whether it is sampled, and the span itself.

use std::collections::HashMap;

use super::conn::{NewRequest, Role};
use super::parser::TraceHeaders;
use crate::model::connections::AgentConnections;
use crate::model::span::{AttributeValue, IdGenerator, Span, SpanContext, SpanKind, SpanResource};
use crate::probes::kit::spans::{RootSampler, Sampler};

/// Threads remembered as serving a request, at most; beyond, a new thread's client
/// calls start their own traces, and `threads_refused` counts it.
const MAX_SERVING_THREADS: usize = 65536;

/// A thread's serving request older than this is forgotten: its exchange was lost (a
/// client gone before the response, lost events), and later calls of the thread must
/// not join that old trace.
const MAX_SERVING_NS: u64 = 60_000_000_000;

/// Finished spans held between two hand-overs to the exporters' queue, at most.
const MAX_HELD_SPANS: usize = 65536;

/// Sampled requests the kernel framer announced and whose exchanges have not ended, at
/// most; past it, a new one's span is dropped and counted with the others.
const MAX_STARTED: usize = 65536;

/// A started request older than this is forgotten: its end was lost (a connection closed
/// before the response, lost events). Long enough for long polls.
const MAX_STARTED_NS: u64 = 3_600_000_000_000;

/// A request the kernel framer sampled: its process, thread and start (kernel ns).
pub type StartedKey = (u32, u32, u64);

/// A request the kernel framer sampled, as its start record tells it.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub role: Role,
    pub tgid: u32,
    pub tid: u32,
    pub at: u64,
    /// Kept by the kernel's random draw for roots (no traceparent came): a root made
    /// of it is kept whatever the sampler would say of a new trace id.
    pub drawn: bool,
}

/// What the kernel framer decides alone, from the sampler (http.bpf.c, `span_sampled`):
/// roots kept at random under a threshold of 2^32 (or always), and what a traceparent
/// does. User space then decides as its sampler does, with the roots the kernel drew kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSampling {
    pub root_always: bool,
    pub root_threshold: u32,
    pub parent: ParentRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentRule {
    /// The traceparent's sampled flag decides.
    Flag,
    /// Sent to user space, whose sampler decides on the trace id.
    Ask,
    /// Never sampled.
    Never,
}

impl KernelSampling {
    pub fn of(sampler: Sampler) -> KernelSampling {
        let root = |ratio: f64| KernelSampling {
            root_always: ratio >= 1.0,
            // A draw of 32 random bits is under this for `ratio` of requests.
            root_threshold: (ratio.clamp(0.0, 1.0) * 4_294_967_296.0).min(f64::from(u32::MAX))
                as u32,
            parent: ParentRule::Flag,
        };
        match sampler {
            Sampler::AlwaysOn => KernelSampling {
                parent: ParentRule::Ask,
                ..root(1.0)
            },
            Sampler::AlwaysOff => KernelSampling {
                parent: ParentRule::Never,
                ..root(0.0)
            },
            Sampler::TraceIdRatio(ratio) => KernelSampling {
                parent: ParentRule::Ask,
                ..root(ratio)
            },
            Sampler::ParentBased(RootSampler::AlwaysOn) => root(1.0),
            Sampler::ParentBased(RootSampler::AlwaysOff) => root(0.0),
            Sampler::ParentBased(RootSampler::TraceIdRatio(ratio)) => root(ratio),
        }
    }
}

pub struct SpanMaker {
    sampler: Sampler,
    ids: IdGenerator,
    /// The agent's own exporters' connections: a server's answer to one makes no span.
    agent_connections: AgentConnections,
    /// The request each thread is serving, and when it started (kernel ns): client
    /// requests the thread makes are its children.
    serving: HashMap<u32, (SpanContext, u64)>,
    pub threads_refused: u64,
    /// Contexts of requests the kernel framer sampled, until their exchanges end.
    started: HashMap<StartedKey, SpanContext>,
    max_started: usize,
    finished: Vec<Span>,
    /// Spans dropped because the exporters did not take them in time.
    pub dropped: u64,
    /// Wall-clock time minus the kernel's monotonic clock, in ns.
    clock_offset_ns: i128,
}

/// What a finished exchange's span is made of, besides its context.
pub struct Finished<'a> {
    pub role: Role,
    pub tid: u32,
    pub context: SpanContext,
    /// A database operation (a client's); HTTP's fields below are then unused.
    pub db: Option<DbCall>,
    /// A DNS lookup; HTTP's fields below are then unused.
    pub dns: Option<DnsCall>,
    pub method: &'a str,
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub tls: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    pub server_address: String,
    pub server_port: u16,
    pub client_address: String,
    /// The client's port, for server exchanges.
    pub client_port: u16,
    pub resource: SpanResource,
}

/// What a database client span says of its operation.
pub struct DbCall {
    /// `db.system.name`: `redis`.
    pub system: &'static str,
    /// The operation, from the closed set of the system's names (`_OTHER` outside it).
    pub operation: &'static str,
    /// `db.query.summary`: the operation and the first table it names (`SELECT users`);
    /// empty for the operation alone.
    pub summary: String,
    /// The error's type when it failed; empty otherwise.
    pub error_type: String,
}

/// What a DNS lookup's span says of it.
pub struct DnsCall {
    /// The question's type (`A`, `AAAA`) and name.
    pub question_type: &'static str,
    pub question_name: String,
    /// The response code or `timeout` when it failed; empty otherwise.
    pub error_type: String,
}

impl SpanMaker {
    pub fn new(sampler: Sampler, agent_connections: AgentConnections) -> SpanMaker {
        let mut maker = SpanMaker {
            sampler,
            ids: IdGenerator::new(),
            agent_connections,
            serving: HashMap::new(),
            threads_refused: 0,
            started: HashMap::new(),
            max_started: MAX_STARTED,
            finished: Vec::new(),
            dropped: 0,
            clock_offset_ns: 0,
        };
        maker.sync_clock();
        maker
    }

    /// Measures the offset between the kernel's clock (CLOCK_MONOTONIC, what
    /// `bpf_ktime_get_ns` reads) and wall time; called once per drain, so a wall-clock
    /// step shows up within one drain.
    pub fn sync_clock(&mut self) {
        let mut mono = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) } != 0 {
            return;
        }
        let Ok(wall) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return;
        };
        let mono_ns = i128::from(mono.tv_sec) * 1_000_000_000 + i128::from(mono.tv_nsec);
        self.clock_offset_ns = wall.as_nanos() as i128 - mono_ns;
    }

    /// The kernel clock now, from the last offset measured.
    pub fn kernel_now_ns(&self) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        (wall - self.clock_offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }

    fn wall_ns(&self, kernel_ns: u64) -> u64 {
        (i128::from(kernel_ns) + self.clock_offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A new trace; `kept` when the kernel already drew it for sampling.
    fn root(&mut self, kept: bool) -> SpanContext {
        let trace_id = self.ids.trace_id();
        SpanContext {
            trace_id,
            span_id: self.ids.span_id(),
            parent_span_id: None,
            sampled: kept || self.sampler.sample(&trace_id, None),
            trace_state: String::new(),
        }
    }

    /// Decides the context of a request just framed.
    pub fn decide(&mut self, role: Role, request: NewRequest<'_>) {
        self.decide_with(role, request, false);
    }

    /// Decides the context of a request the kernel framer sampled (`trace` from its head),
    /// and holds it until `take_started` with the same process, thread and start. Only
    /// a sampled context is held.
    pub fn start_sampled(&mut self, start: Start, trace: Option<&TraceHeaders>) {
        let mut context = None;
        let request = NewRequest {
            tid: start.tid,
            at: start.at,
            trace,
            context: &mut context,
        };
        self.decide_with(start.role, request, start.drawn);
        let Some(context) = context.filter(|c| c.sampled) else {
            return;
        };
        let key = (start.tgid, start.tid, start.at);
        if self.started.len() >= self.max_started && !self.started.contains_key(&key) {
            self.dropped += 1;
            return;
        }
        self.started.insert(key, context);
    }

    /// The context of a request the kernel framer sampled, once its exchange ended.
    pub fn take_started(&mut self, key: StartedKey) -> Option<SpanContext> {
        self.started.remove(&key)
    }

    fn decide_with(&mut self, role: Role, request: NewRequest<'_>, kernel_drawn: bool) {
        let context = match role {
            Role::Server => {
                let context = match request.trace {
                    Some(trace) => SpanContext {
                        trace_id: trace.parent.trace_id,
                        span_id: self.ids.span_id(),
                        parent_span_id: Some(trace.parent.parent_id),
                        sampled: self
                            .sampler
                            .sample(&trace.parent.trace_id, Some(trace.parent.sampled)),
                        trace_state: trace.state.clone(),
                    },
                    None => self.root(kernel_drawn),
                };
                if self.serving.len() < MAX_SERVING_THREADS
                    || self.serving.contains_key(&request.tid)
                {
                    self.serving
                        .insert(request.tid, (context.clone(), request.at));
                } else {
                    self.threads_refused += 1;
                }
                context
            }
            Role::Client => {
                let serving = self
                    .serving
                    .get(&request.tid)
                    .filter(|(_, at)| request.at.saturating_sub(*at) < MAX_SERVING_NS)
                    .map(|(context, _)| context.clone());
                match request.trace {
                    // The application propagated a context itself: its span id is the
                    // one the called server sees as parent, so this span takes it.
                    Some(trace) => SpanContext {
                        trace_id: trace.parent.trace_id,
                        span_id: trace.parent.parent_id,
                        parent_span_id: serving
                            .as_ref()
                            .filter(|s| s.trace_id == trace.parent.trace_id)
                            .map(|s| s.span_id),
                        sampled: self
                            .sampler
                            .sample(&trace.parent.trace_id, Some(trace.parent.sampled)),
                        trace_state: trace.state.clone(),
                    },
                    None => match serving {
                        Some(parent) => SpanContext {
                            trace_id: parent.trace_id,
                            span_id: self.ids.span_id(),
                            parent_span_id: Some(parent.span_id),
                            sampled: parent.sampled,
                            trace_state: parent.trace_state.clone(),
                        },
                        None => self.root(kernel_drawn),
                    },
                }
            }
        };
        *request.context = Some(context);
    }

    /// Makes the span of a finished exchange (if sampled); a server exchange ends its
    /// thread's serving.
    pub fn finish(&mut self, done: Finished<'_>) {
        if done.role == Role::Server
            && self
                .serving
                .get(&done.tid)
                .is_some_and(|(s, _)| s.span_id == done.context.span_id)
        {
            self.serving.remove(&done.tid);
        }
        if !done.context.sampled {
            return;
        }
        if done.role == Role::Server
            && self
                .agent_connections
                .contains(done.client_port, done.server_port)
        {
            return; // the agent's own export, answered by a server on this host
        }
        if self.finished.len() >= MAX_HELD_SPANS {
            self.dropped += 1;
            return;
        }
        if let Some(db) = &done.db {
            let span = self.db_span(db, &done);
            self.finished.push(span);
            return;
        }
        if let Some(dns) = &done.dns {
            let span = self.dns_span(dns, &done);
            self.finished.push(span);
            return;
        }
        let scheme = if done.tls { "https" } else { "http" };
        let mut attributes = vec![
            (
                "http.request.method",
                AttributeValue::Str(done.method.to_string()),
            ),
            (
                "http.response.status_code",
                AttributeValue::Int(i64::from(done.status)),
            ),
            (
                "url.path",
                AttributeValue::Str(super::routes::redact_secrets(done.path)),
            ),
            ("url.scheme", AttributeValue::Str(scheme.into())),
        ];
        let kind = match done.role {
            Role::Server => {
                attributes.push(("http.route", AttributeValue::Str(done.route.to_string())));
                attributes.push((
                    "server.port",
                    AttributeValue::Int(i64::from(done.server_port)),
                ));
                if !done.client_address.is_empty() {
                    attributes.push(("client.address", AttributeValue::Str(done.client_address)));
                }
                SpanKind::Server
            }
            Role::Client => {
                if !done.server_address.is_empty() {
                    attributes.push(("server.address", AttributeValue::Str(done.server_address)));
                }
                attributes.push((
                    "server.port",
                    AttributeValue::Int(i64::from(done.server_port)),
                ));
                SpanKind::Client
            }
        };
        // The HTTP conventions: "{method} {route}" for servers with a route, the method
        // alone otherwise, and "HTTP" for methods outside the known set.
        let method = if done.method == "_OTHER" {
            "HTTP"
        } else {
            done.method
        };
        let name = if kind == SpanKind::Server && !done.route.is_empty() {
            format!("{method} {}", done.route)
        } else {
            method.to_string()
        };
        let error = match kind {
            SpanKind::Server => done.status >= 500,
            SpanKind::Client => done.status >= 400,
        };
        self.finished.push(Span {
            trace_id: done.context.trace_id,
            span_id: done.context.span_id,
            parent_span_id: done.context.parent_span_id,
            trace_state: done.context.trace_state,
            kind,
            name,
            start_unix_ns: self.wall_ns(done.start_ns),
            end_unix_ns: self.wall_ns(done.end_ns),
            error,
            attributes,
            resource: done.resource,
        });
    }

    /// The client span of a database operation: named by its query summary (for Redis,
    /// the command), as the database semantic conventions say.
    fn db_span(&self, db: &DbCall, done: &Finished<'_>) -> Span {
        let summary = if !db.summary.is_empty() {
            db.summary.as_str()
        } else if db.operation == super::redis::OTHER {
            db.system
        } else {
            db.operation
        };
        let mut attributes = vec![
            ("db.system.name", AttributeValue::Str(db.system.into())),
            ("db.operation.name", AttributeValue::Str(db.operation.into())),
            ("db.query.summary", AttributeValue::Str(summary.into())),
        ];
        if !done.server_address.is_empty() {
            attributes.push((
                "server.address",
                AttributeValue::Str(done.server_address.clone()),
            ));
        }
        attributes.push((
            "server.port",
            AttributeValue::Int(i64::from(done.server_port)),
        ));
        self.call_span(done, summary.to_string(), &db.error_type, attributes)
    }

    /// A client span of a call `done` made, failed when `error_type` is set, which it
    /// then carries as `error.type`.
    fn call_span(
        &self,
        done: &Finished<'_>,
        name: String,
        error_type: &str,
        mut attributes: Vec<(&'static str, AttributeValue)>,
    ) -> Span {
        if !error_type.is_empty() {
            attributes.push(("error.type", AttributeValue::Str(error_type.to_string())));
        }
        Span {
            trace_id: done.context.trace_id,
            span_id: done.context.span_id,
            parent_span_id: done.context.parent_span_id,
            trace_state: done.context.trace_state.clone(),
            kind: SpanKind::Client,
            name,
            start_unix_ns: self.wall_ns(done.start_ns),
            end_unix_ns: self.wall_ns(done.end_ns),
            error: !error_type.is_empty(),
            attributes,
            resource: done.resource.clone(),
        }
    }

    /// A client span named `DNS <type>`, with the question and the server asked.
    fn dns_span(&self, dns: &DnsCall, done: &Finished<'_>) -> Span {
        let attributes = vec![
            ("dns.question.name", AttributeValue::Str(dns.question_name.clone())),
            ("dns.question.type", AttributeValue::Str(dns.question_type.into())),
            ("server.address", AttributeValue::Str(done.server_address.clone())),
            ("server.port", AttributeValue::Int(i64::from(done.server_port))),
        ];
        let name = format!("DNS {}", dns.question_type);
        self.call_span(done, name, &dns.error_type, attributes)
    }

    pub fn take(&mut self, out: &mut Vec<Span>) {
        out.append(&mut self.finished);
    }

    /// Forgets serving requests older than `MAX_SERVING_NS` at kernel time `now_ns`.
    pub fn expire_serving(&mut self, now_ns: u64) {
        self.serving
            .retain(|_, (_, at)| now_ns.saturating_sub(*at) < MAX_SERVING_NS);
        self.started
            .retain(|(_, _, at), _| now_ns.saturating_sub(*at) < MAX_STARTED_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_exchange(context: SpanContext, client_port: u16) -> Finished<'static> {
        Finished {
            role: Role::Server,
            tid: 1,
            context,
            db: None,
            dns: None,
            method: "POST",
            route: "/v1/traces",
            path: "/v1/traces",
            status: 200,
            tls: false,
            start_ns: 1,
            end_ns: 2,
            server_address: String::new(),
            server_port: 4318,
            client_address: "127.0.0.1".into(),
            client_port,
            resource: SpanResource {
                pid: 1,
                executable_name: "collector".into(),
                service_name: "collector".into(),
                workload: Vec::new(),
            },
        }
    }

    #[test]
    fn sampled_starts_past_the_limit_are_dropped_and_counted() {
        let mut maker = SpanMaker::new(
            Sampler::ParentBased(RootSampler::AlwaysOff),
            AgentConnections::default(),
        );
        maker.max_started = 3;
        let start = |tid, at| Start {
            role: Role::Server,
            tgid: 7,
            tid,
            at,
            drawn: true,
        };
        for tid in 0..5 {
            maker.start_sampled(start(tid, 100), None);
        }
        assert_eq!(maker.started.len(), 3);
        assert_eq!(maker.dropped, 2);
        // The kernel drew these roots: kept whatever the sampler says of new roots.
        let context = maker.take_started((7, 0, 100)).expect("held");
        assert!(context.sampled);
        assert!(maker.take_started((7, 0, 100)).is_none());
        // A freed place takes the next one; the ends of lost requests expire.
        maker.start_sampled(start(9, 200), None);
        // A traceparent the kernel took but user space finds invalid: the sampler
        // decides the root, which always_off drops.
        maker.start_sampled(
            Start {
                drawn: false,
                ..start(10, 200)
            },
            None,
        );
        assert_eq!(maker.started.len(), 3);
        maker.expire_serving(199 + MAX_STARTED_NS);
        assert_eq!(maker.started.len(), 1);
    }

    #[test]
    fn the_kernel_draws_roots_at_the_samplers_ratio_and_follows_its_parent_rule() {
        let of = KernelSampling::of;
        let half = of(Sampler::ParentBased(RootSampler::TraceIdRatio(0.5)));
        assert_eq!((half.root_always, half.root_threshold, half.parent), (false, 1 << 31, ParentRule::Flag));
        let all = of(Sampler::AlwaysOn);
        assert!(all.root_always);
        assert_eq!(all.parent, ParentRule::Ask);
        let none = of(Sampler::AlwaysOff);
        assert_eq!((none.root_always, none.root_threshold, none.parent), (false, 0, ParentRule::Never));
        // A ratio rounding up to 2^32 stays under it: only 1.0 is "always".
        let nearly = of(Sampler::TraceIdRatio(0.999_999_999_99));
        assert_eq!((nearly.root_always, nearly.root_threshold), (false, u32::MAX));
        assert_eq!(of(Sampler::TraceIdRatio(0.1)).parent, ParentRule::Ask);
    }

    #[test]
    fn a_redis_call_made_while_serving_is_a_client_span_under_the_served_request() {
        let mut maker = SpanMaker::new(Sampler::AlwaysOn, AgentConnections::default());
        let served = Start {
            role: Role::Server,
            tgid: 7,
            tid: 8,
            at: 100,
            drawn: true,
        };
        maker.start_sampled(served, None);
        let parent = maker.started[&(7, 8, 100)].clone();
        let call = Start {
            role: Role::Client,
            at: 150,
            ..served
        };
        maker.start_sampled(call, None);
        let context = maker.take_started((7, 8, 150)).expect("the call's context");
        let mut done = server_exchange(context, 40000);
        done.role = Role::Client;
        done.server_address = "127.0.0.1".into();
        done.server_port = 6379;
        done.db = Some(DbCall {
            system: "redis",
            operation: "LPUSH",
            summary: String::new(),
            error_type: "WRONGTYPE".into(),
        });
        maker.finish(done);
        let mut spans = Vec::new();
        maker.take(&mut spans);
        let span = &spans[0];
        assert_eq!((span.trace_id, span.parent_span_id), (parent.trace_id, Some(parent.span_id)));
        assert_eq!((span.kind, span.name.as_str(), span.error), (SpanKind::Client, "LPUSH", true));
        let attribute = |key: &str| span.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        assert_eq!(attribute("db.system.name"), Some(AttributeValue::Str("redis".into())));
        assert_eq!(attribute("db.query.summary"), Some(AttributeValue::Str("LPUSH".into())));
        assert_eq!(attribute("error.type"), Some(AttributeValue::Str("WRONGTYPE".into())));
        assert_eq!(attribute("server.port"), Some(AttributeValue::Int(6379)));
        assert_eq!(attribute("http.request.method"), None);
    }

    #[test]
    fn a_server_answering_the_agents_own_connection_makes_no_span() {
        let connections = AgentConnections::default();
        let mut maker = SpanMaker::new(Sampler::AlwaysOn, connections.clone());
        // The exporter's handle is the probe's: what it registers, the probe sees.
        connections.register(40000, 4318);
        let context = maker.root(false);
        maker.finish(server_exchange(context.clone(), 40000));
        let mut spans = Vec::new();
        maker.take(&mut spans);
        assert!(spans.is_empty(), "{spans:?}");
        // Another client of the same server is traced.
        maker.finish(server_exchange(context, 40001));
        maker.take(&mut spans);
        assert_eq!(spans.len(), 1);
        // A maker with a table of its own knows nothing of this agent's connections.
        let mut other = SpanMaker::new(Sampler::AlwaysOn, AgentConnections::default());
        let context = other.root(false);
        other.finish(server_exchange(context, 40000));
        other.take(&mut spans);
        assert_eq!(spans.len(), 2);
    }
}
