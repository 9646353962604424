//! The connection under actix-http: actix's own error answers as problem+json.
//!
//! actix-http answers three kinds of bad input before any of our code runs:
//! a request head it cannot parse (`400`), a head over its buffer or header
//! count (`431`), and a head not finished within the client timeout (`408`).
//! It sends them with an empty body (`content-length: 0`), then closes. The
//! API promises problem+json with a stable `code` on every 4xx and 5xx, and
//! actix has no hook for these answers, so each connection's socket is
//! wrapped ([`ProblemIo`]) and such an answer is rewritten on its way out:
//! the same status and headers, with `content-type: application/problem+json`
//! and a body that says which limit was hit.
//!
//! What is rewritten is recognised, not guessed: it is the last thing
//! written to the connection (actix closes after it), a complete head with
//! `content-length: 0` at the end of the bytes being written, status 400,
//! 408 or 431. Our own handlers never answer those statuses without a body
//! (every error goes through `http::problem`), so nothing of ours matches;
//! an answer of ours written before it in the same buffer (a pipelined
//! request) is passed on unchanged. The check costs a suffix comparison a
//! write: a response with a body does not end in an empty line. Left as
//! it is: when a client stops reading and its socket buffer fills in the
//! middle of such an answer's status line, the rest arrives in a later
//! write without it and goes out bodiless (actix closes the connection
//! either way).
//!
//! Why a wrapped socket and not `HttpServer`: actix-web's `HttpServer`
//! takes only a `TcpListener` and builds the connection service itself, so
//! [`crate::startup::Application`] builds the same service (actix-server,
//! `HttpService`, the app under `map_config`) over this wrapper instead.

use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::web;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::http::{AppState, app};

/// How the server runs (what `HttpServer`'s builder methods set).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A request head must be complete within this (else `408`).
    pub head_timeout: Duration,
    /// How long in-flight requests get at a graceful stop.
    pub shutdown_grace: Duration,
    /// Worker threads (`None`: one a core).
    pub workers: Option<usize>,
}

/// The HTTP server on `listener`: actix-web's app over actix-http's
/// HTTP/1 service, as `HttpServer::listen` builds it, each connection's
/// socket wrapped in [`ProblemIo`].
pub fn serve(
    listener: TcpListener,
    state: web::Data<AppState>,
    opts: ServeOptions,
) -> io::Result<Server> {
    let local = listener.local_addr()?;
    let mut builder = Server::build()
        .backlog(4096)
        .shutdown_timeout(opts.shutdown_grace.as_secs());
    if let Some(w) = opts.workers {
        builder = builder.workers(w);
    }
    let shutdown = builder.graceful_shutdown_signal();
    let head_ms = opts.head_timeout.as_millis() as u64;
    let head_timeout = opts.head_timeout;
    let server = builder.listen("stampede-http", listener, move || {
        let shutdown = shutdown.clone();
        let http = HttpService::build()
            .client_request_timeout(head_timeout)
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(local)
            .graceful_shutdown_signal(move || {
                let signal = shutdown.clone();
                async move { signal.notified().await }
            })
            .finish(map_config(
                app(state.clone())
                    .into_factory()
                    .map_err(|e: actix_web::Error| e.error_response()),
                |_| AppConfig::default(),
            ));
        fn_service(move |io: TcpStream| {
            let peer = io.peer_addr().ok();
            async move { Ok((ProblemIo::new(io, head_ms), Protocol::Http1, peer)) }
        })
        .and_then(http)
    })?;
    Ok(server.run())
}

