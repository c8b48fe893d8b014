//! PostgreSQL framing in user space (the frontend/backend protocol 3.0): every statement
//! a client runs, through the simple query protocol (each statement of a multi-statement
//! query counted) or the extended one (Parse, Bind, Execute, Sync; named prepared
//! statements too), paired with its CommandComplete or ErrorResponse.
//!
//! Every message but the first of each side is a type byte and a length; only the first
//! bytes of each are looked at, the rest skipped by length, so a large row or COPY costs
//! nothing to frame and bytes past the capture are skipped unseen.

use std::collections::{HashMap, VecDeque};

use super::conn::{Direction, Exchange, NewRequest, Protocol, Role};
use super::sql::{split_statements, verb, Described, Dialect, OTHER};
use super::stream::{Header, Messages};
use crate::model::span::SpanContext;

/// Statements waiting for their completion on one connection, at most.
const MAX_PENDING: usize = 4096;
/// Prepared statements and portals remembered per connection, at most; beyond, the
/// oldest unnamed ones are not kept and their executions are `_OTHER`.
const MAX_PREPARED: usize = 256;
/// A message longer than this is not PostgreSQL (the server refuses 1 GiB and more).
const MAX_MESSAGE: u32 = 1 << 30;

/// The `error_type` of an ErrorResponse's SQLSTATE: its class, the first two of its
/// five characters (`42` for a syntax error or undefined table, `23` for a constraint).
pub fn error_class(sqlstate: &[u8]) -> String {
    match sqlstate {
        [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => {
            String::from_utf8_lossy(&[a.to_ascii_uppercase(), b.to_ascii_uppercase()]).into_owned()
        }
        _ => OTHER.to_string(),
    }
}

/// A statement the kernel framed (pg.h), as the line of its record holds it.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelStatement<'a> {
    /// The query's first word, upper-cased, NUL-padded.
    pub verb_word: &'a [u8],
    /// CommandComplete's first word; empty while the statement has not completed.
    pub tag_word: &'a [u8],
    /// The SQLSTATE's first two characters, when an ErrorResponse named them.
    pub class: &'a [u8],
    /// Nothing ran: the backend answered EmptyQueryResponse, or the turn executed no
    /// statement (a Parse alone).
    pub empty: bool,
    /// The query text's first bytes.
    pub text: &'a [u8],
    /// An ErrorResponse came.
    pub failed: bool,
}

/// Bytes up to the first NUL.
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or_default()
}

impl KernelStatement<'_> {
    /// Its `db_operation_name`, as `complete` names a statement: the tag's verb, else
    /// the query's.
    pub fn operation(&self) -> &'static str {
        let tag = verb(until_nul(self.tag_word));
        if tag != OTHER {
            tag
        } else {
            verb(until_nul(self.verb_word))
        }
    }

    /// Whether the backend has answered it, short of its ReadyForQuery.
    pub fn completed(&self) -> bool {
        self.failed || self.empty || !until_nul(self.tag_word).is_empty()
    }

    /// The exchange it makes, ended at `end`.
    pub fn exchange(&self, start: u64, end: u64, tid: u32, context: Option<SpanContext>) -> Exchange {
        let operation = self.operation();
        let error_type = if self.failed {
            error_class(self.class)
        } else {
            String::new()
        };
        Exchange {
            protocol: Protocol::Postgres,
            method: operation.to_string(),
            path: Described::new(self.text, Dialect::Postgres).summary(operation),
            status: u16::from(self.failed),
            error_type,
            request_body_bytes: 0,
            response_body_bytes: 0,
            start_ns: start,
            end_ns: end,
            context,
            tid,
        }
    }
}

/// What the kernel framed when it handed a connection over: a statement sent and the
/// start of its answer, with when and by whom it was sent.
pub struct Resumed<'a> {
    pub statement: KernelStatement<'a>,
    pub start: u64,
    pub tid: u32,
    pub context: Option<SpanContext>,
}

/// A message framed whole: its type (0 for an untyped startup-phase message) and the
/// first bytes of its payload.
struct Message {
    kind: u8,
    payload: Vec<u8>,
}

