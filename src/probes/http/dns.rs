//! DNS lookups a process makes, over UDP (one message per datagram) and TCP (each message
//! after a 2-byte length): each query paired with the answer to it on the same socket, by
//! its id and question, or given up as a timeout.
//!
//! Only the header and the question are read. Names are lower-cased and written in the
//! presentation format, every byte outside printable ASCII (and `.` and `\` within a
//! label) as `\DDD`, so that no name can break the exposition or a log line.

use std::collections::HashMap;

use super::conn::{Direction, Exchange, NewRequest, Protocol};
use super::stream::{Header, Messages};
use crate::model::span::SpanContext;

/// Queries awaiting their answer on one socket, at most; more are refused and counted.
const MAX_PENDING: usize = 1024;
/// Bytes of the header: no message is shorter.
const HEADER: usize = 12;

/// Query types by name; others are `_OTHER`.
const TYPES: &[(u16, &str)] = &[
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (13, "HINFO"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (35, "NAPTR"),
    (43, "DS"),
    (46, "RRSIG"),
    (48, "DNSKEY"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (252, "AXFR"),
    (255, "ANY"),
    (257, "CAA"),
];

/// What stands for a type or response code outside the known sets.
pub const OTHER: &str = "_OTHER";
/// The `error_type` of a query left unanswered past the timeout.
pub const TIMEOUT: &str = "timeout";

/// The kernel's clock (CLOCK_MONOTONIC, what the events' times are read from) now.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// The closed-set name of a type name an exchange carries (which came from `type_name`).
pub fn type_name_of(name: &str) -> &'static str {
    TYPES
        .iter()
        .find(|(_, known)| *known == name)
        .map_or(OTHER, |(_, known)| known)
}

fn type_name(qtype: u16) -> &'static str {
    TYPES
        .iter()
        .find(|(code, _)| *code == qtype)
        .map_or(OTHER, |(_, name)| name)
}

/// The `error_type` of an answer's response code; None for NOERROR.
fn rcode_name(rcode: u8) -> Option<&'static str> {
    Some(match rcode {
        0 => return None,
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => OTHER,
    })
}

/// A message's header and question, as far as a lookup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    pub qtype: u16,
    /// The question's name in presentation format, lower-cased.
    pub name: String,
}

/// Reads a standard query or its answer: one question, opcode QUERY. None for anything
/// else, or for a question cut short or compressed.
pub fn parse(bytes: &[u8]) -> Option<Message> {
    let header = bytes.get(..HEADER)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let opcode = (flags >> 11) & 0xf;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if opcode != 0 || questions != 1 {
        return None;
    }
    let (name, at) = question_name(bytes, HEADER)?;
    let qtype = bytes.get(at..at + 2)?;
    Some(Message {
        id: u16::from_be_bytes([header[0], header[1]]),
        response: flags & 0x8000 != 0,
        rcode: (flags & 0xf) as u8,
        qtype: u16::from_be_bytes([qtype[0], qtype[1]]),
        name,
    })
}

/// The lookup the kernel paired (http.bpf.c), from the line of its record: the question's
/// type (big-endian) and name as sent. Its error is its response code's name, or `error`.
pub fn kernel_lookup(
    line: &[u8],
    rcode: u8,
    error: Option<&str>,
    start: u64,
    end: u64,
    tid: u32,
) -> Option<Exchange> {
    let qtype = u16::from_be_bytes([*line.first()?, *line.get(1)?]);
    let (name, _) = question_name(line, 2)?;
    let query = Query {
        qtype,
        name,
        start,
        tid,
        context: None,
        decided: true,
    };
    Some(lookup(query, end, error.or(rcode_name(rcode))))
}

/// The name of a question at `at` of `bytes`, in presentation format, lower-cased, and
/// where it ends.
fn question_name(bytes: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let length = usize::from(*bytes.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        // Labels are 63 bytes at most; a pointer (0xc0) has no place in a question.
        if length > 63 || at + length > bytes.len() || at > 256 {
            return None;
        }
        for &b in &bytes[at..at + length] {
            match b.to_ascii_lowercase() {
                b'.' | b'\\' => name.push_str(&format!("\\{b:03}")),
                c @ 0x21..=0x7e => name.push(char::from(c)),
                c => name.push_str(&format!("\\{c:03}")),
            }
        }
        name.push('.');
        at += length;
    }
    if name.is_empty() {
        name.push('.');
    } else {
        name.pop();
    }
    Some((name, at))
}

