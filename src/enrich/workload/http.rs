//! The one HTTP request the lookups make: a GET, over a unix socket, TCP or TLS.

use std::io::{Read, Write};

/// Largest response read: a node's `/pods` with a few hundred pods is a few MiB.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// One HTTP/1.0 GET (the server closes the connection after the response, so no
/// chunked bodies): the status and the body.
pub(super) fn http_get(
    stream: &mut (impl Read + Write),
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}Accept: application/json\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut response = Vec::new();
    match stream
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut response)
    {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: the HTTP/1.0 response ends with
        // the connection all the same.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(format!("reading the response: {e}")),
    }
    if response.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
    }
    let split = memchr::memmem::find(&response, b"\r\n\r\n")
        .ok_or_else(|| "response without a header end".to_string())?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next()))?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Err("chunked response to an HTTP/1.0 request".into());
    }
    Ok((status, response[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        let mut io = std::io::Cursor::new(Vec::new());
        // The cursor is written then read: fake a server by preloading the response.
        io.get_mut()
            .extend_from_slice(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}");
        let (status, body) = http_get(&mut ReadOnly(io), "h", "/p", None).expect("parses");
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(http_get(
            &mut ReadOnly(std::io::Cursor::new(chunked.to_vec())),
            "h",
            "/",
            None
        )
        .is_err());
    }

    /// Reads a canned response and swallows the request.
    struct ReadOnly(std::io::Cursor<Vec<u8>>);

    impl Read for ReadOnly {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for ReadOnly {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