/// How a PostgreSQL message starts: a type byte (none for the startup phase's first
/// message) and a length that counts itself.
#[derive(Debug, Clone, Default)]
struct PgHeader {
    /// The next message has no type byte (a startup, SSL or cancel request).
    untyped: bool,
    /// The type of the message being read.
    kind: u8,
}

impl Header for PgHeader {
    fn size(&self) -> usize {
        if self.untyped {
            4
        } else {
            5
        }
    }

    fn payload_length(&mut self, header: &[u8]) -> Option<u64> {
        let (kind, length) = if self.untyped {
            (0, &header[..4])
        } else {
            (header[0], &header[1..5])
        };
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        if !(4..MAX_MESSAGE).contains(&length) || (kind != 0 && !kind.is_ascii_graphic()) {
            return None;
        }
        self.kind = kind;
        self.untyped = false;
        Some(u64::from(length - 4))
    }
}

/// Feeds one direction's bytes; the messages they complete go to `out`.
fn feed(stream: &mut Messages<PgHeader>, data: &[u8], len: u64, out: &mut Vec<Message>) {
    stream.feed(data, len, |head, kept| {
        out.push(Message {
            kind: head.kind,
            payload: std::mem::take(kept),
        })
    });
}

/// What waits for the backend's answers, in the order sent.
#[derive(Debug, Clone)]
enum Waiting {
    /// A statement: executed (extended protocol) or one of a simple query's. `chained`
    /// ones start when the statement before them completes.
    Statement {
        what: Described,
        start: u64,
        chained: bool,
        tid: u32,
        context: Option<SpanContext>,
        decided: bool,
    },
    /// A Sync, or a simple query's end: ReadyForQuery answers it.
    End,
}

/// Pairs the statements of one PostgreSQL connection with their completions.
#[derive(Debug, Clone)]
pub struct PgConnection {
    role: Role,
    frontend: Messages<PgHeader>,
    backend: Messages<PgHeader>,
    /// The backend answers an SSL or GSS request with one byte, no message.
    awaiting_answer_byte: bool,
    waiting: VecDeque<Waiting>,
    /// What prepared statements and the statements of portals are, by name.
    statements: HashMap<Vec<u8>, Described>,
    portals: HashMap<Vec<u8>, Described>,
    pending_dropped: u64,
    /// Statement and portal names not kept past MAX_PREPARED, since last taken.
    names_refused: u64,
}

impl PgConnection {
    pub fn new(role: Role) -> PgConnection {
        PgConnection {
            role,
            frontend: Messages::new(PgHeader {
                untyped: true,
                kind: 0,
            }),
            backend: Messages::new(PgHeader::default()),
            awaiting_answer_byte: false,
            waiting: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending_dropped: 0,
            names_refused: 0,
        }
    }

    /// A connection the kernel framed until now, past its startup: every message has
    /// its type. A statement the kernel framed waits for the rest of its answer, or, when
    /// that came already, is returned done at `at`, and only its ReadyForQuery is awaited.
    pub fn resume(role: Role, resumed: Option<Resumed<'_>>, at: u64) -> (PgConnection, Option<Exchange>) {
        let mut conn = PgConnection::new(role);
        conn.frontend.head.untyped = false;
        let Some(Resumed {
            statement,
            start,
            tid,
            context,
        }) = resumed
        else {
            return (conn, None);
        };
        let mut done = None;
        if statement.completed() {
            if !statement.empty {
                done = Some(statement.exchange(start, at, tid, context));
            }
        } else {
            conn.waiting.push_back(Waiting::Statement {
                what: Described::new(statement.text, Dialect::Postgres),
                start,
                chained: false,
                tid,
                context,
                // The kernel decided its span.
                decided: true,
            });
        }
        conn.waiting.push_back(Waiting::End);
        (conn, done)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the startup is over: every message from here on has its type.
    pub fn past_startup(&self) -> bool {
        !self.frontend.head.untyped && !self.awaiting_answer_byte
    }

    /// Bytes held of headers and payload starts not yet complete.
    pub fn buffered(&self) -> usize {
        self.frontend.buffered() + self.backend.buffered()
    }

    /// Drops what `buffered` counts, and with it the framing of this connection.
    pub fn abandon_partial(&mut self) {
        self.frontend.lose();
        self.backend.lose();
    }

    /// Statements dropped unanswered past the pending limit, and times framing was lost.
    pub fn take_losses(&mut self) -> (u64, u64) {
        let lost =
            std::mem::take(&mut self.frontend.losses) + std::mem::take(&mut self.backend.losses);
        (std::mem::take(&mut self.pending_dropped), lost)
    }

    /// Prepared statement and portal names refused past the per-connection cap since the
    /// last call: their executions are named `_OTHER`.
    pub fn take_names_refused(&mut self) -> u64 {
        std::mem::take(&mut self.names_refused)
    }

    /// Statements sent since the last call, for their span contexts to be decided; a
    /// client's only.
    pub fn new_requests(&mut self) -> impl Iterator<Item = NewRequest<'_>> {
        let client = self.role == Role::Client;
        self.waiting.iter_mut().filter_map(move |w| match w {
            Waiting::Statement {
                start,
                tid,
                context,
                decided,
                ..
            } if client && !*decided => {
                *decided = true;
                Some(NewRequest {
                    tid: *tid,
                    at: *start,
                    trace: None,
                    context,
                })
            }
            _ => None,
        })
    }

