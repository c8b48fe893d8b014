//! HTTP/1.0 and HTTP/1.1 framing over the bytes the kernel saw on one connection.
//!
//! The kernel hands over, per read or write, the number of bytes moved and a captured
//! prefix of them (the whole buffer when it fits the capture size). Framing counts the
//! full lengths, so Content-Length bodies are measured exactly even when their bytes
//! were not captured; heads and chunk-size lines must be captured to be parsed. When a
//! stream cannot be framed (garbage, a truncated head, lost chunk boundaries) it stays
//! out of sync until a later read or write starts with a new message, and nothing is
//! counted as a request that was not parsed as one.

use crate::probes::kit::spans::{parse_tracestate, TraceParent};
use std::collections::VecDeque;

/// Longest request or response head accepted (request line plus headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest method (PSC_HTTP_MAX_METHOD in http.bpf.c), and longest path kept (longer
/// paths are cut, never exported whole).
const MAX_METHOD_BYTES: usize = 16;
pub const MAX_PATH_BYTES: usize = 512;

/// A character of an RFC 9110 token, which is what a method is: `PURGE`, `get` and
/// `M-SEARCH` start requests too (reported as `_OTHER`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_method(bytes: &[u8]) -> bool {
    (1..=MAX_METHOD_BYTES).contains(&bytes.len()) && bytes.iter().all(|b| is_tchar(*b))
}

/// Whether bytes start like a request line: a method and a space.
pub fn looks_like_request(data: &[u8]) -> bool {
    let window = &data[..data.len().min(MAX_METHOD_BYTES + 1)];
    memchr::memchr(b' ', window).is_some_and(|space| is_method(&data[..space]))
}

/// Whether bytes start like a status line.
pub fn looks_like_response(data: &[u8]) -> bool {
    data.starts_with(b"HTTP/1.")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path of the request target, without query or fragment; an absolute-form
    /// target (`http://host/path`, as proxies send) is reduced to its path.
    pub path: String,
    pub body: BodyLength,
    /// The caller's W3C trace context, when it sent a valid one.
    pub trace: Option<TraceHeaders>,
    /// A `traceparent` header came, valid or not.
    pub carries_traceparent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    pub parent: TraceParent,
    /// Validated `tracestate`, or empty.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub body: BodyLength,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0-style response without a length).
    UntilClose,
}

/// What a request's method says of its response's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Body,
    /// HEAD: no body, whatever the headers say.
    NoBody,
    /// CONNECT: a 2xx opens a tunnel; what follows is not HTTP.
    Tunnel,
}

impl Expect {
    pub fn of(method: &str) -> Expect {
        match method {
            "HEAD" => Expect::NoBody,
            "CONNECT" => Expect::Tunnel,
            _ => Expect::Body,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// What framing one direction of a connection produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    RequestHead {
        head: RequestHead,
        at: u64,
    },
    ResponseHead {
        head: ResponseHead,
        at: u64,
    },
    /// The current message ended: its body size and the time of the read/write that
    /// completed it.
    End {
        body_bytes: u64,
        at: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    Head(Vec<u8>, u64),
    Body {
        remaining: u64,
        seen: u64,
    },
    Chunked {
        chunk: ChunkState,
        seen: u64,
        line: Vec<u8>,
    },
    UntilClose {
        seen: u64,
    },
    /// A message whose framing went by uncaptured (chunks beyond what the probe copies
    /// of one write, a head longer than it or than MAX_HEAD_BYTES): it ends where the
    /// other direction's turn begins, or at close, with its last byte at `last`. Its
    /// body is counted by length from there when `counts_body`; a cut head's body
    /// cannot be told from the head's rest, and counts 0.
    UntilTurn {
        seen: u64,
        last: u64,
        counts_body: bool,
    },
    /// Lost: wait for a read/write that starts a new message.
    OutOfSync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left (plus the CRLF after it).
    Data(u64),
    /// The CRLF after chunk data: bytes of it still to skip.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty line.
    Trailer,
}

/// Frames one direction (all requests, or all responses) of a connection.
#[derive(Debug, Clone)]
pub struct Framer {
    kind: Kind,
    state: State,
    /// For responses: what the requests still awaiting a response expect, oldest first.
    pub head_requests: VecDeque<Expect>,
    /// Times framing was lost to bytes the probe did not capture, since last taken.
    uncaptured_losses: u64,
}

impl Framer {
    pub fn new(kind: Kind) -> Framer {
        Framer {
            kind,
            state: State::Idle,
            head_requests: VecDeque::new(),
            uncaptured_losses: 0,
        }
    }

    /// How often framing was lost since the last call because bytes went uncaptured:
    /// messages among them went uncounted.
    pub fn take_uncaptured_losses(&mut self) -> u64 {
        std::mem::take(&mut self.uncaptured_losses)
    }

    /// Bytes held for a head or chunk-size line not yet complete.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Head(buf, _) => buf.capacity(),
            State::Chunked { line, .. } => line.capacity(),
            _ => 0,
        }
    }

