use super::super::conn::{Connection, Direction, Exchange, Protocol, Role};
use super::*;

fn server() -> Connection {
    Connection::new(Role::Server)
}

/// Feeds a whole buffer as one syscall, fully captured.
fn read(c: &mut Connection, data: &[u8], at: u64) -> Vec<Exchange> {
    c.feed(Direction::Ingress, data, data.len() as u64, at)
}

fn write(c: &mut Connection, data: &[u8], at: u64) -> Vec<Exchange> {
    c.feed(Direction::Egress, data, data.len() as u64, at)
}

/// A new server connection that reads `requests` at 1 and writes `responses` at 2; with
/// the exchanges the responses complete.
fn serve(requests: &[u8], responses: &[u8]) -> (Connection, Vec<Exchange>) {
    let mut c = server();
    read(&mut c, requests, 1);
    let done = write(&mut c, responses, 2);
    (c, done)
}

/// Each exchange as "method path status request-body-bytes/response-body-bytes".
fn summary(done: &[Exchange]) -> Vec<String> {
    done.iter()
        .map(|e| {
            let (request, response) = (e.request_body_bytes, e.response_body_bytes);
            format!("{} {} {} {request}/{response}", e.method, e.path, e.status)
        })
        .collect()
}

#[test]
fn keep_alive_requests_pair_with_their_responses() {
    let mut c = server();
    assert!(read(&mut c, b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", 10).is_empty());
    let done = write(
        &mut c,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        25,
    );
    assert_eq!(
        done,
        vec![Exchange {
            protocol: Protocol::Http,
            method: "GET".into(),
            path: "/a".into(),
            status: 200,
            error_type: String::new(),
            request_body_bytes: 0,
            response_body_bytes: 5,
            start_ns: 10,
            end_ns: 25,
            context: None,
            tid: 0,
        }]
    );
    read(&mut c, b"GET /b HTTP/1.1\r\n\r\n", 30);
    let done = write(
        &mut c,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        31,
    );
    assert_eq!(done[0].status, 404);
    assert_eq!(done[0].path, "/b");
}

/// Requests pipelined in one read and their responses in one write: the exchanges pair
/// in order, and a response to a HEAD, or a 204 or 304, has no body whatever its
/// Content-Length says.
#[test]
fn pipelined_requests_get_responses_in_order_with_the_bodies_they_may_have() {
    let cases: [(&[u8], &[u8], [&str; 3]); 2] = [
        (
            b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcHEAD /3 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            ["GET /1 200 0/2", "POST /2 201 3/0", "HEAD /3 200 0/0"],
        ),
        (
            b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            ["HEAD /h 200 0/0", "GET /n 204 0/0", "GET /m 304 0/0"],
        ),
    ];
    for (requests, responses, want) in cases {
        assert_eq!(summary(&serve(requests, responses).1), want);
    }
}

#[test]
fn requests_split_over_reads_even_inside_the_method() {
    let mut c = server();
    read(&mut c, b"GE", 1);
    read(&mut c, b"T /split HTTP/1.1\r\nHost:", 2);
    read(&mut c, b" h\r\n\r\n", 3);
    let done = write(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].path, "/split");
    assert_eq!(done[0].start_ns, 1, "latency starts at the first byte read");
}

/// Any RFC 9110 token is a method, and a client may write it a byte at a time.
#[test]
fn methods_outside_the_standard_set_or_in_lower_case_written_a_byte_at_a_time() {
    for method in ["PURGE", "PROPFIND", "get", "M-SEARCH", "GET"] {
        let mut c = server();
        let request = format!("{method} /m HTTP/1.1\r\nHost: h\r\n\r\n");
        for (at, byte) in request.bytes().enumerate() {
            assert!(read(&mut c, &[byte], at as u64 + 1).is_empty());
        }
        let done = write(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 100);
        assert_eq!(summary(&done), [format!("{method} /m 200 0/0")]);
        assert_eq!(done[0].start_ns, 1, "latency starts at the first byte read");
    }
    // Longer than any method, or not a token: not a request.
    for request in [&b"ABCDEFGHIJKLMNOPQ /x HTTP/1.1\r\n\r\n"[..], b"GE(T /x HTTP/1.1\r\n\r\n"] {
        let (_, done) = serve(request, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(done.is_empty(), "{}", String::from_utf8_lossy(request));
    }
}

#[test]
fn uncaptured_body_bytes_are_counted_by_length() {
    let mut c = server();
    let head = b"POST /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    // The kernel captured only the head and 10 bytes of a 100,000-byte body read.
    let mut captured = head.to_vec();
    captured.extend_from_slice(&[b'x'; 10]);
    c.feed(Direction::Ingress, &captured, head.len() as u64 + 60_000, 1);
    c.feed(Direction::Ingress, &[], 40_000, 2);
    let done = write(&mut c, b"HTTP/1.1 204 No Content\r\n\r\n", 3);
    assert_eq!(done[0].request_body_bytes, 100_000);
    assert_eq!(done[0].status, 204);
    assert_eq!(done[0].response_body_bytes, 0);
}

#[test]
fn chunked_bodies_are_measured_without_framing() {
    let mut c = server();
    read(&mut c, b"GET /c HTTP/1.1\r\n\r\n", 1);
    assert!(write(
        &mut c,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        2
    )
    .is_empty());
    assert!(write(&mut c, b"lo\r\n6;ext=1\r\n world\r\n", 3).is_empty());
    let done = write(&mut c, b"0\r\nTrailer: x\r\n\r\n", 4);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].response_body_bytes, 11);
    assert_eq!(done[0].end_ns, 4);
    // The connection is still in sync for the next request.
    read(&mut c, b"GET /d HTTP/1.1\r\n\r\n", 5);
    assert_eq!(
        write(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", 6)[0].path,
        "/d"
    );
}

/// Chunks beyond what the kernel copies of one write cannot be framed; the exchange
/// still counts, ending where the next request begins (or at close).
#[test]
fn chunked_responses_beyond_the_capture_end_at_the_next_turn() {
    let mut c = server();
    read(&mut c, b"GET /big HTTP/1.1\r\n\r\n", 1);
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut captured = head.to_vec();
    captured.extend_from_slice(b"1388\r\n");
    captured.extend_from_slice(&[b'x'; 147]);
    // 3 chunks of 5,000 bytes and the last chunk in one write, 200 bytes of it copied.
    let written = head.len() as u64 + 3 * (6 + 5000 + 2) + 5;
    let captured = &captured[..200];
    assert!(c.feed(Direction::Egress, captured, written, 2).is_empty());
    let done = read(&mut c, b"GET /next HTTP/1.1\r\n\r\n", 4);
    // The body: the first chunk's 147 bytes framed, then every byte by length.
    assert_eq!(summary(&done), ["GET /big 200 0/15023"]);
    assert_eq!((done[0].start_ns, done[0].end_ns), (1, 2));
    // The next exchange frames as usual.
    let done = write(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", 5);
    assert_eq!(summary(&done), ["GET /next 200 0/1"]);
    // At close, a response counted by length ends at its last byte.
    read(&mut c, b"GET /last HTTP/1.1\r\n\r\n", 6);
    c.feed(Direction::Egress, captured, written, 7);
    let done = c.close(9);
    assert_eq!(summary(&done), ["GET /last 200 0/15023"]);
    assert_eq!(done[0].end_ns, 7);
}

/// A request head longer than the capture of a read, or than MAX_HEAD_BYTES, is
/// counted from its request line; its exchange ends with the response as usual.
#[test]
fn heads_too_long_to_frame_are_counted_from_their_request_line() {
    let mut big = b"GET /users/7?q=1 HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    big.extend_from_slice(&[b'b'; 20_000]);
    big.extend_from_slice(b"\r\n\r\n");
    let mut long_line = b"GET /long?q=".to_vec();
    long_line.extend_from_slice(&[b'a'; 65_000]);
    long_line.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for (request, path) in [(&big, "/users/7"), (&long_line, "/long")] {
        // Cut by the capture (4 KiB of one read), or read whole but over the limit.
        for captured in [4096, request.len()] {
            let mut c = server();
            assert!(c
                .feed(Direction::Ingress, &request[..captured], request.len() as u64, 1)
                .is_empty());
            let done = write(&mut c, ok, 2);
            assert_eq!(summary(&done), [format!("GET {path} 200 0/2")]);
            // The next request frames as usual.
            read(&mut c, b"POST /next HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 3);
            assert_eq!(summary(&write(&mut c, ok, 4)), ["POST /next 200 1/2"]);
        }
    }
    // Cut inside the version, or before the target: the line still says enough.
    for cut in [&b"GET /x HTTP/1."[..], b"GET /x", b"CONNECT db:5432"] {
        let mut c = server();
        c.feed(Direction::Ingress, cut, 100_000, 1);
        assert_eq!(write(&mut c, ok, 2).len(), 1, "{}", String::from_utf8_lossy(cut));
    }
    // Text that is no request line is no request, however long.
    for junk in [&b"GET"[..], b"hello world", b"GET /x HTTP/2", b"GET /x SPDY"] {
        let mut c = server();
        c.feed(Direction::Ingress, junk, 100_000, 1);
        assert!(write(&mut c, ok, 2).is_empty(), "{}", String::from_utf8_lossy(junk));
    }
}

#[test]
fn chunked_request_body() {
    let (_, done) = serve(
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(done[0].request_body_bytes, 3);
}

#[test]
fn continue_response_is_interim() {
    let mut c = server();
    read(
        &mut c,
        b"PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        1,
    );
    assert!(write(&mut c, b"HTTP/1.1 100 Continue\r\n\r\n", 2).is_empty());
    read(&mut c, b"data", 3);
    let done = write(
        &mut c,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        4,
    );
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].status, done[0].request_body_bytes), (201, 4));
}

#[test]
fn garbage_and_half_http_make_no_exchange() {
    let mut c = server();
    read(&mut c, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1);
    read(&mut c, b"GET /half HTTP/1.1\r\nHost: h\r\n", 2); // never finished
    assert!(write(
        &mut c,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        3
    )
    .is_empty());
    let (_, done) = serve(
        b"BREW /pot HTCPCP/1.0\r\n\r\n",
        b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(done.is_empty());
}

#[test]
fn resynchronises_on_the_next_request_after_garbage() {
    let mut c = server();
    read(&mut c, &[0u8; 100], 1);
    read(&mut c, b"GET /after HTTP/1.1\r\n\r\n", 2);
    let done = write(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].path, "/after");
}

/// A head of 1 MiB holds at most MAX_HEAD_BYTES while it arrives; then it is counted
/// from its request line and nothing more is held.
#[test]
fn huge_head_is_counted_without_growing() {
    let mut c = server();
    read(&mut c, b"GET /x HTTP/1.1\r\nX-Big: ", 1);
    let chunk = vec![b'a'; 64 * 1024];
    for i in 0..16 {
        read(&mut c, &chunk, 2 + i); // 1 MiB of one header
        assert_eq!(c.buffered(), 0, "the head was given up at the first read over the limit");
    }
    read(&mut c, b"\r\n\r\n", 100);
    let done = write(&mut c, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n", 101);
    assert_eq!(summary(&done), ["GET /x 431 0/0"]);
    assert_eq!((done[0].start_ns, done[0].end_ns), (1, 101));
}

#[test]
fn long_request_line_is_cut_to_a_bounded_path() {
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'p', 10_000));
    line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let head = parse_request_head(&line).expect("parses");
    assert_eq!(head.path.len(), MAX_PATH_BYTES);
}

