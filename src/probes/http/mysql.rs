//! MySQL and MariaDB framing in user space (the classic client/server protocol): every
//! statement a client runs as text (COM_QUERY, each statement of a multi-statement query
//! counted) or prepared (COM_STMT_EXECUTE, named by the verb of the statement it
//! prepared), paired with the end of its result: an OK, an ERR, or the last row.
//!
//! Every packet is a 3-byte length and a sequence number; only the first bytes of each
//! payload are looked at, the rest skipped by length, so large rows cost nothing to frame
//! and bytes past the capture are skipped unseen.

use std::collections::{HashMap, VecDeque};

use super::conn::{Direction, Exchange, NewRequest, Protocol, Role};
use super::sql::{split_statements, Described, Dialect};
use super::stream::{Header, Messages};
use crate::model::span::SpanContext;

/// Commands waiting for their answer on one connection, at most.
const MAX_PENDING: usize = 4096;
/// Prepared statements remembered per connection, at most; executions of those past it
/// are `_OTHER`.
const MAX_PREPARED: usize = 256;
/// A packet of this length continues in the next one (a payload of 16 MiB or more).
const CONTINUED: u32 = 0xff_ffff;

/// Capability flags of the handshake.
const CLIENT_SSL: u32 = 1 << 11;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;
/// The SSLRequest: capabilities, maximum packet size, character set and 23 zeros.
const SSL_REQUEST_LENGTH: u64 = 32;

/// Commands (the first byte of a packet a client sends with sequence number 0).
const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
/// MariaDB's array binding: results as an execute's.
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
/// The statement id MariaDB's clients give an execute sent before its prepare's answer:
/// the statement prepared last.
const LAST_PREPARED: u32 = u32::MAX;

/// Status flag of an OK or EOF: another result of the same command follows.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// A packet framed whole (joined with its continuations): its sequence number, the first
/// bytes of its payload, and whether it spanned more than one packet.
struct Packet {
    seq: u8,
    payload: Vec<u8>,
    length: u64,
    continued: bool,
}

impl Packet {
    fn first(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    /// The last packet of a result: an EOF, or the OK that stands for it (which starts
    /// with 0xfe too; a row starting so is 16 MiB long at least).
    fn ends_rows(&self) -> bool {
        self.first() == Some(0xfe) && !self.continued
    }
}

/// How a MySQL packet starts: a 3-byte length and a sequence number. A packet of
/// CONTINUED bytes goes on in the next: the two are one logical packet.
#[derive(Debug, Clone, Default)]
struct PacketHeader {
    /// Of the logical packet being read: its first sequence number, its length so far,
    /// and whether it spans packets.
    seq: u8,
    length: u64,
    spanned: bool,
    /// The packet being read continues in the next.
    continues: bool,
}

impl Header for PacketHeader {
    fn size(&self) -> usize {
        4
    }

    fn payload_length(&mut self, header: &[u8]) -> Option<u64> {
        let length = u32::from_le_bytes([header[0], header[1], header[2], 0]);
        if !self.spanned {
            self.seq = header[3];
        }
        self.length += u64::from(length);
        self.continues = length == CONTINUED;
        Some(u64::from(length))
    }
}

/// Feeds one direction's bytes; the logical packets they complete go to `out`.
fn feed(stream: &mut Messages<PacketHeader>, data: &[u8], len: u64, out: &mut Vec<Packet>) {
    stream.feed(data, len, |head, kept| {
        if head.continues {
            head.spanned = true;
            return;
        }
        out.push(Packet {
            seq: head.seq,
            payload: std::mem::take(kept),
            length: std::mem::take(&mut head.length),
            continued: std::mem::take(&mut head.spanned),
        });
    });
}

/// A statement waiting for its result.
#[derive(Debug, Clone)]
struct Statement {
    what: Described,
    start: u64,
    tid: u32,
    context: Option<SpanContext>,
    decided: bool,
}

/// What answers a command.
#[derive(Debug, Clone)]
enum Answer {
    /// One result per statement (more while the server says so): an OK, an ERR, or a
    /// result set of column definitions and rows.
    Results { statements: VecDeque<Statement> },
    /// A prepared statement's id, then its parameters' and columns' definitions.
    Prepared { what: Described },
    /// One packet: an OK, an ERR, an EOF or a string.
    One,
    /// Packets up to an EOF or ERR: a field list, or rows fetched from a cursor.
    UntilEof,
    /// An authentication exchange, up to its OK or ERR.
    Authentication,
}

/// Where the server's answer to the oldest command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Its first packet is next.
    Start,
    /// Column definitions still to come; then (without DEPRECATE_EOF) their EOF.
    Columns(u64),
    ColumnsEof,
    Rows,
    /// Packets of a prepared statement's definitions still to come.
    Definitions(u64),
}