    /// Gives up the partial head or line held (when the agent's budget for them is
    /// spent): framing resumes at the next message.
    pub fn abandon_partial(&mut self) {
        if self.buffered() > 0 {
            self.state = State::OutOfSync;
        }
    }

    /// Feeds one read or write: `len` bytes moved, of which `data` is the captured prefix,
    /// completed at time `at`.
    pub fn feed(&mut self, data: &[u8], len: u64, at: u64) -> Vec<Frame> {
        let mut frames = Vec::new();
        let captured = data.len().min(len as usize);
        let data = &data[..captured];
        let uncaptured = len - captured as u64;
        let starts_message = match self.kind {
            Kind::Request => looks_like_request(data),
            Kind::Response => looks_like_response(data),
        };
        if self.state == State::OutOfSync && starts_message {
            self.state = State::Idle;
        }
        let mut pos = 0;
        while pos < data.len() {
            let consumed = self.step(&data[pos..], at, &mut frames);
            if consumed == 0 {
                break;
            }
            pos += consumed;
        }
        if uncaptured > 0 {
            self.skip_uncaptured(uncaptured, at, &mut frames);
        }
        frames
    }

    /// The connection closed: a body running until close ends here.
    pub fn close(&mut self, at: u64) -> Option<Frame> {
        let frame = match self.state {
            State::UntilClose { seen } => Some(Frame::End {
                body_bytes: seen,
                at,
            }),
            State::UntilTurn { .. } => self.end_turn(),
            _ => None,
        };
        self.state = State::Idle;
        frame
    }

    /// The other direction began its turn (a response after this request, a request
    /// after this response): a message framed by turns ends here, at its last byte.
    pub fn end_turn(&mut self) -> Option<Frame> {
        let State::UntilTurn {
            seen,
            last,
            counts_body,
        } = self.state
        else {
            return None;
        };
        self.state = State::Idle;
        Some(Frame::End {
            body_bytes: if counts_body { seen } else { 0 },
            at: last,
        })
    }

    /// A request head too long to frame (cut by the capture, or over MAX_HEAD_BYTES):
    /// counted from its request line, it runs until the response begins.
    fn cut_head(&mut self, head: &[u8], started: u64, at: u64, frames: &mut Vec<Frame>) {
        self.state = match parse_cut_request_head(head).filter(|_| self.kind == Kind::Request) {
            Some(head) => {
                frames.push(Frame::RequestHead { head, at: started });
                State::UntilTurn {
                    seen: 0,
                    last: at,
                    counts_body: false,
                }
            }
            None => State::OutOfSync,
        };
    }

    /// Bytes moved that were not captured: they can only be counted as body bytes.
    fn skip_uncaptured(&mut self, mut n: u64, at: u64, frames: &mut Vec<Frame>) {
        match &mut self.state {
            State::Body { remaining, seen } => {
                let take = n.min(*remaining);
                *remaining -= take;
                *seen += take;
                n -= take;
                if *remaining == 0 {
                    frames.push(Frame::End {
                        body_bytes: *seen,
                        at,
                    });
                    self.state = State::Idle;
                }
                if n > 0 {
                    // A pipelined message we could not see.
                    self.state = State::OutOfSync;
                    self.uncaptured_losses += 1;
                }
            }
            State::UntilClose { seen } => *seen += n,
            // Inside chunk data, bytes that stay within the chunk are just counted.
            State::Chunked {
                chunk: ChunkState::Data(left),
                seen,
                ..
            } if n <= *left => {
                *seen += n;
                *left -= n;
                if *left == 0 {
                    if let State::Chunked { chunk, .. } = &mut self.state {
                        *chunk = ChunkState::DataEnd(2);
                    }
                }
            }
            // Chunk framing went unseen: the exchange is still counted, by turns, and
            // the rest of its body by length, chunk framing included.
            State::Chunked { seen, .. } if self.kind == Kind::Response => {
                let seen = *seen + n;
                self.state = State::UntilTurn {
                    seen,
                    last: at,
                    counts_body: true,
                };
            }
            State::Head(buf, started) if self.kind == Kind::Request => {
                let (head, started) = (std::mem::take(buf), *started);
                self.cut_head(&head, started, at, frames);
            }
            State::UntilTurn { seen, last, .. } => {
                *seen += n;
                *last = at;
            }
            State::OutOfSync => {}
            // A head, chunk framing or an idle stream went unseen: framing is lost.
            _ => {
                self.state = State::OutOfSync;
                self.uncaptured_losses += 1;
            }
        }
    }