#[test]
fn absolute_form_targets_are_reduced_to_their_path() {
    let head = parse_request_head(b"GET http://example.test:8080/a/b?q=1 HTTP/1.1\r\n\r\n")
        .expect("parses");
    assert_eq!(head.path, "/a/b");
    let head = parse_request_head(b"GET http://example.test HTTP/1.1\r\n\r\n").expect("parses");
    assert_eq!(head.path, "/");
}

#[test]
fn response_without_length_runs_until_close() {
    let mut c = server();
    read(&mut c, b"GET /old HTTP/1.0\r\n\r\n", 1);
    assert!(write(&mut c, b"HTTP/1.0 200 OK\r\n\r\nsome", 2).is_empty());
    assert!(write(&mut c, b"bytes", 3).is_empty());
    let done = c.close(4);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].response_body_bytes, 9);
}

#[test]
fn client_role_times_from_write_to_read() {
    let mut c = Connection::new(Role::Client);
    assert!(write(&mut c, b"GET /api HTTP/1.1\r\nHost: s\r\n\r\n", 100).is_empty());
    let done = read(
        &mut c,
        b"HTTP/1.1 503 Unavailable\r\nContent-Length: 3\r\n\r\nbye",
        250,
    );
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].status, done[0].start_ns, done[0].end_ns),
        (503, 100, 250)
    );
}