/// What answers a command the kernel framed (mysql.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelAnswer {
    /// A statement's results: counted.
    Results,
    /// A prepared statement's id and definitions.
    Prepared,
    /// One packet (a ping's OK).
    One,
}

/// A command the kernel framed, as the line of its record holds it.
#[derive(Debug, Clone, Copy)]
pub struct KernelCommand<'a> {
    /// The statement's first bytes: a query's, or the prepare's of what it executes.
    pub text: &'a [u8],
    pub answer: KernelAnswer,
    /// The code of the ERR that answered it, if one did.
    pub error: Option<u16>,
}

impl KernelCommand<'_> {
    fn described(&self) -> Described {
        Described::new(self.text, Dialect::Mysql)
    }

    /// The exchange a statement's results make, ended at `end`.
    pub fn exchange(&self, start: u64, end: u64, tid: u32, context: Option<SpanContext>) -> Exchange {
        let what = self.described();
        let operation = what.verb;
        Exchange {
            protocol: Protocol::Mysql,
            method: operation.to_string(),
            path: what.summary(operation),
            status: u16::from(self.error.is_some()),
            error_type: self.error.map(|code| code.to_string()).unwrap_or_default(),
            request_body_bytes: 0,
            response_body_bytes: 0,
            start_ns: start,
            end_ns: end,
            context,
            tid,
        }
    }
}

/// What the kernel knew of a connection it handed over: the capabilities both ends have,
/// and the header of a command whose payload had not come yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelConnection {
    pub deprecate_eof: bool,
    pub query_attributes: bool,
    pub held_header: Option<[u8; 4]>,
}

/// What the kernel framed when it handed a connection over mid-answer: the command sent,
/// where its answer stood, and when and by whom it was sent.
pub struct Resumed<'a> {
    pub command: KernelCommand<'a>,
    pub reading: Reading,
    pub start: u64,
    pub tid: u32,
    pub context: Option<SpanContext>,
}

/// Pairs the statements of one MySQL connection with their results.
#[derive(Debug, Clone)]
pub struct MysqlConnection {
    role: Role,
    client: Messages<PacketHeader>,
    server: Messages<PacketHeader>,
    /// The handshake is over: packets are commands and their answers.
    commands: bool,
    server_capabilities: Option<u32>,
    client_capabilities: Option<u32>,
    waiting: VecDeque<Answer>,
    reading: Reading,
    /// What prepared statements are, by id, and the one prepared last.
    prepared: HashMap<u32, Described>,
    last_prepared: Option<Described>,
    pending_dropped: u64,
    /// Statement ids not kept past MAX_PREPARED, since last taken.
    names_refused: u64,
}

impl MysqlConnection {
    pub fn new(role: Role) -> MysqlConnection {
        MysqlConnection {
            role,
            client: Messages::new(PacketHeader::default()),
            server: Messages::new(PacketHeader::default()),
            commands: false,
            server_capabilities: None,
            client_capabilities: None,
            waiting: VecDeque::new(),
            reading: Reading::Start,
            prepared: HashMap::new(),
            last_prepared: None,
            pending_dropped: 0,
            names_refused: 0,
        }
    }

    /// A connection the kernel framed until now, in its command phase, with the
    /// capabilities both ends have. A command it framed waits for the rest of its answer,
    /// read on from where the kernel stood.
    /// A command's header the kernel held, read apart from its payload, is framed first.
    pub fn resume(role: Role, kernel: &KernelConnection, resumed: Option<Resumed<'_>>) -> MysqlConnection {
        let mut conn = MysqlConnection::new(role);
        conn.commands = true;
        let capabilities = if kernel.deprecate_eof { CLIENT_DEPRECATE_EOF } else { 0 }
            | if kernel.query_attributes { CLIENT_QUERY_ATTRIBUTES } else { 0 };
        conn.client_capabilities = Some(capabilities);
        conn.server_capabilities = Some(capabilities);
        if let Some(header) = kernel.held_header {
            let mut none = Vec::new();
            feed(&mut conn.client, &header, header.len() as u64, &mut none);
        }
        let Some(resumed) = resumed else {
            return conn;
        };
        let what = resumed.command.described();
        let answer = match resumed.command.answer {
            KernelAnswer::Results => Answer::Results {
                statements: VecDeque::from([Statement {
                    what,
                    start: resumed.start,
                    tid: resumed.tid,
                    context: resumed.context,
                    // The kernel decided its span.
                    decided: true,
                }]),
            },
            KernelAnswer::Prepared => Answer::Prepared { what },
            KernelAnswer::One => Answer::One,
        };
        conn.waiting.push_back(answer);
        conn.reading = resumed.reading;
        conn
    }