    /// Consumes a prefix of `data`; returns how much.
    fn step(&mut self, data: &[u8], at: u64, frames: &mut Vec<Frame>) -> usize {
        match &mut self.state {
            State::OutOfSync => data.len(),
            State::Idle => {
                let starts = match self.kind {
                    Kind::Request => looks_like_request(data),
                    Kind::Response => looks_like_response(data),
                };
                // Blank lines between messages are tolerated (RFC 9112 section 2.2).
                if data.starts_with(b"\r\n") {
                    return 2;
                }
                if !starts && !could_start(self.kind, data) {
                    self.state = State::OutOfSync;
                    return data.len();
                }
                // The common case: the whole head in this read or write, parsed in place.
                if let Some(end) = find_head_end(data, 0) {
                    self.complete_head(&data[..end], at, at, frames);
                    return end;
                }
                if data.len() > MAX_HEAD_BYTES {
                    self.cut_head(data, at, at, frames);
                } else {
                    self.state = State::Head(data.to_vec(), at);
                }
                data.len()
            }
            State::Head(buf, started) => {
                let started = *started;
                let before = buf.len();
                buf.extend_from_slice(data);
                // Only the new bytes (and the three before them) can complete the head.
                let Some(end) = find_head_end(buf, before.saturating_sub(3)) else {
                    if buf.len() > MAX_HEAD_BYTES {
                        let head = std::mem::take(buf);
                        self.cut_head(&head, started, at, frames);
                    }
                    return data.len();
                };
                let mut head = std::mem::take(buf);
                head.truncate(end);
                self.complete_head(&head, started, at, frames);
                end - before
            }
            State::Body { remaining, seen } => {
                let take = (data.len() as u64).min(*remaining);
                *remaining -= take;
                *seen += take;
                if *remaining == 0 {
                    frames.push(Frame::End {
                        body_bytes: *seen,
                        at,
                    });
                    self.state = State::Idle;
                }
                take as usize
            }
            State::UntilClose { seen } => {
                *seen += data.len() as u64;
                data.len()
            }
            State::UntilTurn { seen, last, .. } => {
                *seen += data.len() as u64;
                *last = at;
                data.len()
            }
            State::Chunked { chunk, seen, line } => match *chunk {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > 1024 {
                            self.state = State::OutOfSync;
                        }
                        return data.len();
                    };
                    line.extend_from_slice(&data[..nl]);
                    let text = std::mem::take(line);
                    let text = text.strip_suffix(b"\r").unwrap_or(&text);
                    if *chunk == ChunkState::Trailer {
                        if text.is_empty() {
                            frames.push(Frame::End {
                                body_bytes: *seen,
                                at,
                            });
                            self.state = State::Idle;
                        }
                        return nl + 1;
                    }
                    match parse_chunk_size(text) {
                        Some(0) => *chunk = ChunkState::Trailer,
                        Some(size) => *chunk = ChunkState::Data(size),
                        None => self.state = State::OutOfSync,
                    }
                    nl + 1
                }
                ChunkState::Data(left) => {
                    let take = (data.len() as u64).min(left);
                    *seen += take;
                    *chunk = if take == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - take)
                    };
                    take as usize
                }
                ChunkState::DataEnd(left) => {
                    let mut used = 0;
                    let mut left = left;
                    while left > 0 && used < data.len() {
                        let expected = if left == 2 { b'\r' } else { b'\n' };
                        if data[used] != expected {
                            self.state = State::OutOfSync;
                            return data.len();
                        }
                        used += 1;
                        left -= 1;
                    }
                    *chunk = if left == 0 {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left)
                    };
                    used
                }
            },
        }
    }

    /// A whole head was read: `started` is when its first byte was, `at` when its last.
    fn complete_head(&mut self, head: &[u8], started: u64, at: u64, frames: &mut Vec<Frame>) {
        let parsed = match self.kind {
            Kind::Request => parse_request_head(head)
                .map(|req| (req.body, Frame::RequestHead { head: req, at: started })),
            Kind::Response => parse_response_head(head).map(|mut resp| {
                resp.body = self.response_body(&resp);
                (resp.body, Frame::ResponseHead { head: resp, at: started })
            }),
        };
        match parsed {
            Some((body, frame)) => {
                frames.push(frame);
                self.begin_body(body, at, frames);
            }
            None => self.state = State::OutOfSync,
        }
    }

    /// The body that follows a response head: none for an interim response, the answer
    /// to a HEAD, a switch of protocols or a tunnel, or a 204 or 304; else what its
    /// headers say. A final response answers the oldest request still waiting.
    fn response_body(&mut self, resp: &ResponseHead) -> BodyLength {
        let interim = (100..200).contains(&resp.status) && resp.status != 101;
        if interim {
            return BodyLength::None;
        }
        let expect = self.head_requests.pop_front().unwrap_or(Expect::Body);
        let tunnel = expect == Expect::Tunnel && (200..300).contains(&resp.status);
        // 101 switches protocols and a CONNECT 2xx opens a tunnel: the exchange ends
        // with the head, and what follows is not HTTP.
        if expect == Expect::NoBody || tunnel || matches!(resp.status, 101 | 204 | 304) {
            BodyLength::None
        } else {
            resp.body
        }
    }

    fn begin_body(&mut self, body: BodyLength, at: u64, frames: &mut Vec<Frame>) {
        self.state = match body {
            BodyLength::None | BodyLength::Length(0) => {
                frames.push(Frame::End { body_bytes: 0, at });
                State::Idle
            }
            BodyLength::Length(n) => State::Body {
                remaining: n,
                seen: 0,
            },
            BodyLength::Chunked => State::Chunked {
                chunk: ChunkState::Size,
                seen: 0,
                line: Vec::new(),
            },
            BodyLength::UntilClose => State::UntilClose { seen: 0 },
        };
    }
}

