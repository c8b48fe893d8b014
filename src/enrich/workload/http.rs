//! The one HTTP request the lookups make: a GET of a JSON document over a unix socket
//! (Docker), TCP or TLS (the kubelet), with hyper's HTTP/1.1 client, so that chunked
//! and length-delimited bodies are read as servers send them.
//!
//! The lookup thread is a plain thread: the client owns a single-threaded runtime and
//! blocks on it for each request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest response read: a node's `/pods` with a few hundred pods is a few MiB.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    /// Nobody listens there (yet): the caller may treat it as the source being absent.
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the request cannot be made: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("sending the request: {0}")]
    Send(hyper::Error),
    #[error("reading the response: {0}")]
    Read(hyper::Error),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where a request goes.
pub(super) enum Target<'a> {
    Unix(&'a Path),
    Tcp(SocketAddr),
    /// TLS to `host` (the name its certificate must carry) at the address.
    Tls {
        address: SocketAddr,
        host: &'a str,
        config: Arc<rustls::ClientConfig>,
    },
}

/// A GET: the `Host` header, the path, and the bearer token to send, if any.
pub(super) struct Get<'a> {
    pub(super) authority: &'a str,
    pub(super) path: &'a str,
    pub(super) token: Option<&'a str>,
}

/// The status and the whole body.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

/// Makes the lookups' requests, one at a time.
pub(super) struct Client {
    runtime: tokio::runtime::Runtime,
    /// How long connecting, the TLS handshake, the response head, and each read of the
    /// body may take: a slow but steady answer is not cut off.
    timeout: Duration,
}

impl Client {
    pub(super) fn new(timeout: Duration) -> std::io::Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client { runtime, timeout })
    }

    pub(super) fn get(&self, target: Target<'_>, get: &Get<'_>) -> Result<Response, HttpError> {
        let timeout = self.timeout;
        self.runtime.block_on(async move {
            match target {
                Target::Unix(path) => {
                    let stream = within(timeout, tokio::net::UnixStream::connect(path))
                        .await?
                        .map_err(HttpError::Connect)?;
                    exchange(stream, get, timeout, MAX_RESPONSE_BYTES).await
                }
                Target::Tcp(address) => {
                    let stream = connect_tcp(address, timeout).await?;
                    exchange(stream, get, timeout, MAX_RESPONSE_BYTES).await
                }
                Target::Tls {
                    address,
                    host,
                    config,
                } => {
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| HttpError::Tls(format!("{host}: {e}")))?;
                    let stream = connect_tcp(address, timeout).await?;
                    let stream = within(
                        timeout,
                        tokio_rustls::TlsConnector::from(config).connect(name, stream),
                    )
                    .await?
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
                    exchange(stream, get, timeout, MAX_RESPONSE_BYTES).await
                }
            }
        })
    }
}

async fn connect_tcp(
    address: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, HttpError> {
    within(timeout, tokio::net::TcpStream::connect(address))
        .await?
        .map_err(HttpError::Connect)
}

async fn within<F: std::future::Future>(
    timeout: Duration,
    future: F,
) -> Result<F::Output, HttpError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| HttpError::Timeout(timeout))
}

/// One request on a fresh connection, and its response read whole (at most `limit`
/// bytes of body).
async fn exchange<S>(
    stream: S,
    get: &Get<'_>,
    timeout: Duration,
    limit: usize,
) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::Send)?;
    // The connection does the reading and writing while the request waits on it.
    let connection = tokio::spawn(connection);
    let mut request = Request::get(get.path)
        .header(HOST, get.authority)
        .header(ACCEPT, "application/json");
    if let Some(token) = get.token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let outcome = async {
        let response = within(timeout, sender.send_request(request))
            .await?
            .map_err(HttpError::Send)?;
        let status = response.status().as_u16();
        let body = read_body(response, timeout, limit).await?;
        Ok(Response { status, body })
    }
    .await;
    // Waited for, so that the socket is closed now rather than at the next request.
    connection.abort();
    let _ = connection.await;
    outcome
}