    /// The framer of this connection after events of it were lost: past the handshake,
    /// it goes on with its capabilities and prepared statements, at the next command.
    pub fn after_gap(&self) -> Option<MysqlConnection> {
        if !self.commands {
            return None;
        }
        let mut conn = MysqlConnection::new(self.role);
        conn.commands = true;
        conn.client_capabilities = self.client_capabilities;
        conn.server_capabilities = self.server_capabilities;
        conn.prepared = self.prepared.clone();
        conn.last_prepared = self.last_prepared.clone();
        Some(conn)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes held of headers and payload starts not yet complete.
    pub fn buffered(&self) -> usize {
        self.client.buffered() + self.server.buffered()
    }

    /// Drops what `buffered` counts, and with it the framing of this connection.
    pub fn abandon_partial(&mut self) {
        self.client.lose();
        self.server.lose();
    }

    /// Statements dropped unanswered past the pending limit, and times framing was lost.
    pub fn take_losses(&mut self) -> (u64, u64) {
        let lost = std::mem::take(&mut self.client.losses) + std::mem::take(&mut self.server.losses);
        (std::mem::take(&mut self.pending_dropped), lost)
    }

    /// Prepared statements refused past the per-connection cap since the last call:
    /// their executions are named `_OTHER`.
    pub fn take_names_refused(&mut self) -> u64 {
        std::mem::take(&mut self.names_refused)
    }

    /// Statements sent since the last call, for their span contexts to be decided; a
    /// client's only.
    pub fn new_requests(&mut self) -> impl Iterator<Item = NewRequest<'_>> {
        let client = self.role == Role::Client;
        self.waiting
            .iter_mut()
            .filter_map(|answer| match answer {
                Answer::Results { statements } => Some(statements.iter_mut()),
                _ => None,
            })
            .flatten()
            .filter(move |s| client && !s.decided)
            .map(|s| {
                s.decided = true;
                NewRequest {
                    tid: s.tid,
                    at: s.start,
                    trace: None,
                    context: &mut s.context,
                }
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
        let mut packets = Vec::new();
        let mut done = Vec::new();
        if self.role.requests_flow(direction) {
            feed(&mut self.client, data, len, &mut packets);
            for packet in packets {
                self.on_client(packet, at, tid);
            }
        } else if self.greeting_without_header(data) {
            self.server_capabilities = greeting_capabilities(data);
        } else {
            feed(&mut self.server, data, len, &mut packets);
            for packet in packets {
                self.on_server(packet, at, &mut done);
            }
        }
        done
    }

    /// Whether server bytes are a greeting's payload, its header read apart and kept
    /// by the kernel (it decides the protocol on the payload): protocol 10 first, where
    /// a header would hold a length under the 32 bytes a greeting takes at least.
    fn greeting_without_header(&self, data: &[u8]) -> bool {
        !self.commands
            && self.server_capabilities.is_none()
            && self.server.is_idle()
            && !self.server.lost
            && matches!(data, [10, b'0'..=b'9', ..])
    }

    fn deprecate_eof(&self) -> bool {
        let client = self.client_capabilities.unwrap_or(0);
        // Through TLS the greeting is not seen: the client's word stands.
        let server = self.server_capabilities.unwrap_or(u32::MAX);
        client & server & CLIENT_DEPRECATE_EOF != 0
    }

    fn expect(&mut self, answer: Answer) {
        if self.waiting.len() >= MAX_PENDING {
            if let Some(Answer::Results { statements }) = self.waiting.pop_front() {
                self.pending_dropped += statements.len() as u64;
            }
            self.reading = Reading::Start;
        }
        self.waiting.push_back(answer);
    }

    fn on_client(&mut self, packet: Packet, at: u64, tid: u32) {
        let payload = &packet.payload;
        if !self.commands {
            // The handshake response (or SSLRequest) is the client's first packet.
            if self.client_capabilities.is_none() && packet.seq > 0 && payload.len() >= 4 {
                let capabilities = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                self.client_capabilities = Some(capabilities);
                if capabilities & CLIENT_SSL != 0 && packet.length == SSL_REQUEST_LENGTH {
                    // TLS follows; its plaintext, if any, comes through the OpenSSL
                    // uprobes as a connection of its own.
                    self.client.lost = true;
                    self.server.lost = true;
                }
            }
            return;
        }
        // Later packets of a command's exchange (LOAD DATA's file, authentication).
        if packet.seq != 0 {
            return;
        }
        let Some((&command, body)) = payload.split_first() else {
            return;
        };
        let statement = |what: Described| Statement {
            what,
            start: at,
            tid,
            context: None,
            decided: false,
        };
        match command {
            COM_QUERY => {
                let text = self.query_text(body);
                let mut statements: VecDeque<Statement> = text
                    .map(|text| split_statements(text, Dialect::Mysql))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|piece| statement(Described::new(piece, Dialect::Mysql)))
                    .collect();
                if statements.is_empty() {
                    statements.push_back(statement(Described::unknown()));
                }
                self.expect(Answer::Results { statements });
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                let what = match body.get(..4) {
                    Some(&[a, b, c, d]) => {
                        let id = u32::from_le_bytes([a, b, c, d]);
                        let known = if id == LAST_PREPARED {
                            self.last_prepared.as_ref()
                        } else {
                            self.prepared.get(&id)
                        };
                        known.cloned().unwrap_or_else(Described::unknown)
                    }
                    _ => Described::unknown(),
                };
                self.expect(Answer::Results {
                    statements: VecDeque::from([statement(what)]),
                });
            }
            COM_STMT_PREPARE => {
                let what = Described::new(body, Dialect::Mysql);
                self.last_prepared = Some(what.clone());
                self.expect(Answer::Prepared { what });
            }
            COM_STMT_CLOSE => {
                if let Some(&[a, b, c, d]) = body.get(..4) {
                    self.prepared.remove(&u32::from_le_bytes([a, b, c, d]));
                }
            }
            COM_QUIT | COM_STMT_SEND_LONG_DATA => {}
            COM_FIELD_LIST | COM_STMT_FETCH => self.expect(Answer::UntilEof),
            COM_CHANGE_USER => self.expect(Answer::Authentication),
            COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID => {
                // A replica's stream of events, not answers: nothing more to frame.
                self.client.lose();
                self.server.lose();
            }
            _ => self.expect(Answer::One),
        }
    }

    /// A COM_QUERY's text, after the query attributes when both sides use them (only
    /// an empty set of them is passed over; others hide the text).
    fn query_text<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
        let attributes = self.client_capabilities.unwrap_or(0)
            & self.server_capabilities.unwrap_or(0)
            & CLIENT_QUERY_ATTRIBUTES
            != 0;
        if !attributes {
            return Some(body);
        }
        match body {
            [0, 1, text @ ..] => Some(text),
            _ => None,
        }
    }

