//! `GET /metrics` over HTTP/1.1 (hyper), bounded so that a hostile local
//! client cannot exhaust the agent: few connections at once, one request
//! per connection, request head at most [`MAX_HEAD`] bytes and 32 headers,
//! read within a few seconds, and the whole exchange within a deadline.
//! The body of a request is never read.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};
use tracing::{debug, error, info, warn};

use super::exposition::{self, Exporter};

/// The path served.
pub const PATH: &str = "/metrics";
/// Bytes of a request head (request line and headers) at most: hyper's
/// smallest read buffer.
pub const MAX_HEAD: usize = 8192;

/// How much one client may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is closed at once (a scraper
    /// needs one).
    pub max_connections: usize,
    /// Time to receive the request head.
    pub head_timeout: Duration,
    /// Time for the whole exchange, response included: a client that stops
    /// reading is dropped.
    pub exchange_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 8,
            head_timeout: Duration::from_secs(5),
            exchange_timeout: Duration::from_secs(15),
        }
    }
}

/// Binds `addr` before the agent touches the kernel, so that a busy or
/// foreign address fails the start and changes nothing.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| {
        format!("--metrics-addr {addr}: cannot listen there (in use, or not an address of this host or namespace)")
    })?;
    l.set_nonblocking(true)
        .context("--metrics-addr: making the socket non-blocking")?;
    Ok(l)
}

/// Serves `exporter` on `listener` until the task is dropped or aborted;
/// the connections in flight go with it.
pub async fn serve(
    listener: std::net::TcpListener,
    exporter: Arc<Exporter>,
    limits: Limits,
) -> Result<Infallible> {
    let listener =
        TcpListener::from_std(listener).context("--metrics-addr: registering the socket")?;
    let addr = listener.local_addr()?;
    info!(addr = %addr, path = PATH, "serving Prometheus metrics");
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= limits.max_connections {
            debug!(peer = %peer, limit = limits.max_connections, "metrics: too many connections, closing a new one");
            continue;
        }
        let exporter = exporter.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let exporter = exporter.clone();
                async move { Ok::<_, Infallible>(respond(exporter, &req).await) }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_HEAD)
                .max_headers(32)
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.exchange_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(peer = %peer, error = %e, "metrics: connection failed"),
                Err(_) => debug!(peer = %peer, "metrics: connection timed out"),
            }
        });
    }
}

/// The answer to one request: the metrics, 404 or 405.
async fn respond(exporter: Arc<Exporter>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // Rendering is CPU work proportional to the series: off the runtime's
    // threads, which also serve the control socket.
    match tokio::task::spawn_blocking(move || exporter.render()).await {
        Ok(Ok(text)) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(exposition::CONTENT_TYPE),
            );
            r
        }
        Ok(Err(e)) => {
            error!(error = %e, "metrics: rendering failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed\n",
            )
        }
        Err(e) => {
            error!(error = %e, "metrics: the rendering task failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed\n",
            )
        }
    }
}

/// A short plain-text answer with `status`.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        control::ChannelsReport,
        metrics::{MetricsSource, MetricsView},
    };

    fn exporter() -> Arc<Exporter> {
        let report = Arc::new(ChannelsReport {
            version: 3,
            generation: 0,
            rate_window_s: 0.0,
            taken_unix_ms: 0,
            channels: Vec::new(),
            unnamed_channels: 0,
            node: Default::default(),
        });
        let source: MetricsSource = Arc::new(move || MetricsView {
            channels: report.clone(),
            interactions: Arc::from(Vec::new()),
            uptime: Duration::from_secs(1),
            events: Default::default(),
        });
        Arc::new(Exporter::new(source))
    }

    /// A server on a free loopback port, with `limits`.
    async fn server(limits: Limits) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = serve(l, exporter(), limits).await;
        });
        (addr, task)
    }

    /// Sends `request` raw and reads until the server closes (5 s at most).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let (addr, task) = server(Limits::default()).await;
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("\ntc_policy_version 3"), "{ok}");
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.contains("tc_policy_version"), "{head}");
        let nf = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.to_lowercase().contains("allow: get, head"), "{post}");
        task.abort();
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let (addr, task) = server(Limits::default()).await;
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
        req.extend(b"\r\n\r\n");
        let r = exchange(addr, &req).await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
        // The server still answers the next client.
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_and_others_still_served() {
        let limits = Limits {
            max_connections: 2,
            head_timeout: Duration::from_millis(300),
            exchange_timeout: Duration::from_secs(1),
        };
        let (addr, task) = server(limits).await;
        let t0 = Instant::now();
        // Two silent clients take every slot ...
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // ... until the head timeout closes them.
        for s in &mut silent {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("closed by the server");
            assert!(matches!(n, Ok(_) | Err(_)));
        }
        assert!(t0.elapsed() < Duration::from_secs(3));
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        task.abort();
    }

    #[test]
    fn a_busy_address_is_a_clear_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind(l.local_addr().unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("--metrics-addr"), "{e:#}");
    }
}
