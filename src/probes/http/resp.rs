//! RESP (Redis) framing in user space: the connections the kernel framer hands over
//! (pipelined commands, nested or RESP3 replies, commands of many elements), and every
//! Redis connection when the kernel does not frame.
//!
//! Each direction is one stream of RESP values. A command is an array of bulk strings
//! (or an inline line, as telnet sends); each top-level reply answers the oldest command
//! waiting, except RESP3 pushes and attributes, which answer nothing.

use std::collections::VecDeque;

use super::conn::{Direction, Exchange, NewRequest, Protocol, Role};
use crate::model::span::SpanContext;

/// Commands waiting for their replies on one connection, at most; older ones are
/// dropped and counted. A client may pipeline thousands in one write.
const MAX_PENDING: usize = 4096;
/// Aggregates nested in one another, at most; deeper values are not framed.
const MAX_DEPTH: usize = 32;
/// Bytes of a header line held: a type byte's integer, or an inline command's start.
const MAX_HEADER: usize = 64;
/// Bytes of a command name or an error's prefix kept.
const MAX_NAME: usize = 32;
/// Elements or bytes an aggregate or bulk may announce, at most, as Redis enforces.
const MAX_LENGTH: i64 = 512 << 20;

/// A value framed whole at the top level of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Value {
    /// When its first byte was read or written, and its last.
    start: u64,
    end: u64,
    /// A command's name as sent; a reply's error prefix (`ERR`, `WRONGTYPE`), if any.
    name: Option<Vec<u8>>,
    /// A push or attribute: no command's reply.
    unsolicited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The next byte is a value's type byte.
    Type,
    /// A line after type byte `kind`: the integer of a header, a simple value, or an
    /// inline command (kind 0). Its first bytes are held.
    Line { kind: u8, held: Vec<u8> },
    /// Bytes of a bulk string still to come, its CRLF included; the first `want` are
    /// kept when they name a command or an error.
    Bulk { left: u64, want: usize, kept: Vec<u8> },
}

/// One direction of a connection.
#[derive(Debug, Clone)]
struct Stream {
    commands: bool,
    state: State,
    /// Elements still to come in each aggregate open, innermost last.
    open: Vec<u64>,
    /// The top-level value being framed: when it started, its name, whether unsolicited.
    start: u64,
    name: Option<Vec<u8>>,
    unsolicited: bool,
    /// The next bulk string is a command's first element: its name.
    naming: bool,
    /// Framing was lost: nothing is framed until a value starts a read or write.
    lost: bool,
    losses: u64,
}

impl Stream {
    fn new(commands: bool) -> Stream {
        Stream {
            commands,
            state: State::Type,
            open: Vec::new(),
            start: 0,
            name: None,
            unsolicited: false,
            naming: false,
            lost: false,
            losses: 0,
        }
    }

    fn held(&self) -> usize {
        match &self.state {
            State::Line { held, .. } => held.len(),
            State::Bulk { kept, .. } => kept.len(),
            State::Type => 0,
        }
    }

    fn lose(&mut self) {
        self.state = State::Type;
        self.open.clear();
        self.naming = false;
        self.lost = true;
        self.losses += 1;
    }