    fn on_server(&mut self, packet: Packet, at: u64, done: &mut Vec<Exchange>) {
        if !self.commands {
            match packet.first() {
                Some(10) if self.server_capabilities.is_none() && packet.seq == 0 => {
                    self.server_capabilities = greeting_capabilities(&packet.payload);
                }
                // The handshake's OK: commands follow.
                Some(0) if self.client_capabilities.is_some() => self.commands = true,
                _ => {}
            }
            return;
        }
        let deprecate_eof = self.deprecate_eof();
        let first = packet.first();
        let reading = self.reading;
        let Some(answer) = self.waiting.front_mut() else {
            return; // unasked for: an error as the server closes the connection
        };
        let mut finished = false;
        match answer {
            Answer::Results { statements } => match (reading, first) {
                (Reading::Start, Some(0)) => {
                    let more = ok_status(&packet.payload) & SERVER_MORE_RESULTS_EXISTS != 0;
                    finished = result_ends(statements, more, None, at, done);
                }
                (Reading::Start | Reading::Rows, Some(0xff)) => {
                    let code = error_code(&packet.payload);
                    finished = result_ends(statements, false, Some(code), at, done);
                }
                // LOAD DATA LOCAL: the client sends the file, then the OK comes.
                (Reading::Start, Some(0xfb)) => {}
                (Reading::Start, _) => {
                    let columns = lenenc(&packet.payload).unwrap_or(0);
                    self.reading = if columns == 0 { Reading::Rows } else { Reading::Columns(columns) };
                }
                (Reading::Columns(left), _) => {
                    self.reading = match left {
                        1 if deprecate_eof => Reading::Rows,
                        1 => Reading::ColumnsEof,
                        _ => Reading::Columns(left - 1),
                    };
                }
                (Reading::ColumnsEof, _) => self.reading = Reading::Rows,
                (Reading::Rows, _) if packet.ends_rows() => {
                    let more = end_status(&packet.payload) & SERVER_MORE_RESULTS_EXISTS != 0;
                    finished = result_ends(statements, more, None, at, done);
                    self.reading = Reading::Start;
                }
                (Reading::Rows | Reading::Definitions(_), _) => {}
            },
            Answer::Prepared { what } => match (reading, first) {
                (Reading::Start, Some(0)) => {
                    let p = &packet.payload;
                    let number = |at: usize| u64::from(u16::from_le_bytes([p[at], p[at + 1]]));
                    if p.len() >= 9 {
                        let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                        let (columns, parameters) = (number(5), number(7));
                        let eofs = if deprecate_eof {
                            0
                        } else {
                            u64::from(columns > 0) + u64::from(parameters > 0)
                        };
                        let what = what.clone();
                        if self.prepared.len() >= MAX_PREPARED && !self.prepared.contains_key(&id) {
                            self.names_refused += 1;
                        } else {
                            self.prepared.insert(id, what);
                        }
                        let definitions = columns + parameters + eofs;
                        if definitions > 0 {
                            self.reading = Reading::Definitions(definitions);
                        } else {
                            finished = true;
                        }
                    } else {
                        finished = true;
                    }
                }
                (Reading::Definitions(left), _) => {
                    if left <= 1 {
                        finished = true;
                    } else {
                        self.reading = Reading::Definitions(left - 1);
                    }
                }
                // A prepare that failed ran nothing: it is not counted.
                _ => finished = true,
            },
            Answer::One => finished = true,
            Answer::UntilEof => finished = packet.ends_rows() || first == Some(0xff),
            Answer::Authentication => finished = matches!(first, Some(0 | 0xff)),
        }
        if finished {
            self.waiting.pop_front();
            self.reading = Reading::Start;
        }
    }
}