    /// Feeds one read or write of thread `tid`; returns the statements it completed.
    pub fn feed_by(
        &mut self,
        direction: Direction,
        data: &[u8],
        len: u64,
        at: u64,
        tid: u32,
    ) -> Vec<Exchange> {
        let mut messages = Vec::new();
        if self.role.requests_flow(direction) {
            feed(&mut self.frontend, data, len, &mut messages);
            for message in messages {
                self.on_frontend(message, at, tid);
            }
            return Vec::new();
        }
        let mut data = data;
        let mut len = len;
        if self.awaiting_answer_byte && !data.is_empty() {
            self.awaiting_answer_byte = false;
            if data[0] != b'N' {
                // 'S' (or 'G'): TLS or GSS encryption follows; the plaintext, if any,
                // comes through the OpenSSL uprobes as a connection of its own.
                self.frontend.lost = true;
                self.backend.lost = true;
                return Vec::new();
            }
            data = &data[1..];
            len -= 1;
            self.frontend.head.untyped = true;
        }
        feed(&mut self.backend, data, len, &mut messages);
        let mut done = Vec::new();
        for message in messages {
            self.on_backend(message, at, &mut done);
        }
        done
    }

    fn push(&mut self, waiting: Waiting) {
        if self.waiting.len() >= MAX_PENDING {
            if let Some(Waiting::Statement { .. }) = self.waiting.pop_front() {
                self.pending_dropped += 1;
            }
        }
        self.waiting.push_back(waiting);
    }

    fn statement(what: Described, start: u64, chained: bool, tid: u32) -> Waiting {
        Waiting::Statement {
            what,
            start,
            chained,
            tid,
            context: None,
            decided: false,
        }
    }

    fn on_frontend(&mut self, message: Message, at: u64, tid: u32) {
        let payload = &message.payload;
        match message.kind {
            0 => {
                // SSLRequest and GSSENCRequest: the backend answers with one byte.
                let code = payload.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                if matches!(code, Some(80877103 | 80877104)) {
                    self.awaiting_answer_byte = true;
                }
            }
            b'Q' => {
                // Each statement of the query is counted; the pieces of its text give
                // their verbs until the text kept runs out.
                let text = payload.strip_suffix(&[0]).unwrap_or(payload);
                let mut first = true;
                for piece in split_statements(text, Dialect::Postgres) {
                    self.push(Self::statement(Described::new(piece, Dialect::Postgres), at, !first, tid));
                    first = false;
                }
                if first {
                    self.push(Self::statement(Described::unknown(), at, false, tid));
                }
                self.push(Waiting::End);
            }
            b'P' => {
                let mut fields = payload.splitn(2, |&b| b == 0);
                let name = fields.next().unwrap_or_default().to_vec();
                let query = fields.next().unwrap_or_default();
                if !remember(&mut self.statements, name, Described::new(query, Dialect::Postgres)) {
                    self.names_refused += 1;
                }
            }
            b'B' => {
                let mut fields = payload.splitn(3, |&b| b == 0);
                let portal = fields.next().unwrap_or_default().to_vec();
                let statement = fields.next().unwrap_or_default();
                let what = self.statements.get(statement).cloned().unwrap_or(Described::unknown());
                if !remember(&mut self.portals, portal, what) {
                    self.names_refused += 1;
                }
            }
            b'E' => {
                let portal = payload.split(|&b| b == 0).next().unwrap_or_default();
                let what = self.portals.get(portal).cloned().unwrap_or(Described::unknown());
                self.push(Self::statement(what, at, false, tid));
            }
            b'S' => self.push(Waiting::End),
            b'C' => {
                // Close of a statement ('S') or portal ('P').
                if let Some((&what, name)) = payload.split_first() {
                    let name = name.strip_suffix(&[0]).unwrap_or(name);
                    match what {
                        b'S' => self.statements.remove(name),
                        _ => self.portals.remove(name),
                    };
                }
            }
            _ => {}
        }
    }