    /// One read or write of `len` bytes, `data` of them captured, at `at`.
    fn feed(&mut self, data: &[u8], len: u64, at: u64, out: &mut Vec<Value>) {
        // A read or write that starts in the middle of nothing starts a value: framing
        // lost earlier resumes here.
        if self.lost {
            if self.state != State::Type || !self.open.is_empty() || data.is_empty() {
                return;
            }
            self.lost = false;
        }
        let mut i = 0;
        while i < data.len() {
            match &mut self.state {
                State::Type => {
                    if self.open.is_empty() {
                        self.start = at;
                        self.name = None;
                        self.unsolicited = false;
                    }
                    if !self.begin(data[i]) {
                        self.lose();
                        return;
                    }
                    // An inline command's first byte is its name's.
                    if !matches!(self.state, State::Line { kind: 0, .. }) {
                        i += 1;
                    }
                }
                State::Line { kind, held } => {
                    let rest = &data[i..];
                    let (line, ended) = match rest.iter().position(|&b| b == b'\n') {
                        Some(lf) => (&rest[..lf], true),
                        None => (rest, false),
                    };
                    let room = MAX_HEADER.saturating_sub(held.len());
                    held.extend_from_slice(&line[..line.len().min(room)]);
                    i += line.len() + usize::from(ended);
                    if ended {
                        let (kind, held) = (*kind, std::mem::take(held));
                        if !self.line_ended(kind, &held, at, out) {
                            self.lose();
                            return;
                        }
                    }
                }
                State::Bulk { left, want, kept } => {
                    let take = (data.len() - i).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let room = want.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[i..i + take.min(room)]);
                    *left -= take as u64;
                    i += take;
                    if *left == 0 {
                        let kept = std::mem::take(kept);
                        self.bulk_ended(kept, at, out);
                    }
                }
            }
        }
        // Bytes past the capture: only a bulk string's may be skipped unseen.
        let uncaptured = len.saturating_sub(data.len() as u64);
        if uncaptured == 0 {
            return;
        }
        match &mut self.state {
            State::Bulk { left, .. } if *left >= uncaptured => {
                *left -= uncaptured;
                if *left == 0 {
                    self.bulk_ended(Vec::new(), at, out);
                }
            }
            _ => self.lose(),
        }
    }

    /// A value starts with type byte `b`. Returns false when no RESP value starts so.
    fn begin(&mut self, b: u8) -> bool {
        let top = self.open.is_empty();
        self.state = match b {
            b'*' | b'$' | b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' | b'!' | b'='
            | b'%' | b'~' | b'>' | b'|' => State::Line {
                kind: b,
                held: Vec::new(),
            },
            // Telnet-style inline commands: a line of words.
            _ if top && self.commands && b.is_ascii_alphabetic() => State::Line {
                kind: 0,
                held: Vec::new(),
            },
            _ => return false,
        };
        if top && (b == b'>' || b == b'|') {
            self.unsolicited = true;
        }
        true
    }

    /// The line after type byte `kind` ended (its LF consumed). Returns false when it
    /// breaks the protocol.
    fn line_ended(&mut self, kind: u8, held: &[u8], at: u64, out: &mut Vec<Value>) -> bool {
        let line = held.strip_suffix(b"\r").unwrap_or(held);
        match kind {
            0 => {
                // An inline command: its first word names it.
                let name = line.split(|&b| b == b' ').next().unwrap_or_default();
                self.name = Some(name[..name.len().min(MAX_NAME)].to_vec());
                self.value_ended(at, out);
            }
            b'+' | b':' | b'_' | b',' | b'#' | b'(' => self.value_ended(at, out),
            b'-' => {
                if self.open.is_empty() {
                    let prefix = line.split(|&b| b == b' ').next().unwrap_or_default();
                    self.name = Some(prefix[..prefix.len().min(MAX_NAME)].to_vec());
                }
                self.value_ended(at, out);
            }
            _ => {
                let Some(n) = std::str::from_utf8(line)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                else {
                    return false;
                };
                if !(-1..=MAX_LENGTH).contains(&n) {
                    return false;
                }
                match kind {
                    b'$' | b'!' | b'=' => {
                        if n < 0 {
                            self.value_ended(at, out);
                        } else {
                            let naming = std::mem::take(&mut self.naming);
                            // A blob error's first bytes are its prefix.
                            let keep = naming || (kind == b'!' && self.open.is_empty());
                            self.state = State::Bulk {
                                left: n as u64 + 2,
                                want: if keep { (n as usize).min(MAX_NAME) } else { 0 },
                                kept: Vec::new(),
                            };
                            if kind == b'!' && self.open.is_empty() {
                                self.name = Some(Vec::new());
                            }
                            return true;
                        }
                    }
                    _ => {
                        // Aggregates: maps and attributes hold pairs.
                        let elements = if kind == b'%' || kind == b'|' { 2 * n } else { n };
                        if elements <= 0 {
                            self.value_ended(at, out);
                        } else {
                            if self.open.len() >= MAX_DEPTH {
                                return false;
                            }
                            self.naming = self.commands && self.open.is_empty() && kind == b'*';
                            self.open.push(elements as u64);
                            self.state = State::Type;
                            return true;
                        }
                    }
                }
            }
        }
        true
    }

    fn bulk_ended(&mut self, kept: Vec<u8>, at: u64, out: &mut Vec<Value>) {
        if self.commands && self.name.is_none() {
            self.name = Some(kept);
        } else if !self.commands && self.open.is_empty() && self.name.is_some() {
            // A blob error: its prefix is its first word.
            let prefix = kept.split(|&b| b == b' ').next().unwrap_or_default();
            self.name = Some(prefix.to_vec());
        }
        self.value_ended(at, out);
    }

    /// A value ended: the aggregates it completes end too, up to the top level.
    fn value_ended(&mut self, at: u64, out: &mut Vec<Value>) {
        self.state = State::Type;
        self.naming = false;
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
        out.push(Value {
            start: self.start,
            end: at,
            name: self.name.take(),
            unsolicited: self.unsolicited,
        });
    }
}

