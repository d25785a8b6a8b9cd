//! An HTTP proxy in front of fake-gcs-server, served with hyper and forwarded with reqwest:
//!
//! * **Latency**: every answer is held back by a delay drawn from a [`Latency`] (log-normal: a
//!   median and a tail), as real Cloud Storage takes tens of milliseconds, now and then far
//!   more, where the emulator takes less than one.
//! * **Recording** ([`HttpProxy::recording`]): fake-gcs-server drops the content type the storage
//!   client sends in the JSON part of its multipart upload; the proxy keeps that part of every
//!   upload. Off otherwise: it costs CPU and memory per upload, which a benchmark must not pay.
//!
//! * **403 for 412**: Cloud Storage may answer a create-only write of an existing object with
//!   403 when the caller may not read objects; the proxy can turn the emulator's 412 into that.
//! * **Throttling** ([`HttpProxy::throttle`]): uploads above a rate get 429, as a bucket's
//!   index ramping up answers them.
//! * **Failing uploads** ([`HttpProxy::fail_uploads`]): every upload gets a chosen status (403,
//!   429, 503) until switched off, as a bucket whose permission was revoked, whose quota is
//!   spent or whose backend is down answers them; the chaos soak switches it in windows.
//!   [`HttpProxy::fail_reads`] does the same to reads of an object's data (`alt=media`), as
//!   Cloud Storage answers them once the object's encryption key is disabled.
//!
//! * **Metadata as the service sends it**: Cloud Storage returns an object's custom metadata
//!   with its data (`alt=media`) as `x-goog-meta-KEY` headers, each key byte for byte, even one
//!   that is not a valid header name (`app/version`, `a b`); fake-gcs-server drops such entries.
//!   The proxy sends every entry of the object's resource that way ([`RawHeaders`]).
//!
//! Latency, 403 for 412, throttling and failing uploads and reads are `faults.rs`, which
//! [`crate::FastGcs`] shares. The proxy runs on the tokio runtime that started it; dropping it
//! stops it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::Latency;
use crate::faults::Faults;
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct HttpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    faults: Faults,
    /// `None` unless started with [`HttpProxy::recording`].
    uploads: Option<Mutex<Vec<Value>>>,
    connections: AtomicU64,
}

impl HttpProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream` (fake-gcs-server).
    pub async fn start(upstream: SocketAddr) -> Result<HttpProxy> {
        Self::start_with(upstream, false).await
    }

    /// As [`HttpProxy::start`], and keeps every upload for [`HttpProxy::recorded_uploads`].
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
            connections: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(HttpProxy { addr, state, accept })
    }

    /// `http://127.0.0.1:PORT`, to use as `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, e.g. as the upstream of a [`crate::Proxy`] or a [`crate::TlsFront`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every answer back by a delay drawn from `latency`, anew for each request.
    pub fn set_latency(&self, latency: Latency) {
        self.state.faults.set_latency(latency);
    }

    /// Answers 403 where the emulator answers 412 (a create-only write of an existing object).
    pub fn forbid_existing(&self, on: bool) {
        self.state.faults.forbid_existing(on);
    }

    /// Answers 429 to the uploads beyond `per_second` in each second (0: no limit).
    pub fn throttle(&self, per_second: u64) {
        self.state.faults.throttle(per_second);
    }

    /// Answers every upload with `status` (e.g. 403, 429, 503) instead of forwarding it, from now
    /// until called with `None`; other requests pass.
    pub fn fail_uploads(&self, status: Option<StatusCode>) {
        self.state.faults.fail_uploads(status);
    }

    /// Answers every read of an object's data (`alt=media`) with `status` instead of forwarding
    /// it, from now until called with `None`; other requests pass.
    pub fn fail_reads(&self, status: Option<StatusCode>) {
        self.state.faults.fail_reads(status);
    }

    /// Uploads answered with 429 so far.
    pub fn throttled(&self) -> u64 {
        self.state.faults.throttled()
    }

    /// The JSON part of every multipart upload so far, with `name` from the URL added, e.g.
    /// `{"name":"pubsub/123","contentType":"text/plain; charset=utf-8","metadata":{...}}`;
    /// empty unless started with [`HttpProxy::recording`].
    pub fn recorded_uploads(&self) -> Vec<Value> {
        self.state.uploads.as_ref().map(|u| u.lock().unwrap().clone()).unwrap_or_default()
    }

    /// Connections the worker opened to the proxy so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| forward(state.clone(), r));
            let stream = RawHeaders { inner: stream, pending: Vec::new() };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "transfer-encoding" | "connection")
        {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.body(body).send().await?;
    let status = state.faults.status(answer.status());
    let media = target.contains("alt=media") && status.is_success();
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        let meta = media && name.as_str().starts_with(META);
        if !meta && !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection")
        {
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
        Ok(entries
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect())
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
