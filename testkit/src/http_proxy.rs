//! An HTTP proxy in front of fake-gcs-server (served with hyper, forwarded with reqwest) that
//! answers more as Cloud Storage does: each answer held back by a [`Latency`] (tens of
//! milliseconds with a tail, where the emulator takes less than one); the JSON part of each
//! upload recorded (fake-gcs-server drops the content type the storage client sends there); 403
//! for a create-only write of an existing object, as to a caller that may not read objects; 429
//! above a rate, as a bucket's index ramping up; chosen failures of every upload (a revoked
//! permission, a spent quota, a backend down) or every read of data (a disabled key); and an
//! object's metadata on a download as `x-goog-meta-KEY` headers with each key byte for byte,
//! even one that is not a valid header name (`app/version`, `a b`), where fake-gcs-server drops
//! such entries ([`RawHeaders`]).
//!
//! Latency, 403 for 412, throttling and failing uploads and reads are `faults.rs`, which
//! [`crate::FastGcs`] shares. The proxy runs on the tokio runtime that started it; dropping it
//! stops it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use crate::faults::Faults;
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::AbortOnDropHandle;

pub struct HttpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    connections: Arc<AtomicU64>,
    _accept: AbortOnDropHandle<()>,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    faults: Faults,
    /// `None` unless started with [`HttpProxy::recording`].
    uploads: Option<Mutex<Vec<Value>>>,
}

impl HttpProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream` (fake-gcs-server).
    pub async fn start(upstream: SocketAddr) -> Result<HttpProxy> {
        Self::start_with(upstream, false).await
    }

    /// As [`HttpProxy::start`], and keeps every upload for [`HttpProxy::recorded_uploads`] (which
    /// costs CPU and memory per upload, that a benchmark must not pay).
    pub async fn recording(upstream: SocketAddr) -> Result<HttpProxy> {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: SocketAddr, record: bool) -> Result<HttpProxy> {
        let listener = crate::listen_on_loopback()?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream: format!("http://{upstream}"),
            client: reqwest::Client::builder().pool_max_idle_per_host(4096).build()?,
            faults: Faults::new(),
            uploads: record.then(|| Mutex::new(Vec::new())),
        });
        let shared = state.clone();
        let serve = move |stream| {
            let state = shared.clone();
            let service = hyper::service::service_fn(move |r| forward(state.clone(), r));
            let stream = RawHeaders { inner: stream, pending: Vec::new() };
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            async move { drop(connection.await) }
        };
        let connections = Arc::new(AtomicU64::new(0));
        let _accept = crate::accept_each(listener, connections.clone(), serve);
        Ok(HttpProxy { addr, state, connections, _accept })
    }

    /// `http://127.0.0.1:PORT`, to use as `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, e.g. as the upstream of a [`crate::Proxy`] or a [`crate::TlsFront`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The JSON part of every multipart upload so far, with `name` from the URL added, e.g.
    /// `{"name":"pubsub/123","contentType":"text/plain; charset=utf-8","metadata":{...}}`;
    /// empty unless started with [`HttpProxy::recording`].
    pub fn recorded_uploads(&self) -> Vec<Value> {
        self.state.uploads.as_ref().map(|u| u.lock().unwrap().clone()).unwrap_or_default()
    }

    /// Connections the worker opened to the proxy so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn forward(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(uploads) = &state.uploads
        && target.contains("uploadType=multipart")
    {
        record_upload(uploads, target, &body);
    }
    if let Some((status, body)) = state.faults.injected(target) {
        state.faults.hold().await;
        return Ok(Response::builder().status(status).body(Full::new(body))?);
    }
    let mut upstream = state.client.request(parts.method, format!("{}{target}", state.upstream));
    for (name, value) in parts.headers.iter().filter(|(name, _)| !HOP.contains(&name.as_str())) {
        upstream = upstream.header(name, value);
    }
    let answer = upstream.body(body).send().await?;
    let status = state.faults.status(answer.status());
    let media = target.contains("alt=media") && status.is_success();
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        let meta = media && name.as_str().starts_with(META);
        if !(meta || HOP.contains(&name.as_str())) {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await?;
    if media {
        for (key, value) in state.metadata(target).await? {
            let name =
                match hyper::header::HeaderName::from_bytes(format!("{META}{key}").as_bytes()) {
                    Ok(name) if name.as_str() == format!("{META}{key}") => name.to_string(),
                    _ => format!("{RAW}{}", hex(key.as_bytes())),
                };
            response = response.header(name, value);
        }
    }
    state.faults.hold().await;
    Ok(response.body(Full::new(body))?)
}

