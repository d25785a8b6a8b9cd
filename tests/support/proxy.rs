//! A loopback TCP proxy for putting in front of an emulator (normally fake-gcs-server).
//!
//! Two jobs:
//! * **Recording.** fake-gcs-server drops the content type that the Rust storage client
//!   sends in the JSON part of its multipart upload, so tests cannot read it back. The
//!   proxy parses the client->server HTTP/1.1 bytes of each connection (keep-alive,
//!   several requests per connection, bodies in arbitrary chunks) and keeps the JSON
//!   metadata part of every multipart upload: see [`Proxy::recorded_uploads`].
//! * **Fault injection.** [`Proxy::set_mode`] switches between passing traffic,
//!   refusing, resetting, hanging and delaying, to test the worker's retries and timeouts
//!   without killing the emulator.
//!
//! The proxy runs on the tokio runtime that called [`Proxy::start`]: create it inside the
//! test that uses it. Dropping it closes the listener and every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways (and record uploads).
    Pass,
    /// Accept, then close at once (FIN): "connection closed before message completed".
    Refuse,
    /// Accept, then reset (RST via SO_LINGER 0): "connection reset by peer".
    Reset,
    /// Accept and never answer; open connections freeze too. Such connections stay open
    /// until the mode changes again or the proxy is dropped, then they are closed. Tests
    /// the worker's timeouts.
    Hang,
    /// Forward, but deliver each server->client chunk this long after it arrived (a
    /// constant added latency per response, not per chunk). Applies to open connections
    /// too, since a client reuses keep-alive connections.
    Delay(Duration),
}