/// A socket whose outgoing bodiless 400 / 408 / 431 answers are rewritten as
/// problem+json (see the module doc).
#[derive(Debug)]
pub struct ProblemIo<T> {
    io: T,
    /// The client request timeout (for a 408's detail), in ms.
    head_timeout_ms: u64,
    /// A rewritten answer still being written, and how much of it went.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ProblemIo<T> {
    pub fn new(io: T, head_timeout_ms: u64) -> Self {
        Self {
            io,
            head_timeout_ms,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = self.pending.as_mut() {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let Some((keep, answer)) = rewrite(buf, this.head_timeout_ms) else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        // Our answers before it go as they are, then the rewritten one;
        // the caller is told all of `buf` went (what is left of the
        // rewritten answer is written by the next write, flush or
        // shutdown).
        let mut bytes = buf[..keep].to_vec();
        bytes.extend_from_slice(&answer);
        this.pending = Some((bytes, 0));
        match this.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// When `buf` ends with one of actix's bodiless error answers: how many
/// bytes before it are kept as they are, and the answer rewritten.
pub fn rewrite(buf: &[u8], head_timeout_ms: u64) -> Option<(usize, Vec<u8>)> {
    const END: &[u8] = b"\r\n\r\n";
    if !buf.ends_with(END) {
        return None;
    }
    // The last status line; the head from it to the end must be whole (no
    // empty line before the last) and bodiless.
    let start = find_last(buf, b"HTTP/1.")?;
    let head = &buf[start..];
    if head.len() < 13 || find_last(&head[..head.len() - 2], END).is_some() {
        return None;
    }
    let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    if !matches!(status, 400 | 408 | 431) || head[12] != b' ' {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text[..text.len() - END.len()].split("\r\n");
    let status_line = lines.next()?;
    let mut others = Vec::new();
    let mut bodiless = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            if value.trim() != "0" {
                return None;
            }
            bodiless = true;
        } else if !name.eq_ignore_ascii_case("content-type") {
            others.push(line);
        }
    }
    if !bodiless {
        return None;
    }
    let error = match status {
        400 => {
            ApiError::MalformedRequest("the request head could not be parsed as HTTP/1.x".into())
        }
        408 => ApiError::HeadTimeout(head_timeout_ms),
        _ => ApiError::HeadTooLarge,
    };
    let body = error.problem_body();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/problem+json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    for line in others {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(END);
    out.extend_from_slice(&body);
    Some((start, out))
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8]) -> String {
        let (keep, out) = rewrite(bytes, 5000).expect("rewritten");
        let mut all = bytes[..keep].to_vec();
        all.extend_from_slice(&out);
        String::from_utf8(all).unwrap()
    }

    #[test]
    fn actix_bodiless_errors_become_problems() {
        for (status, reason, code) in [
            (400, "Bad Request", "malformed_request"),
            (408, "Request Timeout", "request_timeout"),
            (431, "Request Header Fields Too Large", "malformed_request"),
        ] {
            let raw = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\ndate: Fri, 04 Dec 2026 21:23:09 GMT\r\n\r\n"
            );
            let text = answer(raw.as_bytes());
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} {reason}\r\n")),
                "{text}"
            );
            assert!(
                head.contains("content-type: application/problem+json"),
                "{text}"
            );
            assert!(
                head.contains("connection: close") && head.contains("date: Fri"),
                "{text}"
            );
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{text}"
            );
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["code"], code, "{text}");
            assert_eq!(v["status"], status, "{text}");
        }
    }

    #[test]
    fn a_pipelined_answer_before_the_error_is_kept() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
        let raw = format!("{ok}HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        let (keep, _) = rewrite(raw.as_bytes(), 5000).unwrap();
        assert_eq!(keep, ok.len());
        let text = answer(raw.as_bytes());
        assert!(text.starts_with(ok));
        assert!(text.contains("\"code\":\"malformed_request\""), "{text}");
    }

    #[test]
    fn other_answers_pass_unchanged() {
        for raw in [
            // Ours: a problem with a body; a bodiless success.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}",
            "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // A 400 whose head says it has a body.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
            // A body that ends in an empty line, after a whole answer.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n\r\n",
            "",
            "\r\n\r\n",
        ] {
            assert!(rewrite(raw.as_bytes(), 5000).is_none(), "{raw:?}");
        }
    }
}
