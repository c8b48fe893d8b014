//! Pairs the requests and responses of one connection into exchanges.

use std::collections::VecDeque;

use super::parser::{Expect, Frame, Framer, Kind, TraceHeaders};
use super::mysql::MysqlConnection;
use super::pg::PgConnection;
use super::resp::RespConnection;
use crate::model::span::SpanContext;

/// Which side of the connection the traced process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// It accepted the connection: it reads requests and writes responses.
    Server,
    /// It connected: it writes requests and reads responses.
    Client,
}

impl Role {
    /// Whether bytes moving in `direction` are requests (commands, statements) here:
    /// read by a server, written by a client.
    pub fn requests_flow(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the process read.
    Ingress,
    /// Bytes the process wrote.
    Egress,
}

/// The protocol a connection speaks, as its first bytes showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Redis,
    Postgres,
    Mysql,
    /// Lookups, paired by the DNS tracker rather than framed as a connection.
    Dns,
}

impl Protocol {
    /// The semantic conventions' name: `db.system.name` of a database protocol.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgresql",
            Protocol::Mysql => "mysql",
            Protocol::Dns => "dns",
        }
    }
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub protocol: Protocol,
    /// HTTP: the method. Redis: the command as sent, upper-cased. PostgreSQL: the verb.
    pub method: String,
    /// HTTP: the target's path. PostgreSQL: the query summary (verb and first table).
    pub path: String,
    /// HTTP: the status code. Databases: 1 when the operation failed.
    pub status: u16,
    /// Redis: an error reply's prefix (`ERR`, `WRONGTYPE`). PostgreSQL: the SQLSTATE's
    /// class (`42`). Empty otherwise.
    pub error_type: String,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// Server: first byte of the request read; client: request written. Kernel ns.
    pub start_ns: u64,
    /// Server: last byte of the response written; client: read. Kernel ns.
    pub end_ns: u64,
    /// Its span's context, when spans are made.
    pub context: Option<SpanContext>,
    /// The thread that read (server) or wrote (client) the request.
    pub tid: u32,
}

impl Exchange {
    /// How long it took, ns.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// A request framed but not yet answered, as the span maker sees it.
pub struct NewRequest<'a> {
    /// The thread that read (server) or wrote (client) its first bytes.
    pub tid: u32,
    /// When its first byte was read or written, kernel ns.
    pub at: u64,
    pub trace: Option<&'a TraceHeaders>,
    pub context: &'a mut Option<SpanContext>,
}

#[derive(Debug, Clone)]
struct Pending {
    method: String,
    path: String,
    start: u64,
    request_body: Option<u64>,
    tid: u32,
    trace: Option<TraceHeaders>,
    context: Option<SpanContext>,
    /// `context` was decided (it may stay `None`: not traced).
    decided: bool,
}

#[derive(Debug, Clone)]
pub struct Connection {
    role: Role,
    requests: Framer,
    responses: Framer,
    pending: VecDeque<Pending>,
    /// The request whose response is being framed, with its status.
    answering: Option<(Pending, u16)>,
    /// The response being framed is interim (1xx): its end is not the exchange's.
    interim: bool,
    /// The thread of the read or write being fed.
    tid: u32,
    /// Requests dropped unanswered past MAX_PENDING, since last taken.
    pending_dropped: u64,
}

/// Requests waiting for a response on one connection, at most; older ones are dropped
/// and counted. A client may pipeline a thousand requests in one write.
const MAX_PENDING: usize = 2048;

impl Connection {
    pub fn new(role: Role) -> Connection {
        Connection {
            role,
            requests: Framer::new(Kind::Request),
            responses: Framer::new(Kind::Response),
            pending: VecDeque::new(),
            answering: None,
            interim: false,
            tid: 0,
            pending_dropped: 0,
        }
    }