#[test]
fn conflicting_content_lengths_are_refused() {
    assert!(parse_request_head(
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    .is_none());
}

#[test]
fn status_lines_must_be_well_formed() {
    assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n").is_some());
    assert!(parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_none());
    assert!(parse_response_head(b"HTTP/2 200\r\n\r\n").is_none());
    assert!(parse_response_head(b"HTTP/1.1 099 X\r\n\r\n").is_none());
}

/// Arbitrary bytes, split anywhere, never panic and never make an exchange out of
/// nothing: a small deterministic fuzz loop (xorshift), so it runs in every test run.
#[test]
fn random_bytes_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"0\r\n",
        b"ffffffffffffffff\r\n",
        b"abc",
        b"\x00\xff",
        b"HEAD /x HTTP/1.0\r\n",
    ];
    let mut exchanges = 0;
    for _ in 0..2_000 {
        let role = if next() % 2 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let mut c = Connection::new(role);
        // A response counted by length ends at its last byte, when the next request
        // (or the close) shows it ended: the time of a response-direction feed.
        let mut response_feeds = Vec::new();
        for step in 0..20 {
            let mut data = Vec::new();
            for _ in 0..(next() % 4) {
                data.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let extra = next() % 3;
            let dir = if next() % 2 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            if (role == Role::Server) == (dir == Direction::Egress) {
                response_feeds.push(step);
            }
            for e in c.feed(dir, &data, data.len() as u64 + extra, step) {
                assert!((100..600).contains(&e.status));
                // Made of what was fed so far, and ended by this very feed or by an
                // earlier response-direction one.
                let ended = e.end_ns == step || response_feeds.contains(&e.end_ns);
                assert!(e.start_ns <= e.end_ns && ended, "{e:?} at {step}");
                exchanges += 1;
            }
        }
        for e in c.close(99) {
            assert!((100..600).contains(&e.status));
            let ended = e.end_ns == 99 || response_feeds.contains(&e.end_ns);
            assert!(e.start_ns < 20 && ended, "{e:?} at close");
            exchanges += 1;
        }
    }
    // The pieces do make exchanges now and then: the checks above ran.
    assert!(exchanges > 0);
}