/// A command framed and waiting for its reply.
#[derive(Debug, Clone)]
struct Pending {
    name: String,
    start: u64,
    tid: u32,
    /// Its span's context, when spans are made.
    context: Option<SpanContext>,
    /// `context` was decided (it may stay `None`: not traced).
    decided: bool,
}

/// Pairs the commands and replies of one Redis connection into exchanges.
#[derive(Debug, Clone)]
pub struct RespConnection {
    role: Role,
    commands: Stream,
    replies: Stream,
    pending: VecDeque<Pending>,
    pending_dropped: u64,
    tid: u32,
}

impl RespConnection {
    pub fn new(role: Role) -> RespConnection {
        RespConnection {
            role,
            commands: Stream::new(true),
            replies: Stream::new(false),
            pending: VecDeque::new(),
            pending_dropped: 0,
            tid: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes held of lines and names not yet complete.
    pub fn buffered(&self) -> usize {
        self.commands.held() + self.replies.held()
    }

    /// Drops what `buffered` counts: framing resumes at a read or write that starts a
    /// value.
    pub fn abandon_partial(&mut self) {
        for stream in [&mut self.commands, &mut self.replies] {
            if stream.held() > 0 {
                stream.lose();
            }
        }
    }

    /// Takes over from the kernel framer: `name` was written (or read) whole at `start`
    /// by thread `tid` and awaits its reply. The kernel decided its span: `context`.
    pub fn resume(&mut self, name: String, start: u64, tid: u32, context: Option<SpanContext>) {
        self.pending.push_back(Pending {
            name,
            start,
            tid,
            context,
            decided: true,
        });
    }

    /// Commands framed since the last call, for their span contexts to be decided. A
    /// client's only: database spans are the client's.
    pub fn new_requests(&mut self) -> impl Iterator<Item = NewRequest<'_>> {
        let client = self.role == Role::Client;
        self.pending
            .iter_mut()
            .filter(move |p| client && !p.decided)
            .map(|p| {
                p.decided = true;
                NewRequest {
                    tid: p.tid,
                    at: p.start,
                    trace: None,
                    context: &mut p.context,
                }
            })
    }

    /// Commands lost since the last call: dropped unanswered past the pending limit,
    /// and times framing was lost to bytes not captured or not RESP.
    pub fn take_losses(&mut self) -> (u64, u64) {
        let lost = std::mem::take(&mut self.commands.losses)
            + std::mem::take(&mut self.replies.losses);
        (std::mem::take(&mut self.pending_dropped), lost)
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
        self.tid = tid;
        let mut values = Vec::new();
        if self.role.requests_flow(direction) {
            self.commands.feed(data, len, at, &mut values);
            for value in values {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.pending_dropped += 1;
                }
                let name = value.name.unwrap_or_default();
                self.pending.push_back(Pending {
                    name: String::from_utf8_lossy(&name).to_ascii_uppercase(),
                    start: value.start,
                    tid,
                    context: None,
                    decided: false,
                });
            }
            return Vec::new();
        }
        // Replies to commands whose bytes were lost pair with nothing sure.
        if self.commands.lost {
            self.pending.clear();
        }
        self.replies.feed(data, len, at, &mut values);
        values
            .into_iter()
            .filter(|value| !value.unsolicited)
            .filter_map(|value| {
                let command = self.pending.pop_front()?;
                let error = value
                    .name
                    .map(|prefix| String::from_utf8_lossy(&prefix).into_owned());
                Some(Exchange {
                    protocol: Protocol::Redis,
                    method: command.name,
                    path: String::new(),
                    status: u16::from(error.is_some()),
                    error_type: error.unwrap_or_default(),
                    request_body_bytes: 0,
                    response_body_bytes: 0,
                    start_ns: command.start,
                    end_ns: value.end,
                    context: command.context,
                    tid: command.tid,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> RespConnection {
        RespConnection::new(Role::Client)
    }

    fn write(c: &mut RespConnection, data: &[u8], at: u64) -> Vec<Exchange> {
        c.feed_by(Direction::Egress, data, data.len() as u64, at, 7)
    }

    fn read(c: &mut RespConnection, data: &[u8], at: u64) -> Vec<Exchange> {
        c.feed_by(Direction::Ingress, data, data.len() as u64, at, 7)
    }

    fn names(exchanges: &[Exchange]) -> Vec<(&str, &str)> {
        exchanges
            .iter()
            .map(|x| (x.method.as_str(), x.error_type.as_str()))
            .collect()
    }

    #[test]
    fn a_command_and_its_reply_make_one_timed_exchange() {
        let mut c = client();
        assert!(write(&mut c, b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n", 10).is_empty());
        let x = read(&mut c, b"$5\r\nhello\r\n", 25);
        assert_eq!(names(&x), [("GET", "")]);
        assert_eq!((x[0].start_ns, x[0].end_ns, x[0].status), (10, 25, 0));
        assert_eq!(x[0].protocol, Protocol::Redis);
    }

    #[test]
    fn pipelined_commands_are_counted_one_by_one_with_their_errors() {
        let mut c = client();
        let mut burst = Vec::new();
        for _ in 0..3 {
            burst.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        }
        burst.extend_from_slice(b"*2\r\n$4\r\nLPOP\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n");
        write(&mut c, &burst, 1);
        let replies = b"+OK\r\n+OK\r\n+OK\r\n-WRONGTYPE Operation against a key\r\n+PONG\r\n";
        let x = read(&mut c, replies, 2);
        assert_eq!(
            names(&x),
            [("SET", ""), ("SET", ""), ("SET", ""), ("LPOP", "WRONGTYPE"), ("PING", "")]
        );
        assert_eq!(x[3].status, 1);
    }

    #[test]
    fn replies_split_anywhere_and_nested_end_where_they_end() {
        let mut c = client();
        write(&mut c, b"*1\r\n$4\r\nEXEC\r\n*1\r\n$4\r\nPING\r\n", 1);
        let reply = b"*3\r\n*2\r\n:1\r\n$2\r\nab\r\n%1\r\n+k\r\n$-1\r\n_\r\n+PONG\r\n";
        let mut all = Vec::new();
        for (i, byte) in reply.iter().enumerate() {
            all.extend(read(&mut c, &[*byte], 10 + i as u64));
        }
        assert_eq!(names(&all), [("EXEC", ""), ("PING", "")]);
        assert_eq!(all[0].end_ns, 10 + 35);
        assert_eq!(all[1].end_ns, 10 + reply.len() as u64 - 1);
    }

    #[test]
    fn a_bulk_string_past_the_capture_is_skipped_unseen() {
        let mut c = client();
        let mut set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000\r\n".to_vec();
        set.extend(std::iter::repeat_n(b'x', 10000));
        set.extend_from_slice(b"\r\n");
        c.feed_by(Direction::Egress, &set[..4096], set.len() as u64, 1, 7);
        assert_eq!(names(&read(&mut c, b"+OK\r\n", 2)), [("SET", "")]);
        // A reply past the capture too.
        write(&mut c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 3);
        let mut reply = b"$10000\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'x', 10000));
        reply.extend_from_slice(b"\r\n");
        let x = c.feed_by(Direction::Ingress, &reply[..4096], reply.len() as u64, 4, 7);
        assert_eq!(names(&x), [("GET", "")]);
        assert_eq!(c.take_losses(), (0, 0));
    }

    #[test]
    fn pushes_and_attributes_answer_no_command() {
        let mut c = client();
        write(&mut c, b"*1\r\n$4\r\nPING\r\n", 1);
        let x = read(&mut c, b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n|1\r\n+a\r\n:1\r\n+PONG\r\n", 2);
        assert_eq!(names(&x), [("PING", "")]);
    }

    #[test]
    fn a_server_reads_commands_and_writes_replies_and_inline_commands_count() {
        let mut c = RespConnection::new(Role::Server);
        c.feed_by(Direction::Ingress, b"PING\r\n*1\r\n$4\r\nINFO\r\n", 20, 1, 3);
        let x = c.feed_by(Direction::Egress, b"+PONG\r\n$2\r\nok\r\n", 15, 5, 3);
        assert_eq!(names(&x), [("PING", ""), ("INFO", "")]);
    }

    #[test]
    fn junk_loses_framing_until_a_read_or_write_starts_a_value() {
        let mut c = client();
        write(&mut c, b"\x00\x01garbage", 1);
        assert_eq!(c.take_losses(), (0, 1));
        // Replies to what was lost are not paired with anything.
        assert!(read(&mut c, b"-ERR unknown\r\n", 2).is_empty());
        write(&mut c, b"*1\r\n$4\r\nPING\r\n", 3);
        assert_eq!(names(&read(&mut c, b"+PONG\r\n", 4)), [("PING", "")]);
        // Bad lengths and depths are junk too, whatever their size.
        for junk in [
            &b"*99999999999999999999\r\n"[..],
            b"$-5\r\n",
            b"*1\r\n$abc\r\n",
            &b"*1\r\n".repeat(40),
        ] {
            write(&mut c, junk, 5);
            assert_eq!(c.take_losses().1, 1, "{junk:?}");
            assert_eq!(c.buffered(), 0);
        }
    }

    #[test]
    fn a_never_ending_header_holds_a_bounded_prefix() {
        let mut c = client();
        for _ in 0..100 {
            write(&mut c, &[b'9'; 1000][..], 1);
        }
        // Each write starts with a byte no value starts with.
        assert_eq!(c.take_losses().1, 100);
        let mut c = client();
        write(&mut c, b"*", 1);
        for _ in 0..100 {
            write(&mut c, &[b'9'; 1000][..], 1);
        }
        assert!(c.buffered() <= MAX_HEADER);
    }

    #[test]
    fn unanswered_commands_are_capped_and_counted() {
        let mut c = client();
        let ping = b"*1\r\n$4\r\nPING\r\n".repeat(MAX_PENDING + 10);
        write(&mut c, &ping, 1);
        assert_eq!(c.take_losses(), (10, 0));
    }
}