/// A result of a Results answer ended at `at`, with `error` when it is an ERR: the
/// statement it is of completes, and the next starts. The last statement takes every
/// result left while more follow (a CALL's). Returns whether the answer is over.
fn result_ends(
    statements: &mut VecDeque<Statement>,
    more: bool,
    error: Option<u16>,
    at: u64,
    done: &mut Vec<Exchange>,
) -> bool {
    if error.is_none() && more && statements.len() <= 1 {
        return false;
    }
    let Some(statement) = statements.pop_front() else {
        return true;
    };
    if let Some(next) = statements.front_mut() {
        next.start = next.start.max(at);
    }
    let operation = statement.what.verb;
    done.push(Exchange {
        protocol: Protocol::Mysql,
        method: operation.to_string(),
        path: statement.what.summary(operation),
        status: u16::from(error.is_some()),
        error_type: error.map(|code| code.to_string()).unwrap_or_default(),
        request_body_bytes: 0,
        response_body_bytes: 0,
        start_ns: statement.start,
        end_ns: at,
        context: statement.context,
        tid: statement.tid,
    });
    // An error ends the command: the server runs none of the statements after it.
    error.is_some() || !more
}

/// The capabilities a server's greeting (protocol 10) offers: after its version string,
/// a connection id, 8 bytes of scramble and a filler, the lower two bytes; the upper two
/// after the character set and status.
fn greeting_capabilities(payload: &[u8]) -> Option<u32> {
    let version_end = payload.get(1..)?.iter().position(|&b| b == 0)? + 1;
    let at = version_end + 1 + 4 + 8 + 1;
    let lower = payload.get(at..at + 2)?;
    let upper = payload.get(at + 2 + 1 + 2..at + 2 + 1 + 2 + 2).unwrap_or(&[0, 0]);
    Some(u32::from_le_bytes([lower[0], lower[1], upper[0], upper[1]]))
}

/// A length-encoded integer at the start of `bytes`, and the bytes it took.
fn lenenc_at(bytes: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let digits = rest.get(..width)?;
    let mut value = [0u8; 8];
    value[..width].copy_from_slice(digits);
    Some((u64::from_le_bytes(value), 1 + width))
}

fn lenenc(bytes: &[u8]) -> Option<u64> {
    lenenc_at(bytes).map(|(value, _)| value)
}

/// The status flags of an OK packet (0x00 or 0xfe, affected rows, last insert id).
fn ok_status(payload: &[u8]) -> u16 {
    let status = || {
        let (_, affected) = lenenc_at(payload.get(1..)?)?;
        let (_, insert_id) = lenenc_at(payload.get(1 + affected..)?)?;
        let at = 1 + affected + insert_id;
        let flags = payload.get(at..at + 2)?;
        Some(u16::from_le_bytes([flags[0], flags[1]]))
    };
    status().unwrap_or(0)
}

/// The status flags of the packet that ends a result set's rows: an EOF (0xfe, warnings,
/// status), or with DEPRECATE_EOF an OK that starts with 0xfe.
fn end_status(payload: &[u8]) -> u16 {
    if payload.len() == 5 {
        return u16::from_le_bytes([payload[3], payload[4]]);
    }
    ok_status(payload)
}