/// See the module docs.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    uploads: Mutex<Vec<Value>>,
    requests: Mutex<Vec<String>>,
    accepted: AtomicU64,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream` (e.g.
    /// `emulators.storage_addr()`), starting in [`Mode::Pass`].
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, rx, shared.clone()));
        Ok(Proxy {
            addr,
            mode,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, to use as `STORAGE_EMULATOR_HOST` or a client endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections follow `mode` from now on. Refuse and Reset also close the open
    /// connections (FIN and RST), and Hang freezes them (open, never answering; closed at
    /// the next mode change), so that keep-alive connections cannot bypass the fault.
    /// Closing them on Hang would turn a hang into an immediate connection error. Pass
    /// and Delay leave open connections as they are (Delay applies to them at once).
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// The JSON metadata part of every multipart upload seen so far, in arrival order, e.g.
    /// `{"name":"pubsub/123","contentType":"application/json","metadata":{...}}`.
    pub fn recorded_uploads(&self) -> Vec<Value> {
        self.shared.uploads.lock().unwrap().clone()
    }

    /// `METHOD target` of every HTTP/1.1 request seen so far, e.g.
    /// `POST /upload/storage/v1/b/B/o?uploadType=multipart&ifGenerationMatch=0`.
    pub fn recorded_requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Forget what was recorded.
    pub fn clear_recorded(&self) {
        self.shared.uploads.lock().unwrap().clear();
        self.shared.requests.lock().unwrap().clear();
    }

    /// Connections accepted so far (in any mode).
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Closes the listener now; connection tasks see the watch sender go away and exit.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut rx: watch::Receiver<Mode>,
    shared: Arc<Shared>,
) {
    loop {
        let client = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = rx.changed() => match r {
                Ok(()) => continue,
                Err(_) => return, // proxy dropped
            },
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let mode = *rx.borrow_and_update();
        let rx = rx.clone();
        match mode {
            Mode::Refuse => drop(client),
            Mode::Reset => {
                let _ = client.set_zero_linger();
                drop(client);
            }
            Mode::Hang => {
                tokio::spawn(async move {
                    // Hold the socket, unread, while the mode stays Hang.
                    hold_while_hanging(rx).await;
                    drop(client);
                });
            }
            Mode::Pass | Mode::Delay(_) => {
                tokio::spawn(forward(client, upstream, rx, shared.clone()));
            }
        }
    }
}

/// Returns once the mode is no longer Hang, or the proxy is dropped.
async fn hold_while_hanging(mut rx: watch::Receiver<Mode>) {
    while *rx.borrow_and_update() == Mode::Hang {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Forwards one connection until both sides are done, or until a mode that closes open
/// connections is set.
async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    rx: watch::Receiver<Mode>,
    shared: Arc<Shared>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        // Upstream down: the client sees its connection closed, as with a dead server
        // behind a load balancer.
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();

    let killed = {
        let mut kill_rx = rx.clone();
        let c2s = async {
            let mut rec = Recorder::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        rec.feed(&buf[..n], &shared);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = sw.shutdown().await;
        };
        let s2c = async {
            // Delay line: the reader stamps each chunk with its due time, the writer waits
            // for it, so latency is added once, not once per chunk.
            let (tx, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            let delay_rx = rx.clone();
            let reader = async {
                // Owns the sender so that the writer sees the end when the reader stops.
                let tx = tx;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let delay = match *delay_rx.borrow() {
                                Mode::Delay(d) => d,
                                _ => Duration::ZERO,
                            };
                            if tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            };
            let writer = async {
                while let Some((at, bytes)) = due.recv().await {
                    tokio::time::sleep_until(at).await;
                    if cw.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                let _ = cw.shutdown().await;
            };
            tokio::join!(reader, writer);
        };
        let kill = async {
            loop {
                if kill_rx.changed().await.is_err() {
                    return Mode::Refuse; // proxy dropped: just close
                }
                let m = *kill_rx.borrow_and_update();
                if matches!(m, Mode::Refuse | Mode::Reset | Mode::Hang) {
                    return m;
                }
            }
        };
        tokio::select! {
            _ = async { tokio::join!(c2s, s2c) } => None,
            m = kill => Some(m),
        }
    };
    match killed {
        Some(Mode::Reset) => {
            let _ = cr.as_ref().set_zero_linger();
        }
        Some(Mode::Hang) => {
            // Freeze: the upstream side goes away, the client keeps an open socket that
            // never answers, until the mode changes again or the proxy is dropped.
            drop((sr, sw));
            hold_while_hanging(rx).await;
        }
        _ => {}
    }
    // Dropping the halves closes the sockets.
}

/// Incremental parser of the client->server side of an HTTP/1.1 connection: records each
/// request line, and the JSON part of each multipart upload.
///
/// Bodies are framed by Content-Length or de-chunked (the Rust storage client sends its
/// multipart uploads with `Transfer-Encoding: chunked`, and chunk boundaries fall inside
/// the part headers), so payload bytes are never mistaken for requests.
#[derive(Default)]
struct Recorder {
    /// Wire bytes not parsed yet.
    buf: Vec<u8>,
    state: RecState,
    /// The current request is a multipart upload whose JSON part was not found yet.
    upload: Option<PendingUpload>,
}

struct PendingUpload {
    /// Request target (path and query), for the object name.
    target: String,
    /// The start of the (de-chunked) body.
    body: Vec<u8>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum RecState {
    /// Waiting for a complete request head.
    #[default]
    Head,
    /// Inside a Content-Length body with this many bytes left.
    Body(usize),
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Inside a chunk with this many bytes left.
    ChunkData(usize),
    /// Waiting for the CRLF that ends a chunk.
    ChunkEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailer,
    /// Not HTTP/1.1 (e.g. HTTP/2 prior knowledge for gRPC) or unparseable: stop.
    Off,
}

/// Longest request head or chunk-size line we wait for before giving up.
const MAX_HEAD: usize = 64 * 1024;
/// How much of a multipart body we keep while looking for its JSON part.
const MAX_JSON_PREFIX: usize = 1024 * 1024;

impl Recorder {
    fn feed(&mut self, chunk: &[u8], shared: &Shared) {
        if self.state == RecState::Off {
            return;
        }
        self.buf.extend_from_slice(chunk);
        loop {
            match self.state {
                RecState::Off => {
                    self.buf = Vec::new();
                    return;
                }
                RecState::Head => {
                    let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                        if self.buf.len() > MAX_HEAD {
                            self.state = RecState::Off;
                        }
                        return;
                    };
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end + 4);
                    self.on_head(&head, shared);
                }
                RecState::Body(left) | RecState::ChunkData(left) => {
                    let n = left.min(self.buf.len());
                    if self.upload.is_some() {
                        let data = self.buf[..n].to_vec();
                        self.on_body(&data, shared);
                    }
                    self.buf.drain(..n);
                    let done = n == left;
                    self.state = match (self.state, done) {
                        (RecState::Body(_), true) => {
                            self.end_request();
                            RecState::Head
                        }
                        (RecState::Body(_), false) => RecState::Body(left - n),
                        (_, true) => RecState::ChunkEnd,
                        (_, false) => RecState::ChunkData(left - n),
                    };
                    if !done {
                        return;
                    }
                }
                RecState::ChunkSize | RecState::Trailer => {
                    let Some(eol) = find(&self.buf, b"\r\n") else {
                        if self.buf.len() > MAX_HEAD {
                            self.state = RecState::Off;
                        }
                        return;
                    };
                    let line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
                    self.buf.drain(..eol + 2);
                    if self.state == RecState::Trailer {
                        if line.is_empty() {
                            self.end_request();
                            self.state = RecState::Head;
                        }
                        continue;
                    }
                    let hex = line.split(';').next().unwrap_or_default().trim();
                    self.state = match usize::from_str_radix(hex, 16) {
                        Ok(0) => RecState::Trailer,
                        Ok(n) => RecState::ChunkData(n),
                        Err(_) => RecState::Off,
                    };
                }
                RecState::ChunkEnd => {
                    if self.buf.len() < 2 {
                        return;
                    }
                    self.state = if self.buf.starts_with(b"\r\n") {
                        RecState::ChunkSize
                    } else {
                        RecState::Off
                    };
                    self.buf.drain(..2);
                }
            }
        }
    }

    fn on_head(&mut self, head: &str, shared: &Shared) {
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (method, target, version) = (parts.next(), parts.next(), parts.next());
        let (Some(method), Some(target), Some("HTTP/1.1" | "HTTP/1.0")) = (method, target, version)
        else {
            self.state = RecState::Off;
            return;
        };
        shared
            .requests
            .lock()
            .unwrap()
            .push(format!("{method} {target}"));
        let mut length = 0usize;
        let mut chunked = false;
        let mut multipart = target.contains("uploadType=multipart");
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "content-type" => multipart |= v.starts_with("multipart/"),
                _ => {}
            }
        }
        self.upload = multipart.then(|| PendingUpload {
            target: target.to_string(),
            body: Vec::new(),
        });
        self.state = if chunked {
            RecState::ChunkSize
        } else if length == 0 {
            self.end_request();
            RecState::Head
        } else {
            RecState::Body(length)
        };
    }

    fn on_body(&mut self, data: &[u8], shared: &Shared) {
        let Some(up) = self.upload.as_mut() else {
            return;
        };
        let room = MAX_JSON_PREFIX.saturating_sub(up.body.len());
        up.body.extend_from_slice(&data[..data.len().min(room)]);
        match up.json_part() {
            JsonPart::Found(v) => {
                shared.uploads.lock().unwrap().push(v);
                self.upload = None;
            }
            JsonPart::NotYet if up.body.len() < MAX_JSON_PREFIX => {}
            JsonPart::NotYet | JsonPart::Absent => self.upload = None,
        }
    }

    fn end_request(&mut self) {
        self.upload = None;
    }
}

enum JsonPart {
    Found(Value),
    NotYet,
    Absent,
}

impl PendingUpload {
    /// The JSON object after the first part's headers, if those say `application/json`.
    /// The Rust client sends the object name only in the URL (`?name=`), so `name` and
    /// `bucket` are added from the URL when the JSON does not carry them.
    fn json_part(&self) -> JsonPart {
        let Some(hdr_end) = find(&self.body, b"\r\n\r\n") else {
            return JsonPart::NotYet;
        };
        let part_head = String::from_utf8_lossy(&self.body[..hdr_end]).to_ascii_lowercase();
        if !part_head.contains("application/json") {
            return JsonPart::Absent;
        }
        match serde_json::Deserializer::from_slice(&self.body[hdr_end + 4..])
            .into_iter::<Value>()
            .next()
        {
            Some(Ok(Value::Object(mut v))) => {
                let (path, query) = self.target.split_once('?').unwrap_or((&self.target, ""));
                if !v.contains_key("name")
                    && let Some(name) = query.split('&').find_map(|kv| kv.strip_prefix("name="))
                {
                    v.insert("name".into(), Value::String(url_decode(name)));
                }
                if !v.contains_key("bucket")
                    && let Some(b) = path.split("/b/").nth(1).and_then(|s| s.split('/').next())
                {
                    v.insert("bucket".into(), Value::String(url_decode(b)));
                }
                JsonPart::Found(Value::Object(v))
            }
            Some(Err(e)) if e.is_eof() => JsonPart::NotYet,
            None => JsonPart::NotYet,
            Some(_) => JsonPart::Absent,
        }
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Position of the first `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