#[test]
fn chunk_data_beyond_the_capture_is_counted_by_length() {
    let mut c = server();
    read(&mut c, b"GET /big HTTP/1.1\r\n\r\n", 1);
    let mut first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2710\r\n".to_vec();
    let head_len = first.len() as u64;
    first.extend_from_slice(&[b'y'; 100]);
    // 10,000 bytes of chunk data moved, only the first 100 captured.
    assert!(c
        .feed(Direction::Egress, &first, head_len + 10_000, 2)
        .is_empty());
    let done = write(&mut c, b"\r\n0\r\n\r\n", 3);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].response_body_bytes, 10_000);
}

#[test]
fn upgrade_and_tunnels_end_with_their_head() {
    let (mut c, done) = serve(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].status, done[0].end_ns), (101, 2));
    // WebSocket frames afterwards are not HTTP.
    assert!(write(&mut c, b"\x81\x05hello", 3).is_empty());
    assert!(read(&mut c, b"\x81\x85abcd12345", 4).is_empty());

    let (_, done) = serve(
        b"CONNECT example.test:443 HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 Connection Established\r\n\r\n",
    );
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].method, "CONNECT");
}

#[test]
fn trace_context_headers_are_read_with_the_framing_headers() {
    let head = b"GET /a HTTP/1.1\r\nTraceParent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: a=1\r\nTracestate: b=2\r\nContent-Length: 3\r\n\r\n";
    let parsed = parse_request_head(head).expect("valid head");
    assert_eq!(parsed.body, BodyLength::Length(3));
    let trace = parsed.trace.expect("trace context");
    assert!(trace.parent.sampled);
    assert_eq!(trace.state, "a=1,b=2");
    // Two traceparent headers: neither is trusted.
    let twice = b"GET /a HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203332-01\r\n\r\n";
    assert_eq!(parse_request_head(twice).expect("valid head").trace, None);
    let none = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(parse_request_head(none).expect("valid head").trace, None);
}

#[test]
fn request_lines_the_kernel_framed_parse_as_user_space_frames_them() {
    assert_eq!(
        parse_framed_line(b"GET /a/b?secret=1"),
        Some(("GET".into(), "/a/b".into()))
    );
    assert_eq!(
        parse_framed_line(b"PURGE http://h/x"),
        Some(("PURGE".into(), "/x".into()))
    );
    assert_eq!(parse_framed_line(b"GET"), None, "no target");
    assert_eq!(parse_framed_line(b"G\x01T /"), None, "not a token");
    assert_eq!(parse_framed_line(b"GET /a\x07b"), None, "control byte");
    assert_eq!(parse_framed_line(b"GET /a b"), None, "two targets");
}

/// A connection the kernel hands over after framing a request, whose response (chunked,
/// here) the kernel does not frame: the response pairs with the request, and bytes of
/// the next request follow as usual.
#[test]
fn a_request_framed_in_the_kernel_pairs_with_the_response_user_space_frames() {
    let mut c = server();
    c.resume("POST".into(), "/upload".into(), 10, 7, 3, None);
    let done = write(
        &mut c,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        20,
    );
    assert_eq!(summary(&done), vec!["POST /upload 200 7/3"]);
    assert_eq!((done[0].start_ns, done[0].end_ns, done[0].tid), (10, 20, 3));
    read(&mut c, b"HEAD /h HTTP/1.1\r\n\r\n", 30);
    let done = write(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", 31);
    assert_eq!(summary(&done), vec!["HEAD /h 200 0/0"]);

    // A HEAD framed in the kernel: its response has no body, whatever it announces.
    let mut c = server();
    c.resume("HEAD".into(), "/h".into(), 1, 0, 0, None);
    let done = write(&mut c, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", 2);
    assert_eq!(summary(&done), vec!["HEAD /h 200 0/0"]);
}