    /// Requests framed since the last call, for their span contexts to be decided.
    pub fn new_requests(&mut self) -> impl Iterator<Item = NewRequest<'_>> {
        self.pending.iter_mut().filter(|p| !p.decided).map(|p| {
            p.decided = true;
            NewRequest {
                tid: p.tid,
                at: p.start,
                trace: p.trace.as_ref(),
                context: &mut p.context,
            }
        })
    }

    /// Requests lost since the last call: dropped unanswered past the pending limit, or
    /// in bytes the probe did not capture (then counted once per loss, not per request).
    pub fn take_losses(&mut self) -> (u64, u64) {
        let uncaptured =
            self.requests.take_uncaptured_losses() + self.responses.take_uncaptured_losses();
        (std::mem::take(&mut self.pending_dropped), uncaptured)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes held for heads and lines not yet complete, in both directions.
    pub fn buffered(&self) -> usize {
        self.requests.buffered() + self.responses.buffered()
    }

    /// Drops what `buffered` counts; the connection resynchronises on its next message.
    pub fn abandon_partial(&mut self) {
        self.requests.abandon_partial();
        self.responses.abandon_partial();
    }

    /// Takes over from the kernel framer: `method` `path`, started at `start` by thread
    /// `tid`, was framed whole with a body of `request_body` bytes and awaits its response.
    /// The kernel decided its span: `context` when sampled.
    pub fn resume(
        &mut self,
        method: String,
        path: String,
        start: u64,
        request_body: u64,
        tid: u32,
        context: Option<SpanContext>,
    ) {
        self.responses.head_requests.push_back(Expect::of(&method));
        self.pending.push_back(Pending {
            method,
            path,
            start,
            request_body: Some(request_body),
            tid,
            trace: None,
            context,
            decided: true,
        });
    }

    /// Feeds one read or write; returns the exchanges it completed.
    pub fn feed(&mut self, direction: Direction, data: &[u8], len: u64, at: u64) -> Vec<Exchange> {
        self.feed_by(direction, data, len, at, 0)
    }

    /// `feed`, for a read or write made by thread `tid`.
    pub fn feed_by(
        &mut self,
        direction: Direction,
        data: &[u8],
        len: u64,
        at: u64,
        tid: u32,
    ) -> Vec<Exchange> {
        self.tid = tid;
        if self.role.requests_flow(direction) {
            let ended = self.responses.end_turn();
            let exchange = ended.and_then(|frame| self.on_response_frame(frame));
            for frame in self.requests.feed(data, len, at) {
                self.on_request_frame(frame);
            }
            exchange.into_iter().collect()
        } else {
            if let Some(frame) = self.requests.end_turn() {
                self.on_request_frame(frame);
            }
            let frames = self.responses.feed(data, len, at);
            frames
                .into_iter()
                .filter_map(|frame| self.on_response_frame(frame))
                .collect()
        }
    }

    /// The connection closed; a response that ran until close completes here.
    pub fn close(&mut self, at: u64) -> Vec<Exchange> {
        let end = self.responses.close(at);
        end.and_then(|frame| self.on_response_frame(frame))
            .into_iter()
            .collect()
    }

    fn on_request_frame(&mut self, frame: Frame) {
        match frame {
            Frame::RequestHead { head, at } => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.responses.head_requests.pop_front();
                    self.pending_dropped += 1;
                }
                self.responses
                    .head_requests
                    .push_back(Expect::of(&head.method));
                self.pending.push_back(Pending {
                    method: head.method,
                    path: head.path,
                    start: at,
                    request_body: None,
                    tid: self.tid,
                    trace: head.trace,
                    context: None,
                    decided: false,
                });
            }
            Frame::End { body_bytes, .. } => {
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .rev()
                    .find(|p| p.request_body.is_none())
                {
                    p.request_body = Some(body_bytes);
                }
            }
            Frame::ResponseHead { .. } => {}
        }
    }

    fn on_response_frame(&mut self, frame: Frame) -> Option<Exchange> {
        match frame {
            Frame::ResponseHead { head, .. } => {
                self.interim = (100..200).contains(&head.status) && head.status != 101;
                if !self.interim {
                    // A response nobody asked for (its request predates tracing) is
                    // not an exchange.
                    self.answering = self.pending.pop_front().map(|p| (p, head.status));
                }
                None
            }
            Frame::End { body_bytes, at } => {
                if std::mem::take(&mut self.interim) {
                    return None;
                }
                let (request, status) = self.answering.take()?;
                Some(Exchange {
                    protocol: Protocol::Http,
                    method: request.method,
                    path: request.path,
                    status,
                    error_type: String::new(),
                    request_body_bytes: request.request_body.unwrap_or(0),
                    response_body_bytes: body_bytes,
                    start_ns: request.start,
                    end_ns: at,
                    context: request.context,
                    tid: request.tid,
                })
            }
            Frame::RequestHead { .. } => None,
        }
    }
}

/// A connection user space frames, by the protocol it speaks.
#[derive(Debug, Clone)]
pub enum Framing {
    Http(Connection),
    Redis(RespConnection),
    Postgres(PgConnection),
    Mysql(MysqlConnection),
}