#[derive(Debug, Clone)]
struct Query {
    qtype: u16,
    name: String,
    start: u64,
    tid: u32,
    /// Its span's context, once decided (it may stay None: not traced).
    context: Option<SpanContext>,
    decided: bool,
}

/// The lookups one socket has in flight, by id.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    pending: HashMap<u16, Query>,
    /// Queries refused past MAX_PENDING, since last taken.
    refused: u64,
}

impl Lookups {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queries refused past the per-socket limit since the last call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// A message sent at `at`: a query starts a lookup. One sent again with the same id
    /// and question is a retry of the same lookup, which keeps its start.
    pub fn sent(&mut self, message: Message, at: u64, tid: u32) {
        if message.response {
            return;
        }
        if let Some(query) = self.pending.get(&message.id) {
            if query.qtype == message.qtype && query.name == message.name {
                return;
            }
        } else if self.pending.len() >= MAX_PENDING {
            self.refused += 1;
            return;
        }
        let query = Query {
            qtype: message.qtype,
            name: message.name,
            start: at,
            tid,
            context: None,
            decided: false,
        };
        self.pending.insert(message.id, query);
    }

    /// A message received at `at`: the answer to a query in flight ends its lookup. An
    /// answer to no query, or to another question, makes nothing.
    pub fn received(&mut self, message: Message, at: u64) -> Option<Exchange> {
        if !message.response {
            return None;
        }
        let query = self.pending.get(&message.id)?;
        if query.qtype != message.qtype || query.name != message.name {
            return None;
        }
        let query = self.pending.remove(&message.id)?;
        Some(lookup(query, at, rcode_name(message.rcode)))
    }

    /// Lookups started `timeout_ns` or longer before `now`: timeouts, ended then.
    pub fn expire(&mut self, now: u64, timeout_ns: u64) -> Vec<Exchange> {
        let late: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, q)| now.saturating_sub(q.start) >= timeout_ns)
            .map(|(id, _)| *id)
            .collect();
        late.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|q| {
                let end = q.start + timeout_ns;
                lookup(q, end, Some(TIMEOUT))
            })
            .collect()
    }
}

fn lookup(query: Query, end: u64, error: Option<&str>) -> Exchange {
    Exchange {
        protocol: Protocol::Dns,
        method: type_name(query.qtype).to_string(),
        path: query.name,
        status: u16::from(error.is_some()),
        error_type: error.unwrap_or_default().to_string(),
        request_body_bytes: 0,
        response_body_bytes: 0,
        start_ns: query.start,
        end_ns: end,
        context: query.context,
        tid: query.tid,
    }
}

/// DNS over TCP: each message after its 2-byte length.
#[derive(Debug, Clone, Default)]
struct LengthHeader;

impl Header for LengthHeader {
    fn size(&self) -> usize {
        2
    }

    fn payload_length(&mut self, header: &[u8]) -> Option<u64> {
        let length = usize::from(u16::from_be_bytes([header[0], header[1]]));
        (length >= HEADER).then_some(length as u64)
    }
}

type Stream = Messages<LengthHeader>;

/// The DNS a client socket carries: datagrams (UDP) or a stream (TCP), and the lookups
/// in flight on it.
#[derive(Debug, Clone)]
pub struct DnsSocket {
    /// TCP only: the queries' and the answers' streams.
    streams: Option<Box<(Stream, Stream)>>,
    lookups: Lookups,
}

impl DnsSocket {
    pub fn new(datagrams: bool) -> DnsSocket {
        DnsSocket {
            streams: (!datagrams)
                .then(|| Box::new((Stream::new(LengthHeader), Stream::new(LengthHeader)))),
            lookups: Lookups::default(),
        }
    }

    pub fn is_datagrams(&self) -> bool {
        self.streams.is_none()
    }

    /// Nothing in flight and no message half read: nothing worth keeping.
    pub fn is_idle(&self) -> bool {
        self.lookups.is_empty()
            && self
                .streams
                .as_ref()
                .is_none_or(|s| s.0.is_idle() && s.1.is_idle())
    }