async fn read_body(
    response: hyper::Response<Incoming>,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, HttpError> {
    let headers = response.headers();
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(HttpError::TooLarge(limit));
    }
    // A body that only the end of the connection ends.
    let close_delimited = declared.is_none() && !headers.contains_key(TRANSFER_ENCODING);
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = within(timeout, body.frame()).await? {
        let frame = match frame {
            Ok(frame) => frame,
            // A TLS peer that closes without close_notify: a body that ends with the
            // connection ends all the same.
            Err(err) if close_delimited && closed_uncleanly(&err) => break,
            Err(err) => return Err(HttpError::Read(err)),
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(HttpError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn closed_uncleanly(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use tokio::io::ReadBuf;

    use super::*;

    /// A server's side of a connection: a canned response once the request head has
    /// come, then how the connection ends; what the client sends is kept.
    struct Canned {
        response: Vec<u8>,
        at: usize,
        end: End,
        sent: Arc<Mutex<Vec<u8>>>,
        asked: bool,
        reader: Option<Waker>,
    }

    #[derive(Clone, Copy)]
    enum End {
        Close,
        /// As a TLS stream reports a peer gone without close_notify.
        Unclean,
        /// Never answers, nor closes.
        Silent,
    }

    impl AsyncRead for Canned {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if !self.asked {
                self.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let rest = &self.response[self.at..];
            if !rest.is_empty() {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            match self.end {
                End::Close => Poll::Ready(Ok(())),
                End::Unclean => Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into())),
                End::Silent => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Canned {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let head_sent = match self.sent.lock() {
                Ok(mut sent) => {
                    sent.extend_from_slice(buf);
                    sent.ends_with(b"\r\n\r\n")
                }
                Err(_) => false,
            };
            if head_sent {
                self.asked = true;
                if let Some(reader) = self.reader.take() {
                    reader.wake();
                }
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const GET: Get<'static> = Get {
        authority: "kubelet:10250",
        path: "/pods",
        token: Some("t0ken"),
    };

    /// The response to GET, with a body limit of 64 bytes, and what was sent.
    fn answer(response: &[u8], end: End) -> (Result<Response, HttpError>, String) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let canned = Canned {
            response: response.to_vec(),
            at: 0,
            end,
            sent: sent.clone(),
            asked: false,
            reader: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = runtime.block_on(exchange(canned, &GET, Duration::from_millis(200), 64));
        let sent = String::from_utf8_lossy(&sent.lock().expect("sent")).into_owned();
        (outcome, sent)
    }

    #[test]
    fn the_request_names_the_host_the_document_and_the_token() {
        let (outcome, sent) = answer(b"HTTP/1.1 204 No Content\r\n\r\n", End::Close);
        assert_eq!(outcome.expect("answered").status, 204);
        assert!(sent.starts_with("GET /pods HTTP/1.1\r\n"), "{sent}");
        let sent = sent.to_ascii_lowercase();
        assert!(sent.contains("\r\nhost: kubelet:10250\r\n"), "{sent}");
        assert!(sent.contains("\r\naccept: application/json\r\n"), "{sent}");
        assert!(
            sent.contains("\r\nauthorization: bearer t0ken\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn bodies_end_by_length_by_chunks_or_by_the_connection() {
        for (response, end) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"[..],
                End::Silent,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
                End::Silent,
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n{}", End::Close),
            (b"HTTP/1.0 200 OK\r\n\r\n{}", End::Unclean),
        ] {
            let (outcome, _) = answer(response, end);
            let response = outcome.expect("answered");
            assert_eq!((response.status, response.body.as_slice()), (200, &b"{}"[..]));
        }
    }

    /// What the client makes of `response` followed by `end`, which must be an error.
    fn error_for(response: &[u8], end: End) -> HttpError {
        match answer(response, end).0 {
            Ok(response) => panic!("expected an error, got status {}", response.status),
            Err(err) => err,
        }
    }

    #[test]
    fn short_oversized_malformed_and_silent_answers_are_errors() {
        let mut streamed = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        streamed.extend_from_slice(&[b'x'; 65]);
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            chunked.extend_from_slice(b"20\r\n");
            chunked.extend_from_slice(&[b'x'; 32]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let cut_short = [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"[..],
                End::Unclean,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
                End::Close,
            ),
        ];
        for (response, end) in cut_short {
            let err = error_for(response, end);
            assert!(matches!(err, HttpError::Read(_)), "{err:?}");
        }
        // Declared, streamed or chunked: a body over the limit (64 bytes here) is refused.
        let oversized = [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n"[..],
                End::Silent,
            ),
            (&streamed[..], End::Close),
            (&chunked[..], End::Close),
        ];
        for (response, end) in oversized {
            let err = error_for(response, end);
            assert!(matches!(err, HttpError::TooLarge(64)), "{err:?}");
        }
        for response in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
            b"",
        ] {
            let err = error_for(response, End::Close);
            assert!(matches!(err, HttpError::Send(_)), "{err:?}");
        }
        for response in [&b""[..], b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}"] {
            let err = error_for(response, End::Silent);
            assert!(matches!(err, HttpError::Timeout(_)), "{err:?}");
        }
    }

    #[test]
    fn a_unix_socket_is_asked_and_a_missing_one_is_a_connect_error() {
        let path = std::env::temp_dir().join(format!("periscope-http-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let client = Client::new(Duration::from_secs(5)).expect("client");
        let get = Get {
            authority: "docker",
            path: "/containers/x/json",
            token: None,
        };
        let missing = client.get(Target::Unix(&path), &get);
        assert!(matches!(missing, Err(HttpError::Connect(_))), "{missing:?}");

        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
            // The client hangs up once answered.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let closed = stream.read(&mut byte).is_ok_and(|n| n == 0);
            (String::from_utf8_lossy(&head).into_owned(), closed)
        });
        let response = client.get(Target::Unix(&path), &get).expect("answered");
        let _ = std::fs::remove_file(&path);
        assert_eq!((response.status, response.body.len()), (404, 0));
        let (head, closed) = server.join().expect("server");
        assert!(closed, "the connection stays open");
        assert!(
            head.starts_with("GET /containers/x/json HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }
}