impl Framing {
    pub fn new(protocol: Protocol, role: Role) -> Framing {
        match protocol {
            // DNS never comes here (the probe's DNS tracker pairs it): HTTP stands in.
            Protocol::Http | Protocol::Dns => Framing::Http(Connection::new(role)),
            Protocol::Redis => Framing::Redis(RespConnection::new(role)),
            Protocol::Postgres => Framing::Postgres(PgConnection::new(role)),
            Protocol::Mysql => Framing::Mysql(MysqlConnection::new(role)),
        }
    }

    /// The framer of this connection after events of it were lost: PostgreSQL past its
    /// startup and MySQL past its handshake go on at the next message that starts an
    /// event, rather than wait for a startup or greeting that never comes again. Others
    /// start afresh.
    pub fn after_gap(&self, role: Role) -> Framing {
        match self {
            Framing::Postgres(c) if c.role() == role && c.past_startup() => {
                Framing::Postgres(PgConnection::resume(role, None, 0).0)
            }
            Framing::Mysql(c) if c.role() == role => match c.after_gap() {
                Some(conn) => Framing::Mysql(conn),
                None => Framing::new(Protocol::Mysql, role),
            },
            _ => Framing::new(self.protocol(), role),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Framing::Http(_) => Protocol::Http,
            Framing::Redis(_) => Protocol::Redis,
            Framing::Postgres(_) => Protocol::Postgres,
            Framing::Mysql(_) => Protocol::Mysql,
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Framing::Http(c) => c.role(),
            Framing::Redis(c) => c.role(),
            Framing::Postgres(c) => c.role(),
            Framing::Mysql(c) => c.role(),
        }
    }

    /// Bytes held of heads, lines and names not yet complete.
    pub fn buffered(&self) -> usize {
        match self {
            Framing::Http(c) => c.buffered(),
            Framing::Redis(c) => c.buffered(),
            Framing::Postgres(c) => c.buffered(),
            Framing::Mysql(c) => c.buffered(),
        }
    }

    /// Drops what `buffered` counts; framing resumes at the next message.
    pub fn abandon_partial(&mut self) {
        match self {
            Framing::Http(c) => c.abandon_partial(),
            Framing::Redis(c) => c.abandon_partial(),
            Framing::Postgres(c) => c.abandon_partial(),
            Framing::Mysql(c) => c.abandon_partial(),
        }
    }

    /// Requests dropped unanswered past the pending limit, and framing lost to bytes
    /// not captured, since the last call.
    pub fn take_losses(&mut self) -> (u64, u64) {
        match self {
            Framing::Http(c) => c.take_losses(),
            Framing::Redis(c) => c.take_losses(),
            Framing::Postgres(c) => c.take_losses(),
            Framing::Mysql(c) => c.take_losses(),
        }
    }

    /// Feeds one read or write of thread `tid`; returns the exchanges it completed.
    pub fn feed_by(
        &mut self,
        direction: Direction,
        data: &[u8],
        len: u64,
        at: u64,
        tid: u32,
    ) -> Vec<Exchange> {
        match self {
            Framing::Http(c) => c.feed_by(direction, data, len, at, tid),
            Framing::Redis(c) => c.feed_by(direction, data, len, at, tid),
            Framing::Postgres(c) => c.feed_by(direction, data, len, at, tid),
            Framing::Mysql(c) => c.feed_by(direction, data, len, at, tid),
        }
    }

    /// Names a framer refused past its per-connection cap since the last call
    /// (PostgreSQL's prepared statements and portals, MySQL's prepared statements).
    pub fn take_names_refused(&mut self) -> u64 {
        match self {
            Framing::Postgres(c) => c.take_names_refused(),
            Framing::Mysql(c) => c.take_names_refused(),
            Framing::Http(_) | Framing::Redis(_) => 0,
        }
    }

    /// Lets `decide` choose the span context of each request framed since the last call.
    pub fn decide_spans(&mut self, mut decide: impl FnMut(NewRequest<'_>)) {
        match self {
            Framing::Http(c) => c.new_requests().for_each(&mut decide),
            Framing::Redis(c) => c.new_requests().for_each(&mut decide),
            Framing::Postgres(c) => c.new_requests().for_each(&mut decide),
            Framing::Mysql(c) => c.new_requests().for_each(&mut decide),
        }
    }

    /// The connection closed: an HTTP response that ran until close completes here.
    pub fn close(&mut self, at: u64) -> Vec<Exchange> {
        match self {
            Framing::Http(c) => c.close(at),
            Framing::Redis(_) | Framing::Postgres(_) | Framing::Mysql(_) => Vec::new(),
        }
    }
}