    /// Queries refused past the per-socket limit, and times TCP framing was lost.
    pub fn take_losses(&mut self) -> (u64, u64) {
        let lost = self.streams.as_mut().map_or(0, |s| {
            std::mem::take(&mut s.0.losses) + std::mem::take(&mut s.1.losses)
        });
        (self.lookups.take_refused(), lost)
    }

    /// Feeds what the client wrote (queries) or read (answers): one message per datagram,
    /// or a piece of a TCP stream. Returns the lookups answered.
    pub fn feed(
        &mut self,
        direction: Direction,
        data: &[u8],
        len: u64,
        at: u64,
        tid: u32,
    ) -> Vec<Exchange> {
        let mut messages = Vec::new();
        let mut done = |_: &mut LengthHeader, kept: &mut Vec<u8>| messages.push(std::mem::take(kept));
        match (&mut self.streams, direction) {
            (None, _) => messages.push(data.to_vec()),
            (Some(streams), Direction::Egress) => streams.0.feed(data, len, &mut done),
            (Some(streams), Direction::Ingress) => streams.1.feed(data, len, &mut done),
        }
        let parsed = messages.iter().filter_map(|m| parse(m));
        if direction == Direction::Egress {
            for message in parsed {
                self.lookups.sent(message, at, tid);
            }
            return Vec::new();
        }
        parsed
            .filter_map(|message| self.lookups.received(message, at))
            .collect()
    }