/// A prefix too short to tell whether a message starts (e.g. "GE" of a split "GET").
fn could_start(kind: Kind, data: &[u8]) -> bool {
    match kind {
        // A method cut short, even to its first byte.
        Kind::Request => is_method(data),
        Kind::Response => data.len() < 7 && b"HTTP/1.".starts_with(data),
    }
}

/// The end of a head (just past its blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    BLANK_LINE.find(buf.get(from..)?).map(|i| from + i + 4)
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|b| *b == b';').next()?;
    let text = std::str::from_utf8(digits).ok()?.trim();
    if text.is_empty() || text.len() > 15 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// The header fields of a head, past its start line: (name, trimmed value).
fn header_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = memchr::memchr(b'\n', head).map_or(&head[head.len()..], |nl| &head[nl + 1..]);
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(nl) => (&rest[..nl], &rest[nl + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = memchr::memchr(b':', line) {
            return Some((&line[..colon], trim(&line[colon + 1..])));
        }
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// `traceparent` and `tracestate` headers as found: a repeated `traceparent` makes it
/// invalid, repeated `tracestate` headers are one list.
#[derive(Default)]
struct TraceHeaderValues<'a> {
    parents: usize,
    parent: &'a [u8],
    state: Vec<&'a [u8]>,
}

impl TraceHeaderValues<'_> {
    fn parse(&self) -> Option<TraceHeaders> {
        if self.parents != 1 {
            return None;
        }
        let parent = TraceParent::parse(self.parent)?;
        // A bad tracestate is dropped; the traceparent stands on its own.
        let state = parse_tracestate(&self.state.join(&b","[..])).unwrap_or_default();
        Some(TraceHeaders { parent, state })
    }
}