/// An ERR packet's error code (0xff, then the code).
fn error_code(payload: &[u8]) -> u16 {
    match payload {
        [0xff, a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::http::conn::Framing;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    fn greeting(capabilities: u32) -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"10.11.19-MariaDB\0");
        g.extend_from_slice(&[1, 0, 0, 0]);
        g.extend_from_slice(b"scramble");
        g.push(0);
        g.extend_from_slice(&capabilities.to_le_bytes()[..2]);
        g.extend_from_slice(&[8, 2, 0]);
        g.extend_from_slice(&capabilities.to_le_bytes()[2..]);
        packet(0, &g)
    }

    const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];
    const OK_MORE: &[u8] = &[0, 0, 0, 0x0a, 0, 0, 0];

    /// A client through its handshake, with `capabilities` on both sides.
    fn client(capabilities: u32) -> MysqlConnection {
        let mut c = MysqlConnection::new(Role::Client);
        read(&mut c, &greeting(capabilities), 0);
        let mut response = capabilities.to_le_bytes().to_vec();
        response.extend_from_slice(&[0; 60]);
        write(&mut c, &packet(1, &response), 0);
        read(&mut c, &packet(2, OK), 0);
        c
    }

    fn write(c: &mut MysqlConnection, data: &[u8], at: u64) {
        c.feed_by(Direction::Egress, data, data.len() as u64, at, 7);
    }

    fn read(c: &mut MysqlConnection, data: &[u8], at: u64) -> Vec<Exchange> {
        c.feed_by(Direction::Ingress, data, data.len() as u64, at, 7)
    }

    fn query(text: &str) -> Vec<u8> {
        packet(0, &[&[COM_QUERY], text.as_bytes()].concat())
    }

    fn error(code: u16) -> Vec<u8> {
        packet(1, &[&[0xff][..], &code.to_le_bytes(), b"#42S02Table doesn't exist"].concat())
    }

    /// A result set of one column and `rows` rows, as sent with or without EOFs.
    fn result_set(rows: usize, deprecate_eof: bool, status: u16) -> Vec<u8> {
        let mut r = packet(1, &[1]);
        r.extend(packet(2, b"\x03def\x00\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00"));
        if !deprecate_eof {
            r.extend(packet(3, &[0xfe, 0, 0, 2, 0]));
        }
        for i in 0..rows {
            r.extend(packet(4, format!("\x01{i}").as_bytes()));
        }
        let status = status.to_le_bytes();
        if deprecate_eof {
            r.extend(packet(9, &[0xfe, 0, 0, status[0], status[1], 0, 0]));
        } else {
            r.extend(packet(9, &[0xfe, 0, 0, status[0], status[1]]));
        }
        r
    }

    fn names(done: &[Exchange]) -> Vec<(&str, &str, &str, u64, u64)> {
        done.iter()
            .map(|x| (x.method.as_str(), x.path.as_str(), x.error_type.as_str(), x.start_ns, x.end_ns))
            .collect()
    }

    #[test]
    fn a_query_ends_at_its_last_row_with_or_without_eofs() {
        for deprecate_eof in [false, true] {
            let capabilities = if deprecate_eof { CLIENT_DEPRECATE_EOF } else { 0 };
            let mut c = client(capabilities);
            write(&mut c, &query("SELECT a FROM t"), 5);
            let answer = result_set(3, deprecate_eof, 2);
            let (head, tail) = answer.split_at(answer.len() - 3);
            assert!(read(&mut c, head, 6).is_empty());
            assert_eq!(names(&read(&mut c, tail, 8)), [("SELECT", "SELECT t", "", 5, 8)]);
            // An empty result set too.
            write(&mut c, &query("SELECT a FROM t WHERE 0"), 10);
            assert_eq!(read(&mut c, &result_set(0, deprecate_eof, 2), 11).len(), 1);
        }
    }

    #[test]
    fn each_statement_of_a_multi_statement_query_is_counted_and_an_error_ends_it() {
        let mut c = client(0);
        write(&mut c, &query("INSERT INTO t VALUES (1); SELECT a FROM t; DELETE FROM t"), 1);
        let answer = [packet(1, OK_MORE), result_set(1, false, 0x0a), packet(1, OK)].concat();
        let done = read(&mut c, &answer, 4);
        assert_eq!(
            names(&done),
            [
                ("INSERT", "INSERT t", "", 1, 4),
                ("SELECT", "SELECT t", "", 4, 4),
                ("DELETE", "DELETE t", "", 4, 4)
            ]
        );
        write(&mut c, &query("SELECT 1 FROM nope; SELECT 2"), 5);
        assert_eq!(names(&read(&mut c, &error(1146), 6)), [("SELECT", "SELECT nope", "1146", 5, 6)]);
        // The next command is framed as ever.
        write(&mut c, &query("BEGIN"), 7);
        assert_eq!(names(&read(&mut c, &packet(1, OK), 8)), [("BEGIN", "BEGIN", "", 7, 8)]);
    }

    #[test]
    fn a_call_with_many_results_is_one_statement() {
        let mut c = client(0);
        write(&mut c, &query("CALL p()"), 1);
        let answer = [result_set(2, false, 0x0a), result_set(1, false, 0x0a), packet(1, OK)].concat();
        assert_eq!(names(&read(&mut c, &answer, 3)), [("CALL", "CALL", "", 1, 3)]);
    }

    #[test]
    fn prepared_statements_are_named_by_their_verb_at_each_execute() {
        for deprecate_eof in [false, true] {
            let mut c = client(if deprecate_eof { CLIENT_DEPRECATE_EOF } else { 0 });
            write(&mut c, &packet(0, b"\x16SELECT v FROM items WHERE id = ?"), 1);
            let mut answer = packet(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
            answer.extend(packet(2, b"param"));
            if !deprecate_eof {
                answer.extend(packet(3, &[0xfe, 0, 0, 2, 0]));
            }
            answer.extend(packet(4, b"column"));
            if !deprecate_eof {
                answer.extend(packet(5, &[0xfe, 0, 0, 2, 0]));
            }
            assert!(read(&mut c, &answer, 2).is_empty());
            for at in [10, 20] {
                write(&mut c, &packet(0, &[COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0]), at);
                let done = read(&mut c, &result_set(1, deprecate_eof, 2), at + 1);
                assert_eq!(names(&done), [("SELECT", "SELECT items", "", at, at + 1)]);
            }
            // An unknown id, and one closed, run as _OTHER.
            write(&mut c, &packet(0, &[COM_STMT_CLOSE, 7, 0, 0, 0]), 30);
            write(&mut c, &packet(0, &[COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0]), 31);
            assert_eq!(names(&read(&mut c, &error(1243), 32)), [("_OTHER", "_OTHER", "1243", 31, 32)]);
        }
    }

    #[test]
    fn a_greeting_whose_header_was_read_apart_is_taken_from_its_payload() {
        let mut c = MysqlConnection::new(Role::Client);
        let hello = greeting(CLIENT_DEPRECATE_EOF);
        read(&mut c, &hello[4..], 0);
        assert_eq!(c.server_capabilities, Some(CLIENT_DEPRECATE_EOF));
        let mut response = CLIENT_DEPRECATE_EOF.to_le_bytes().to_vec();
        response.extend_from_slice(&[0; 60]);
        write(&mut c, &packet(1, &response), 0);
        read(&mut c, &packet(2, OK), 0);
        write(&mut c, &query("SELECT 1"), 1);
        assert_eq!(read(&mut c, &result_set(1, true, 2), 2).len(), 1);
    }

    #[test]
    fn a_server_reads_commands_and_writes_their_results() {
        let mut c = MysqlConnection::new(Role::Server);
        let hello = greeting(0);
        c.feed_by(Direction::Egress, &hello, hello.len() as u64, 0, 3);
        let response = packet(1, &[0; 64]);
        c.feed_by(Direction::Ingress, &response, response.len() as u64, 0, 3);
        c.feed_by(Direction::Egress, &packet(2, OK), 11, 0, 3);
        let q = query("UPDATE t SET a = 'from x'");
        c.feed_by(Direction::Ingress, &q, q.len() as u64, 5, 3);
        let done = c.feed_by(Direction::Egress, &packet(1, OK), 11, 9, 3);
        assert_eq!(names(&done), [("UPDATE", "UPDATE t", "", 5, 9)]);
    }

    #[test]
    fn rows_past_the_capture_and_across_packets_are_skipped_by_length() {
        let mut c = client(0);
        write(&mut c, &query("SELECT a FROM t"), 1);
        let head = [packet(1, &[1]), packet(2, b"column"), packet(3, &[0xfe, 0, 0, 2, 0])].concat();
        read(&mut c, &head, 2);
        // A 20 MiB row: a full packet and a continuation, seen only by their headers.
        let mut big = vec![0xff, 0xff, 0xff, 4, 0xfe];
        c.feed_by(Direction::Ingress, &big, u64::from(CONTINUED) + 4, 3, 7);
        big = vec![0x10, 0, 0, 5, b'x'];
        c.feed_by(Direction::Ingress, &big, 0x10 + 4, 3, 7);
        let done = read(&mut c, &packet(6, &[0xfe, 0, 0, 2, 0]), 4);
        assert_eq!(names(&done), [("SELECT", "SELECT t", "", 1, 4)]);
        assert_eq!(c.take_losses(), (0, 0));
    }

    #[test]
    fn an_ssl_request_stops_framing_and_junk_names_nothing() {
        let mut c = MysqlConnection::new(Role::Client);
        read(&mut c, &greeting(CLIENT_SSL), 0);
        let mut ssl = CLIENT_SSL.to_le_bytes().to_vec();
        ssl.extend_from_slice(&[0; 28]);
        write(&mut c, &packet(1, &ssl), 0);
        write(&mut c, &query("SELECT 1"), 1);
        assert!(read(&mut c, &packet(1, OK), 2).is_empty());

        let mut c = client(0);
        write(&mut c, b"\x06\x00\x00\x00\x03\x1b[31m", 1);
        let done = read(&mut c, &packet(1, OK), 2);
        assert_eq!(names(&done), [("_OTHER", "_OTHER", "", 1, 2)]);
        // Bytes past the capture outside any payload lose the framing, counted.
        c.feed_by(Direction::Egress, b"\x01\x00", 5000, 3, 7);
        assert_eq!(c.take_losses(), (0, 1));
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn unanswered_commands_and_prepared_statements_are_capped_and_counted() {
        let mut c = client(0);
        let mut burst = Vec::new();
        for _ in 0..MAX_PENDING + 5 {
            burst.extend(query("SELECT 1"));
        }
        write(&mut c, &burst, 1);
        assert_eq!(c.take_losses(), (5, 0));
        let mut c = client(0);
        for id in 0..MAX_PREPARED as u32 + 2 {
            write(&mut c, &packet(0, b"\x16DELETE FROM t"), 1);
            let mut ok = vec![0];
            ok.extend_from_slice(&id.to_le_bytes());
            ok.extend_from_slice(&[0; 7]);
            read(&mut c, &packet(1, &ok), 2);
        }
        assert_eq!(c.take_names_refused(), 2);
    }

    fn kernel(deprecate_eof: bool, held_header: Option<[u8; 4]>) -> KernelConnection {
        KernelConnection {
            deprecate_eof,
            query_attributes: false,
            held_header,
        }
    }

    #[test]
    fn a_connection_the_kernel_hands_over_mid_answer_goes_on_from_where_its_walk_stood() {
        // Handed over among the rows of a SELECT the kernel framed: the rows left, then
        // the EOF, end it; the next query is framed as any other.
        let resumed = Resumed {
            command: KernelCommand {
                text: b"SELECT a FROM t WHERE id = 1",
                answer: KernelAnswer::Results,
                error: None,
            },
            reading: Reading::Rows,
            start: 5,
            tid: 9,
            context: None,
        };
        let mut c = MysqlConnection::resume(Role::Client, &kernel(false, None), Some(resumed));
        let rows = [packet(5, b"\x011"), packet(6, b"\x012"), packet(7, &[0xfe, 0, 0, 2, 0])].concat();
        let done = read(&mut c, &rows, 20);
        assert_eq!(names(&done), [("SELECT", "SELECT t", "", 5, 20)]);
        assert_eq!(done[0].tid, 9);
        write(&mut c, &query("DELETE FROM t"), 30);
        assert_eq!(names(&read(&mut c, &packet(1, OK), 40)), [("DELETE", "DELETE t", "", 30, 40)]);
        // Among the column definitions of a query answered with DEPRECATE_EOF: no EOF
        // follows them.
        let resumed = Resumed {
            command: KernelCommand {
                text: b"SELECT 1",
                answer: KernelAnswer::Results,
                error: None,
            },
            reading: Reading::Columns(1),
            start: 5,
            tid: 9,
            context: None,
        };
        let mut c = MysqlConnection::resume(Role::Client, &kernel(true, None), Some(resumed));
        let rest = [packet(2, b"\x03def"), packet(3, b"\x011"), packet(4, &[0xfe, 0, 0, 2, 0, 0, 0])].concat();
        assert_eq!(names(&read(&mut c, &rest, 20)), [("SELECT", "SELECT", "", 5, 20)]);
    }

    #[test]
    fn a_command_whose_header_the_kernel_held_is_framed_from_its_payload() {
        // A server read the header of a multi-statement query apart from its payload,
        // then handed the connection over at the payload.
        let text = b"SELECT 1; SELECT 2";
        let whole = packet(0, &[&[COM_QUERY][..], text].concat());
        let header = [whole[0], whole[1], whole[2], whole[3]];
        let mut c = MysqlConnection::resume(Role::Server, &kernel(false, Some(header)), None);
        c.feed_by(Direction::Ingress, &whole[4..], (whole.len() - 4) as u64, 10, 3);
        let answers = [result_set(1, false, SERVER_MORE_RESULTS_EXISTS), result_set(1, false, 2)].concat();
        let done = c.feed_by(Direction::Egress, &answers, answers.len() as u64, 20, 3);
        assert_eq!(done.iter().map(|x| x.method.as_str()).collect::<Vec<_>>(), ["SELECT", "SELECT"]);
    }

    #[test]
    fn after_lost_events_a_connection_past_its_handshake_frames_the_next_command() {
        let mut c = client(CLIENT_DEPRECATE_EOF);
        let mut after = Framing::Mysql(c.clone()).after_gap(Role::Client);
        let Framing::Mysql(fresh) = &mut after else {
            panic!("still MySQL");
        };
        write(fresh, &query("UPDATE t SET a = 1"), 10);
        assert_eq!(names(&read(fresh, &packet(1, OK), 20)), [("UPDATE", "UPDATE t", "", 10, 20)]);
        // Still in its handshake: it starts afresh, waiting for the greeting.
        c = MysqlConnection::new(Role::Client);
        assert!(c.after_gap().is_none());
    }
}