/// Headers of one hop, which the proxy does not forward.
const HOP: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];
/// The prefix of a metadata entry's header.
const META: &str = "x-goog-meta-";
/// What a metadata header whose key is not a valid header name is sent as by hyper, the key in
/// hex; [`RawHeaders`] writes it out as `x-goog-meta-KEY`.
const RAW: &str = "x-testkit-raw-";

impl State {
    /// The custom metadata of the object a media read at `target` asks for, from its resource.
    async fn metadata(&self, target: &str) -> Result<Vec<(String, String)>> {
        let path = target.split('?').next().unwrap_or(target);
        let resource: Value =
            self.client.get(format!("{}{path}", self.upstream)).send().await?.json().await?;
        let entries = resource["metadata"].as_object().cloned().unwrap_or_default();
        Ok(entries.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().into())).collect())
    }
}

/// Keeps the JSON part (the first part) of a multipart upload, with the `name` and `kmsKeyName`
/// the URL gives (the storage client sends the key as a query parameter).
fn record_upload(uploads: &Mutex<Vec<Value>>, target: &str, body: &[u8]) {
    let Some(start) = body.windows(4).position(|w| w == b"\r\n\r\n") else { return };
    let json = serde_json::Deserializer::from_slice(&body[start + 4..]).into_iter::<Value>().next();
    let Some(Ok(Value::Object(mut part))) = json else { return };
    let Ok(url) = reqwest::Url::parse(&format!("http://proxy{target}")) else { return };
    for (key, value) in url.query_pairs() {
        if key == "name" || key == "kmsKeyName" {
            part.entry(key.into_owned()).or_insert(Value::String(value.into_owned()));
        }
    }
    uploads.lock().unwrap().push(Value::Object(part));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A connection that writes each `x-testkit-raw-HEX:` header name hyper sends as
/// `x-goog-meta-KEY:`, the key's bytes as they are: what hyper (rightly) cannot send, and Cloud
/// Storage does. A response head reaches it in one write (hyper flattens its buffers for a
/// writer without vectored writes), so a marker is never cut in two.
struct RawHeaders<S> {
    inner: S,
    /// Rewritten bytes accepted from hyper and not yet written.
    pending: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> RawHeaders<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// `buf` with every `\r\nx-testkit-raw-HEX:` turned into `\r\nx-goog-meta-KEY:`.
fn unmask(buf: &[u8]) -> Vec<u8> {
    let marker = format!("\r\n{RAW}");
    let marker = marker.as_bytes();
    let (mut out, mut rest) = (Vec::with_capacity(buf.len()), buf);
    while let Some(at) = rest.windows(marker.len()).position(|w| w == marker) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(META.as_bytes());
        rest = &rest[at + marker.len()..];
        let end = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
        let key: Vec<u8> = rest[..end]
            .chunks(2)
            .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
            .collect();
        out.extend_from_slice(&key);
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RawHeaders<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if !buf.windows(RAW.len()).any(|w| w == RAW.as_bytes()) {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.pending = unmask(buf);
        // Accepted whole; written by this call as far as the socket takes, the rest later.
        let _ = self.poll_pending(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RawHeaders<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl std::ops::Deref for HttpProxy {
    type Target = crate::faults::Faults;

    /// The fault knobs: latency, 403 for 412, throttling, failing uploads and reads.
    fn deref(&self) -> &Self::Target {
        &self.state.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_header_names_are_written_byte_for_byte() {
        let head = format!("HTTP/1.1 200 OK\r\n{RAW}{}: 1\r\nx-a: 2\r\n\r\n", hex(b"app/version"));
        let out = unmask(head.as_bytes());
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nx-goog-meta-app/version: 1\r\nx-a: 2\r\n\r\n");
    }
}