    /// Lets `decide` choose the span context of each query sent since the last call.
    pub fn decide_spans(&mut self, mut decide: impl FnMut(NewRequest<'_>)) {
        for query in self.lookups.pending.values_mut().filter(|q| !q.decided) {
            query.decided = true;
            decide(NewRequest {
                tid: query.tid,
                at: query.start,
                trace: None,
                context: &mut query.context,
            });
        }
    }

    /// Lookups unanswered for `timeout_ns` by `now`: timeouts.
    pub fn expire(&mut self, now: u64, timeout_ns: u64) -> Vec<Exchange> {
        self.lookups.expire(now, timeout_ns)
    }

    /// The socket closed at `at`: what it still waited for is never answered, a timeout
    /// as the client saw it, ended at the close.
    pub fn close(&mut self, at: u64) -> Vec<Exchange> {
        self.lookups
            .pending
            .drain()
            .map(|(_, q)| {
                let end = at.max(q.start);
                lookup(q, end, Some(TIMEOUT))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u16, response: bool, rcode: u8, name: &[&[u8]], qtype: u16) -> Vec<u8> {
        let flags: u16 = if response { 0x8180 | u16::from(rcode) } else { 0x0100 };
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, u8::from(response), 0, 0, 0, 0]);
        for label in name {
            m.push(label.len() as u8);
            m.extend_from_slice(label);
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m
    }

    #[test]
    fn a_query_and_its_answer_make_one_lookup_with_its_response_code() {
        let mut l = Lookups::default();
        let query = parse(&message(7, false, 0, &[b"Www", b"example", b"test"], 1)).unwrap();
        assert_eq!(query.name, "www.example.test");
        l.sent(query, 10, 3);
        // A retry keeps the first start.
        l.sent(parse(&message(7, false, 0, &[b"www", b"example", b"test"], 1)).unwrap(), 15, 3);
        // An answer to another question, or to no query, makes nothing.
        assert!(l.received(parse(&message(7, true, 0, &[b"other"], 1)).unwrap(), 20).is_none());
        assert!(l.received(parse(&message(8, true, 0, &[b"www"], 1)).unwrap(), 20).is_none());
        let answer = parse(&message(7, true, 3, &[b"www", b"example", b"test"], 1)).unwrap();
        let done = l.received(answer, 30).unwrap();
        assert_eq!((done.method.as_str(), done.error_type.as_str()), ("A", "NXDOMAIN"));
        assert_eq!((done.start_ns, done.end_ns, done.path.as_str()), (10, 30, "www.example.test"));
        assert!(l.is_empty());
    }

    #[test]
    fn a_lookup_the_kernel_paired_is_read_from_its_line() {
        // The question's type, then its name as sent, NUL-padded as the kernel keeps it.
        let mut line = vec![0, 28, 3, b'W', b'w', b'w', 4, b't', b'.', b's', b't', 0];
        line.resize(128, 0);
        let done = kernel_lookup(&line, 3, None, 10, 30, 4).unwrap();
        assert_eq!((done.method.as_str(), done.path.as_str()), ("AAAA", "www.t\\046st"));
        assert_eq!((done.error_type.as_str(), done.status), ("NXDOMAIN", 1));
        assert_eq!((done.start_ns, done.end_ns, done.tid), (10, 30, 4));
        let ok = kernel_lookup(&line, 0, None, 10, 30, 4).unwrap();
        assert_eq!((ok.error_type.as_str(), ok.status), ("", 0));
        let late = kernel_lookup(&line, 0, Some(TIMEOUT), 10, 40, 4).unwrap();
        assert_eq!(late.error_type, "timeout");
        // A label running past the line is no lookup.
        assert!(kernel_lookup(&[0, 1, 60, b'a'], 0, None, 0, 0, 0).is_none());
    }

    #[test]
    fn an_unanswered_query_times_out_at_its_start_plus_the_timeout() {
        let mut l = Lookups::default();
        l.sent(parse(&message(1, false, 0, &[b"slow"], 28)).unwrap(), 100, 3);
        assert!(l.expire(150, 100).is_empty());
        let done = l.expire(200, 100);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].method.as_str(), done[0].error_type.as_str()), ("AAAA", TIMEOUT));
        assert_eq!(done[0].end_ns, 200);
    }

    #[test]
    fn binary_labels_are_escaped_and_junk_is_no_message() {
        let label = [0u8, b'"', b'\n', b'.', b'\\', 0xff, b'{'];
        let m = parse(&message(1, false, 0, &[&label, b"x"], 16)).unwrap();
        assert_eq!(m.name, "\\000\"\\010\\046\\092\\255{.x");
        // 255 bytes on the wire: four labels of 63.
        let long = [[0xabu8; 63]; 4];
        let labels: Vec<&[u8]> = long.iter().map(|l| &l[..]).collect();
        let m = parse(&message(1, false, 0, &labels, 1)).unwrap();
        assert_eq!(m.name.len(), 4 * 63 * 4 + 3);
        assert!(m.name.bytes().all(|b| b.is_ascii_graphic()));
        assert!(parse(b"\x00\x01\x01\x00\x00\x01").is_none());
        assert!(parse(&message(1, false, 0, &[b"x"], 1)[..14]).is_none());
        let mut pointer = message(1, false, 0, &[], 1);
        pointer[12] = 0xc0;
        assert!(parse(&pointer).is_none());
        assert_eq!(type_name(4242), OTHER);
    }

    #[test]
    fn tcp_messages_after_their_lengths_pair_like_datagrams() {
        let mut c = DnsSocket::new(false);
        let framed = |m: Vec<u8>| [(m.len() as u16).to_be_bytes().to_vec(), m].concat();
        let queries = [
            framed(message(1, false, 0, &[b"a"], 1)),
            framed(message(2, false, 0, &[b"b"], 1)),
            framed(message(3, false, 0, &[b"c"], 1)),
        ]
        .concat();
        c.feed(Direction::Egress, &queries, queries.len() as u64, 5, 3);
        let answers = [
            framed(message(2, true, 0, &[b"b"], 1)),
            framed(message(1, true, 2, &[b"a"], 1)),
        ]
        .concat();
        let (head, tail) = answers.split_at(7);
        assert!(c.feed(Direction::Ingress, head, head.len() as u64, 6, 3).is_empty());
        assert!(!c.is_idle());
        let done = c.feed(Direction::Ingress, tail, tail.len() as u64, 7, 3);
        let got: Vec<(&str, &str)> =
            done.iter().map(|x| (x.path.as_str(), x.error_type.as_str())).collect();
        assert_eq!(got, [("b", ""), ("a", "SERVFAIL")]);
        // The third is never answered: its connection closes.
        let closed = c.close(9);
        assert_eq!((closed[0].path.as_str(), closed[0].error_type.as_str()), ("c", TIMEOUT));
        assert!(c.is_idle());
        c.feed(Direction::Egress, b"\x00\x03abc", 5, 8, 3);
        assert_eq!(c.take_losses(), (0, 1));
    }

    #[test]
    fn queries_in_flight_are_capped_and_counted() {
        let mut l = Lookups::default();
        for id in 0..MAX_PENDING as u16 + 4 {
            l.sent(parse(&message(id, false, 0, &[b"x"], 1)).unwrap(), 1, 3);
        }
        assert_eq!(l.take_refused(), 4);
    }
}