/// Content-Length / Transfer-Encoding framing of a message's headers, and, for requests,
/// their trace context headers (in the same pass).
fn body_framing<'a>(
    head: &'a [u8],
    mut trace: Option<&mut TraceHeaderValues<'a>>,
) -> Option<Option<BodyLength>> {
    let mut length = None;
    for (name, value) in header_lines(head) {
        if let Some(trace) = trace.as_deref_mut() {
            if name.eq_ignore_ascii_case(b"traceparent") {
                trace.parents += 1;
                trace.parent = value;
                continue;
            }
            if name.eq_ignore_ascii_case(b"tracestate") {
                if trace.state.len() < 32 {
                    trace.state.push(value);
                }
                continue;
            }
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let value = String::from_utf8_lossy(value).to_ascii_lowercase();
            if value.rsplit(',').next().map(str::trim) == Some("chunked") {
                return Some(Some(BodyLength::Chunked));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None; // conflicting lengths: refuse to frame
            }
            length = Some(n);
        }
    }
    Some(length.map(BodyLength::Length))
}

pub fn parse_request_head(head: &[u8]) -> Option<RequestHead> {
    let line_end = memchr::memchr(b'\n', head)?;
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !is_method(method) {
        return None;
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return None;
    }
    let path = request_path(target)?;
    let mut trace = TraceHeaderValues::default();
    let body = body_framing(head, Some(&mut trace))?.unwrap_or(BodyLength::None);
    Some(RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        path,
        body,
        trace: if trace.parents == 0 {
            None
        } else {
            trace.parse()
        },
        carries_traceparent: trace.parents > 0,
    })
}

/// The method and path of a request line the kernel framed: method, space, target.
pub fn parse_framed_line(line: &[u8]) -> Option<(String, String)> {
    let space = memchr::memchr(b' ', line)?;
    let (method, target) = (&line[..space], &line[space + 1..]);
    if !is_method(method) || target.contains(&b' ') {
        return None;
    }
    Some((
        String::from_utf8_lossy(method).into_owned(),
        request_path(target)?,
    ))
}

/// The method and path of a request head known only by its first bytes: the request
/// line may be cut anywhere after the method's space, even inside its version.
fn parse_cut_request_head(head: &[u8]) -> Option<RequestHead> {
    let line_end = memchr::memchr(b'\n', head);
    let line = &head[..line_end.unwrap_or(head.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (method, target) = (parts.next()?, parts.next()?);
    let version_fits = |version: &[u8]| match line_end {
        Some(_) => version == b"HTTP/1.1" || version == b"HTTP/1.0",
        None => b"HTTP/1.1".starts_with(version) || b"HTTP/1.0".starts_with(version),
    };
    if !is_method(method) || !parts.next().map_or(line_end.is_none(), version_fits) {
        return None;
    }
    // Only targets with a path, or a tunnel's authority: any text with a space in it
    // would pass for a request otherwise.
    let absolute = |scheme: &[u8]| target.starts_with(scheme) || scheme.starts_with(target);
    if !(target.starts_with(b"/") || absolute(b"http://") || absolute(b"https://"))
        && method != b"CONNECT"
    {
        return None;
    }
    Some(RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        path: request_path(target)?,
        body: BodyLength::None,
        trace: None,
        carries_traceparent: false,
    })
}

/// The path of a request target: origin-form as is, absolute-form reduced to its path,
/// query and fragment dropped, bounded in length.
fn request_path(target: &[u8]) -> Option<String> {
    if target.is_empty() {
        return None;
    }
    let mut path = target;
    if let Some(rest) = target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
    {
        path = match rest.iter().position(|b| *b == b'/') {
            Some(slash) => &rest[slash..],
            None => b"/",
        };
    } else if target == b"*" {
        return Some("*".into());
    } else if !target.starts_with(b"/") {
        // authority-form (CONNECT host:port): no path to report
        return Some(String::new());
    }
    let end = path
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(path.len());
    let path = &path[..end.min(MAX_PATH_BYTES)];
    if path.iter().any(|b| b.is_ascii_control()) {
        return None;
    }
    Some(String::from_utf8_lossy(path).into_owned())
}

pub fn parse_response_head(head: &[u8]) -> Option<ResponseHead> {
    let line_end = memchr::memchr(b'\n', head)?;
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    if !matches!(minor, b'0' | b'1') || rest.first() != Some(&b' ') {
        return None;
    }
    let code = rest.get(1..4)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(4).is_some_and(|b| *b != b' ') {
        return None;
    }
    let status: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    if !(100..600).contains(&status) {
        return None;
    }
    let body = body_framing(head, None)?.unwrap_or(BodyLength::UntilClose);
    Some(ResponseHead { status, body })
}

#[cfg(test)]
mod tests;