    fn on_backend(&mut self, message: Message, at: u64, done: &mut Vec<Exchange>) {
        match message.kind {
            b'C' => {
                let tag = message.payload.strip_suffix(&[0]).unwrap_or(&message.payload);
                self.complete(verb(tag), None, at, done);
            }
            b'I' => {
                // An empty query: nothing ran.
                if matches!(self.waiting.front(), Some(Waiting::Statement { .. })) {
                    self.waiting.pop_front();
                }
            }
            b'E' => {
                let code = error_field(&message.payload, b'C');
                self.complete(OTHER, Some(error_class(code)), at, done);
                // The backend skips the rest of the query, or up to the next Sync.
                while matches!(self.waiting.front(), Some(Waiting::Statement { .. })) {
                    self.waiting.pop_front();
                }
            }
            b'Z' => {
                // Whatever was not answered before ReadyForQuery never will be.
                while let Some(waiting) = self.waiting.pop_front() {
                    if matches!(waiting, Waiting::End) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    /// The oldest statement waiting completed at `at`: with the tag's verb when it has
    /// one of its own (a statement's text may have been past what was kept).
    fn complete(
        &mut self,
        tag_verb: &'static str,
        error: Option<String>,
        at: u64,
        done: &mut Vec<Exchange>,
    ) {
        // An End waits for ReadyForQuery: a completion never takes it.
        if !matches!(self.waiting.front(), Some(Waiting::Statement { .. })) {
            return;
        }
        let Some(Waiting::Statement {
            what,
            start,
            tid,
            context,
            ..
        }) = self.waiting.pop_front()
        else {
            return;
        };
        // The next statement of the same query starts now.
        if let Some(Waiting::Statement {
            start: next,
            chained: true,
            ..
        }) = self.waiting.front_mut()
        {
            *next = (*next).max(at);
        }
        let operation = if tag_verb != OTHER { tag_verb } else { what.verb };
        let summary = what.summary(operation);
        done.push(Exchange {
            protocol: Protocol::Postgres,
            method: operation.to_string(),
            path: summary,
            status: u16::from(error.is_some()),
            error_type: error.unwrap_or_default(),
            request_body_bytes: 0,
            response_body_bytes: 0,
            start_ns: start,
            end_ns: at,
            context,
            tid,
        });
    }
}

/// Keeps `name` -> `what`, within MAX_PREPARED names. Returns false when it is refused.
fn remember(map: &mut HashMap<Vec<u8>, Described>, name: Vec<u8>, what: Described) -> bool {
    if map.len() >= MAX_PREPARED && !map.contains_key(&name) {
        return false;
    }
    map.insert(name, what);
    true
}

/// The value of field `code` of an ErrorResponse (`C`: the SQLSTATE).
fn error_field(payload: &[u8], code: u8) -> &[u8] {
    payload
        .split(|&b| b == 0)
        .find(|field| field.first() == Some(&code))
        .map_or(&[][..], |field| &field[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn startup() -> Vec<u8> {
        let payload = b"\x00\x03\x00\x00user\x00postgres\x00\x00";
        let mut m = (payload.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(payload);
        m
    }

    fn ready() -> Vec<u8> {
        message(b'Z', b"I")
    }

    fn error(code: &str) -> Vec<u8> {
        message(b'E', format!("SERROR\0C{code}\0Mno\0\0").as_bytes())
    }

    fn client() -> PgConnection {
        let mut c = PgConnection::new(Role::Client);
        c.feed_by(Direction::Egress, &startup(), startup().len() as u64, 1, 9);
        let hello = [message(b'R', &[0, 0, 0, 0]), message(b'S', b"a\0b\0"), ready()].concat();
        assert!(read(&mut c, &hello, 2).is_empty());
        c
    }

    fn write(c: &mut PgConnection, data: &[u8], at: u64) {
        c.feed_by(Direction::Egress, data, data.len() as u64, at, 9);
    }

    fn read(c: &mut PgConnection, data: &[u8], at: u64) -> Vec<Exchange> {
        c.feed_by(Direction::Ingress, data, data.len() as u64, at, 9)
    }

    fn names(done: &[Exchange]) -> Vec<(&str, &str, u64, u64)> {
        done.iter()
            .map(|x| (x.method.as_str(), x.error_type.as_str(), x.start_ns, x.end_ns))
            .collect()
    }

    #[test]
    fn each_statement_of_a_simple_query_is_counted_with_its_own_time() {
        let mut c = client();
        write(&mut c, &message(b'Q', b"select 1; insert into t values (';'); -- x;\0"), 10);
        let answer = [
            message(b'T', b"..."),
            message(b'D', b"..."),
            message(b'C', b"SELECT 1\0"),
        ]
        .concat();
        let first = read(&mut c, &answer, 20);
        let rest = read(&mut c, &[message(b'C', b"INSERT 0 1\0"), ready()].concat(), 35);
        assert_eq!(names(&first), [("SELECT", "", 10, 20)]);
        assert_eq!(names(&rest), [("INSERT", "", 20, 35)]);
    }

    #[test]
    fn an_error_ends_its_query_and_names_its_sqlstate_class() {
        let mut c = client();
        write(&mut c, &message(b'Q', b"SELECT * FROM missing; SELECT 2\0"), 10);
        let done = read(&mut c, &[error("42P01"), ready()].concat(), 12);
        assert_eq!(names(&done), [("SELECT", "42", 10, 12)]);
        // The second statement never ran: nothing waits for it.
        assert!(c.waiting.is_empty());
    }

    #[test]
    fn prepared_statements_are_named_by_their_verb_at_each_execute() {
        let mut c = client();
        let prepare = [
            message(b'P', b"s1\0UPDATE t SET a = $1\0\0\0"),
            message(b'B', b"\0s1\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat();
        write(&mut c, &prepare, 10);
        let answer = [
            message(b'1', b""),
            message(b'2', b""),
            message(b'C', b"UPDATE 3\0"),
            ready(),
        ]
        .concat();
        assert_eq!(names(&read(&mut c, &answer, 11)), [("UPDATE", "", 10, 11)]);
        // Executed again without a Parse; an error before Sync drops what follows.
        let again = [
            message(b'B', b"\0s1\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'B', b"\0s1\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat();
        write(&mut c, &again, 20);
        let answer = [message(b'2', b""), error("23505"), ready()].concat();
        assert_eq!(names(&read(&mut c, &answer, 21)), [("UPDATE", "23", 20, 21)]);
        assert!(c.waiting.is_empty());
    }

    #[test]
    fn a_refused_ssl_request_goes_on_in_plaintext_and_an_accepted_one_stops_framing() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let mut c = PgConnection::new(Role::Client);
        write(&mut c, &ssl, 1);
        read(&mut c, b"N", 2);
        write(&mut c, &startup(), 3);
        read(&mut c, &ready(), 4);
        write(&mut c, &message(b'Q', b"SELECT 1\0"), 5);
        assert_eq!(names(&read(&mut c, &message(b'C', b"SELECT 1\0"), 6)), [("SELECT", "", 5, 6)]);
        let mut c = PgConnection::new(Role::Client);
        write(&mut c, &ssl, 1);
        read(&mut c, b"S\x16\x03\x01junk", 2);
        write(&mut c, b"\x16\x03\x01 more", 3);
        assert!(read(&mut c, b"\x17\x03\x03 records", 4).is_empty());
    }

    #[test]
    fn rows_past_the_capture_are_skipped_by_their_length() {
        let mut c = client();
        write(&mut c, &message(b'Q', b"SELECT big\0"), 1);
        let mut answer = message(b'D', &vec![b'x'; 100_000]);
        answer.extend(message(b'C', b"SELECT 1\0"));
        answer.extend(ready());
        let done = c.feed_by(Direction::Ingress, &answer[..4096], 100_005, 2, 9);
        assert!(done.is_empty());
        let tail = &answer[100_005..];
        assert_eq!(names(&read(&mut c, tail, 3)), [("SELECT", "", 1, 3)]);
        assert_eq!(c.take_losses(), (0, 0));
    }

    #[test]
    fn a_server_reads_statements_and_writes_their_completions() {
        let mut c = PgConnection::new(Role::Server);
        c.feed_by(Direction::Ingress, &startup(), startup().len() as u64, 1, 3);
        let query = message(b'Q', b"DELETE FROM t\0");
        c.feed_by(Direction::Ingress, &query, query.len() as u64, 5, 3);
        let answer = [message(b'C', b"DELETE 2\0"), ready()].concat();
        let done = c.feed_by(Direction::Egress, &answer, answer.len() as u64, 9, 3);
        assert_eq!(names(&done), [("DELETE", "", 5, 9)]);
    }

    #[test]
    fn a_summary_names_the_verb_and_the_first_table_never_a_literal() {
        let mut c = client();
        write(&mut c, &message(b'Q', b"SELECT a FROM t WHERE a = 'x'; BEGIN\0"), 1);
        let done = read(&mut c, &[message(b'C', b"SELECT 1\0"), message(b'C', b"BEGIN\0")].concat(), 2);
        let summaries: Vec<&str> = done.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(summaries, ["SELECT t", "BEGIN"]);
    }

    #[test]
    fn junk_loses_framing_and_names_stay_in_the_closed_sets() {
        let mut c = client();
        write(&mut c, b"\x01\xff\xff\xff\xff", 1);
        assert_eq!(c.take_losses(), (0, 1));
        assert_eq!(c.buffered(), 0);
        assert_eq!(error_class(b"42P01"), "42");
        assert_eq!(error_class(b"\n\""), OTHER);
        assert_eq!(error_class(b""), OTHER);
    }

    #[test]
    fn prepared_statements_past_the_cap_are_refused_counted_and_run_as_other() {
        let mut c = client();
        let mut burst = Vec::new();
        for i in 0..MAX_PREPARED + 3 {
            burst.extend(message(b'P', format!("s{i}\0DELETE FROM t\0\0\0").as_bytes()));
        }
        write(&mut c, &burst, 1);
        assert_eq!(c.take_names_refused(), 3);
        let last = format!("\0s{}\0\0\0\0\0", MAX_PREPARED + 2);
        let run = [message(b'B', last.as_bytes()), message(b'E', b"\0\0\0\0\0"), message(b'S', b"")];
        write(&mut c, &run.concat(), 2);
        let done = read(&mut c, &[message(b'C', b"DELETE 1\0"), ready()].concat(), 3);
        // The tag still names it; without a tag it would be _OTHER.
        assert_eq!(names(&done), [("DELETE", "", 2, 3)]);
        assert_eq!(c.take_names_refused(), 0);
    }

    /// A statement as the kernel's line holds it: NUL-padded words.
    fn framed<'a>(verb: &'a [u8; 16], tag: &'a [u8; 16], class: &'a [u8], text: &'a [u8]) -> KernelStatement<'a> {
        KernelStatement {
            verb_word: verb,
            tag_word: tag,
            class,
            empty: false,
            text,
            failed: !class.is_empty(),
        }
    }

    fn word(w: &str) -> [u8; 16] {
        let mut out = [0; 16];
        out[..w.len()].copy_from_slice(w.as_bytes());
        out
    }

    #[test]
    fn a_statement_the_kernel_framed_is_named_by_its_tag_then_by_its_query() {
        let (with, select, none) = (word("WITH"), word("SELECT"), word(""));
        let text = b"WITH x AS (SELECT 1) SELECT * FROM x";
        assert_eq!(framed(&with, &select, b"", text).operation(), "SELECT");
        assert_eq!(framed(&with, &none, b"", text).operation(), "WITH");
        let query = b"  select a from Accounts where a = 'x'";
        let done = framed(&select, &select, b"", query).exchange(3, 9, 7, None);
        assert_eq!((done.method.as_str(), done.path.as_str(), done.status), ("SELECT", "SELECT accounts", 0));
        assert_eq!((done.start_ns, done.end_ns, done.tid), (3, 9, 7));
        let failed = framed(&select, &none, b"42", query).exchange(3, 9, 7, None);
        assert_eq!((failed.error_type.as_str(), failed.status), ("42", 1));
        // No class the kernel could read (a cut header, binary bytes): _OTHER.
        assert_eq!(framed(&select, &none, &[0, 0], query).exchange(3, 9, 7, None).error_type, OTHER);
        // Junk words name nothing.
        let (long, escape) = (word("ABCDEFGHIJKLMNOP"), word("\x1b"));
        let junk = framed(&long, &escape, b"", b"\x1b[31m");
        assert_eq!(junk.operation(), OTHER);
    }

    #[test]
    fn a_connection_handed_over_mid_answer_completes_its_statement_and_goes_on() {
        let select = word("SELECT");
        let none = word("");
        let waiting = Resumed {
            statement: framed(&select, &none, b"", b"SELECT 1"),
            start: 10,
            tid: 9,
            context: None,
        };
        let (mut c, done) = PgConnection::resume(Role::Client, Some(waiting), 15);
        assert!(done.is_none());
        let rest = [message(b'H', b"\0\0\0"), message(b'C', b"COPY 1\0"), ready()].concat();
        assert_eq!(names(&read(&mut c, &rest, 20)), [("COPY", "", 10, 20)]);
        // Typed from here: the next query is not taken for a startup message.
        write(&mut c, &message(b'Q', b"DELETE FROM t\0"), 30);
        let answer = [message(b'C', b"DELETE 0\0"), ready()].concat();
        assert_eq!(names(&read(&mut c, &answer, 31)), [("DELETE", "", 30, 31)]);

        // Its answer came already, short of ReadyForQuery: done at the hand-over.
        let completed = Resumed {
            statement: framed(&select, &select, b"", b"SELECT 1"),
            start: 10,
            tid: 9,
            context: None,
        };
        let (mut c, done) = PgConnection::resume(Role::Client, Some(completed), 15);
        assert_eq!(names(&done.into_iter().collect::<Vec<_>>()), [("SELECT", "", 10, 15)]);
        assert!(read(&mut c, &ready(), 16).is_empty());
        assert!(c.waiting.is_empty());
        // Nothing pending: the bytes after a ReadyForQuery.
        let (mut c, done) = PgConnection::resume(Role::Server, None, 15);
        assert!(done.is_none());
        c.feed_by(Direction::Ingress, &message(b'Q', b"BEGIN\0"), 10, 20, 3);
        let answer = [message(b'C', b"BEGIN\0"), ready()].concat();
        let done = c.feed_by(Direction::Egress, &answer, answer.len() as u64, 21, 3);
        assert_eq!(names(&done), [("BEGIN", "", 20, 21)]);
    }

    #[test]
    fn after_lost_events_a_started_connection_resumes_at_the_next_typed_message() {
        let mut c = client();
        assert!(c.past_startup());
        assert!(!PgConnection::new(Role::Client).past_startup());
        // Lost events dropped a query's answer; the framer that takes over is typed.
        write(&mut c, &message(b'Q', b"SELECT 1\0"), 1);
        let mut after = super::super::conn::Framing::Postgres(c).after_gap(Role::Client);
        let query = message(b'Q', b"DELETE FROM t\0");
        after.feed_by(Direction::Egress, &query, query.len() as u64, 5, 9);
        let answer = [message(b'C', b"DELETE 1\0"), ready()].concat();
        let done = after.feed_by(Direction::Ingress, &answer, answer.len() as u64, 6, 9);
        assert_eq!(names(&done), [("DELETE", "", 5, 6)]);
    }

    #[test]
    fn unanswered_statements_are_capped_and_counted() {
        let mut c = client();
        let burst = message(b'Q', b"SELECT 1\0").repeat(MAX_PENDING);
        write(&mut c, &burst, 1);
        // Each query waits as a statement and its end: half of them were dropped.
        assert_eq!(c.take_losses().0, MAX_PENDING as u64 / 2);
    }
}
