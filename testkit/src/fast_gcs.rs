//! [`FastGcs`]: Cloud Storage's JSON API in memory, the part of it that the worker and the tests
//! use, cheap enough that a benchmark measures the worker and not its storage (fake-gcs-server
//! spends 1.4-2.5 ms of CPU per object, more than the worker's whole message).
//!
//! It serves, at the JSON API's paths:
//!
//! - buckets: create (`POST /storage/v1/b?project=P`, 409 if it exists), get, delete (409 unless
//!   empty);
//! - uploads (`POST /upload/storage/v1/b/B/o?uploadType=multipart|media&name=N`), with the
//!   preconditions `ifGenerationMatch` (0: create-only, 412 when the object exists) and
//!   `ifGenerationNotMatch`, `kmsKeyName`, and the CRC32C the client sends checked as the
//!   service checks it (400 on a mismatch);
//! - objects: the resource (`GET /storage/v1/b/B/o/N`, the whole of it: `fields=` is ignored),
//!   the data (`alt=media` there or under `/download`, as stored: no decompressive
//!   transcoding), a metadata patch (`PATCH` with `{"metadata":{..}}`, `null` removes a key),
//!   delete, and the listing in name order (`prefix`, `maxResults`, `pageToken`);
//! - 404 for a missing bucket or object, in the JSON API's error shape.
//!
//! Left out: resumable uploads (the worker's messages are below the client's 16 MiB threshold),
//! versions, ACLs, composition, MD5 (echoed when sent, never computed), `delimiter` listings,
//! and metadata keys that are not valid header names on a download (see [`crate::HttpProxy`]).
//!
//! Each object's data is a slice of its upload's body (`Bytes`), its resource is rendered once
//! per change and sent as it is; a bucket is a `Mutex<BTreeMap>`. The faults are
//! [`crate::HttpProxy`]'s, knob for knob (`faults.rs`). The server runs on a thread of its own
//! (a current-thread runtime), so that its CPU time is its own ([`FastGcs::cpu_time`]) and it
//! serves whatever runtime its caller uses; dropping it stops it.

mod multipart;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::faults::{Faults, error_body};
use crate::rest::url_encode;

/// A running in-memory Cloud Storage on 127.0.0.1.
pub struct FastGcs {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FastGcs {
    /// Listens on a free 127.0.0.1 port, served by a thread of its own.
    pub fn start() -> Result<FastGcs> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listener = {
            let _entered = runtime.enter();
            crate::listen_on_loopback()?
        };
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            faults: Faults::new(),
            buckets: Mutex::new(HashMap::new()),
            generation: AtomicI64::new(0),
            connections: Arc::new(AtomicU64::new(0)),
        });
        let (stop, stopped) = oneshot::channel();
        let (served, connections) = (state.clone(), state.connections.clone());
        let serve = move |stream: tokio::net::TcpStream| {
            let state = served.clone();
            async move {
                let _ = stream.set_nodelay(true);
                let service = hyper::service::service_fn(move |r| answer(state.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        };
        let thread = std::thread::Builder::new()
            .name("fast-gcs".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Dropping the handle when stopped closes every connection.
                    let _accept = crate::accept_each(listener, connections, serve);
                    let _ = stopped.await;
                });
            })
            .context("starting the FastGcs thread")?;
        Ok(FastGcs { addr, state, stop: Some(stop), thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`, to use as `STORAGE_EMULATOR_HOST` or a [`crate::Gcs`]'s base.
    pub fn url(&self) -> String {
        self.state.base.clone()
    }

    /// `127.0.0.1:PORT`, e.g. as the upstream of a proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CPU time the server's thread has used so far: all of the server's work (but the
    /// kernel's share of loopback TCP, part of which is counted to the sending thread).
    pub fn cpu_time(&self) -> Result<Duration> {
        use std::os::unix::thread::JoinHandleExt as _;
        let thread = self.thread.as_ref().context("no server thread")?;
        let mut clock: libc::clockid_t = 0;
        let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: the thread is not joined before `self` is dropped, so its pthread_t is valid;
        // both calls only write to the locals passed.
        unsafe {
            let error = libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock);
            anyhow::ensure!(error == 0, "pthread_getcpuclockid: error {error}");
            anyhow::ensure!(libc::clock_gettime(clock, &mut time) == 0, "clock_gettime failed");
        }
        Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
    }

    /// Drops bucket `name` and all its objects at once (the JSON API deletes only an empty
    /// bucket), so that a long benchmark does not keep every run's objects in memory.
    pub fn remove_bucket(&self, name: &str) {
        self.state.buckets.lock().unwrap().remove(name);
    }

    /// Connections opened to the server so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FastGcs {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    /// `http://127.0.0.1:PORT`, for the links in resources.
    base: String,
    faults: Faults,
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    /// The last generation given: microseconds since the epoch, as the service's, made unique.
    generation: AtomicI64,
    connections: Arc<AtomicU64>,
}

struct Bucket {
    name: String,
    /// The bucket's resource, as sent.
    resource: Bytes,
    objects: Mutex<BTreeMap<String, Arc<Object>>>,
}

struct Object {
    generation: i64,
    metageneration: i64,
    /// The resource's fields; `resource` is them rendered.
    fields: Map<String, Value>,
    resource: Bytes,
    data: Bytes,
}

/// An answer, or the error that replaces it.
type Answer = Result<Response<Full<Bytes>>, Failure>;

/// The status and message of an error answer.
type Failure = (StatusCode, String);

/// What an upload brings: the resource's fields it sets, the data, and the data's media type.
struct Upload {
    fields: Map<String, Value>,
    data: Bytes,
    media_type: Option<String>,
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body = match body.collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("reading the request: {e}"))),
    };
    let answer = match state.faults.injected(target) {
        Some(fault) => Err(fault),
        None => body
            .and_then(|body| state.route(&parts.method, &parts.uri, &parts.headers, body))
            .map_err(|(status, message)| (status, error_body(status, &message))),
    };
    let mut response = answer.unwrap_or_else(|(status, body)| json(status, body));
    *response.status_mut() = state.faults.status(response.status());
    state.faults.hold().await;
    Ok(response)
}

impl State {
    fn route(&self, method: &Method, uri: &hyper::Uri, headers: &HeaderMap, body: Bytes) -> Answer {
        let (path, query) = (uri.path(), uri.query().unwrap_or(""));
        let not_found = || Err((StatusCode::NOT_FOUND, format!("Not Found: {method} {path}")));
        if let Some(rest) = path.strip_prefix("/upload/storage/v1/b/") {
            return match (method, rest.strip_suffix("/o")) {
                (&Method::POST, Some(bucket)) => {
                    self.upload(&decode(bucket)?, query, headers, body)
                }
                _ => not_found(),
            };
        }
        if let Some(rest) = path.strip_prefix("/download/storage/v1/b/") {
            return match (method, rest.split_once("/o/")) {
                (&Method::GET, Some((b, name))) => self.media(&decode(b)?, &decode(name)?),
                _ => not_found(),
            };
        }
        if path == "/storage/v1/b" && method == Method::POST {
            return self.create_bucket(&body);
        }
        let Some(rest) = path.strip_prefix("/storage/v1/b/") else { return not_found() };
        let Some((bucket, objects)) = rest.split_once("/o") else {
            return match *method {
                Method::GET => {
                    Ok(json(StatusCode::OK, self.bucket(&decode(rest)?)?.resource.clone()))
                }
                Method::DELETE => self.delete_bucket(&decode(rest)?),
                _ => not_found(),
            };
        };
        let bucket = decode(bucket)?;
        if objects.is_empty() && method == Method::GET {
            return self.list(&bucket, query);
        }
        let Some(name) = objects.strip_prefix('/') else { return not_found() };
        let name = decode(name)?;
        match *method {
            Method::GET if param(query, "alt").as_deref() == Some("media") => {
                self.media(&bucket, &name)
            }
            Method::GET => Ok(json(StatusCode::OK, self.object(&bucket, &name)?.resource.clone())),
            Method::PATCH => self.patch(&bucket, &name, &body),
            Method::DELETE => self.delete(&bucket, &name),
            _ => not_found(),
        }
    }

    fn create_bucket(&self, body: &[u8]) -> Answer {
        let request: Value = serde_json::from_slice(body).map_err(invalid)?;
        let Some(name) = request["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err((StatusCode::BAD_REQUEST, "Required: name".into()));
        };
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.contains_key(name) {
            let message = "Your previous request to create the named bucket succeeded and you \
                           already own it.";
            return Err((StatusCode::CONFLICT, message.into()));
        }
        let created = timestamp(self.next_generation());
        let resource = serde_json::json!({
            "kind": "storage#bucket", "id": name, "name": name,
            "selfLink": format!("{}/storage/v1/b/{}", self.base, url_encode(name)),
            "projectNumber": "0", "metageneration": "1", "location": "US",
            "storageClass": "STANDARD", "etag": "CAE=", "timeCreated": created, "updated": created,
        });
        let resource = Bytes::from(resource.to_string());
        let bucket = Bucket {
            name: name.to_string(),
            resource: resource.clone(),
            objects: Mutex::default(),
        };
        buckets.insert(name.to_string(), Arc::new(bucket));
        Ok(json(StatusCode::OK, resource))
    }

    fn delete_bucket(&self, name: &str) -> Answer {
        let mut buckets = self.buckets.lock().unwrap();
        let bucket = buckets.get(name).ok_or_else(|| no_bucket(name))?;
        if !bucket.objects.lock().unwrap().is_empty() {
            return Err((
                StatusCode::CONFLICT,
                "The bucket you tried to delete is not empty.".into(),
            ));
        }
        buckets.remove(name);
        Ok(empty(StatusCode::NO_CONTENT))
    }

    fn upload(&self, bucket: &str, query: &str, headers: &HeaderMap, body: Bytes) -> Answer {
        let bucket = self.bucket(bucket)?;
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let upload = match param(query, "uploadType").as_deref() {
            Some("multipart") => multipart_upload(content_type.unwrap_or(""), &body)?,
            Some("media") => {
                Upload { fields: Map::new(), data: body, media_type: content_type.map(Into::into) }
            }
            other => {
                let message = format!("uploadType {other:?} is not served by FastGcs");
                return Err((StatusCode::BAD_REQUEST, message));
            }
        };
        let Upload { mut fields, data, media_type } = upload;
        let name = match param(query, "name") {
            Some(name) => name.into_owned(),
            None => {
                fields.get("name").and_then(Value::as_str).map(str::to_string).unwrap_or_default()
            }
        };
        if name.is_empty() {
            return Err((StatusCode::BAD_REQUEST, "Required: name".into()));
        }
        let crc32c = BASE64_STANDARD.encode(crc32c::crc32c(&data).to_be_bytes());
        if let Some(sent) = fields.get("crc32c").and_then(Value::as_str)
            && sent != crc32c
        {
            let message =
                format!("Provided CRC32C \"{sent}\" doesn't match calculated CRC32C \"{crc32c}\".");
            return Err((StatusCode::BAD_REQUEST, message));
        }
        let generation = self.next_generation();
        let time = timestamp(generation);
        if !fields.contains_key("contentType") {
            let media_type = media_type.unwrap_or_else(|| "application/octet-stream".into());
            fields.insert("contentType".into(), media_type.into());
        }
        if !fields.contains_key("storageClass") {
            fields.insert("storageClass".into(), "STANDARD".into());
        }
        if let Some(key) = param(query, "kmsKeyName") {
            fields.insert("kmsKeyName".into(), key.into_owned().into());
        }
        let (b, n) = (url_encode(&bucket.name), url_encode(&name));
        let set = [
            ("kind", "storage#object".into()),
            ("id", format!("{}/{name}/{generation}", bucket.name)),
            ("selfLink", format!("{}/storage/v1/b/{b}/o/{n}", self.base)),
            ("mediaLink", format!("{}/download/storage/v1/b/{b}/o/{n}?alt=media", self.base)),
            ("name", name.clone()),
            ("bucket", bucket.name.clone()),
            ("generation", generation.to_string()),
            ("size", data.len().to_string()),
            ("crc32c", crc32c),
            ("timeCreated", time.clone()),
            ("timeFinalized", time.clone()),
            ("updated", time.clone()),
            ("timeStorageClassUpdated", time),
        ];
        for (key, value) in set {
            fields.insert(key.into(), value.into());
        }
        let object = Object::new(generation, 1, fields, data);
        let mut objects = bucket.objects.lock().unwrap();
        let existing = objects.get(&name).map_or(0, |o| o.generation);
        let matches = |key| param(query, key).and_then(|g| g.parse::<i64>().ok());
        let held = matches("ifGenerationMatch").is_none_or(|g| g == existing)
            && matches("ifGenerationNotMatch").is_none_or(|g| g != existing);
        if !held {
            return Err(precondition_failed());
        }
        let resource = object.resource.clone();
        objects.insert(name, Arc::new(object));
        Ok(json(StatusCode::OK, resource))
    }

    fn media(&self, bucket: &str, name: &str) -> Answer {
        let object = self.object(bucket, name)?;
        let field = |key: &str| object.fields.get(key).and_then(Value::as_str).unwrap_or("");
        let mut response = Response::builder()
            .header(CONTENT_TYPE, field("contentType"))
            .header("x-goog-generation", object.generation)
            .header("x-goog-metageneration", object.metageneration)
            .header("x-goog-stored-content-length", object.data.len())
            .header("x-goog-hash", format!("crc32c={}", field("crc32c")))
            .header("x-goog-storage-class", field("storageClass"));
        let encoding = field("contentEncoding");
        response = response.header(
            "x-goog-stored-content-encoding",
            match encoding {
                "" => "identity",
                encoding => encoding,
            },
        );
        if !encoding.is_empty() {
            response = response.header("content-encoding", encoding);
        }
        let metadata = object.fields.get("metadata").and_then(Value::as_object);
        for (key, value) in metadata.into_iter().flatten() {
            let name = HeaderName::from_bytes(format!("x-goog-meta-{key}").as_bytes());
            let value = HeaderValue::from_str(value.as_str().unwrap_or(""));
            if let (Ok(name), Ok(value)) = (name, value) {
                response = response.header(name, value);
            }
        }
        response.body(Full::new(object.data.clone())).map_err(internal)
    }

    fn patch(&self, bucket: &str, name: &str, body: &[u8]) -> Answer {
        let Value::Object(patch) = serde_json::from_slice(body).map_err(invalid)? else {
            return Err((StatusCode::BAD_REQUEST, "the patch is not a JSON object".into()));
        };
        let bucket = self.bucket(bucket)?;
        let mut objects = bucket.objects.lock().unwrap();
        let object = objects.get(name).ok_or_else(|| no_object(&bucket.name, name))?;
        let mut fields = object.fields.clone();
        for (key, value) in patch {
            match (key.as_str(), value) {
                ("metadata", Value::Object(entries)) => {
                    let metadata = fields.entry("metadata").or_insert_with(|| Map::new().into());
                    if !metadata.is_object() {
                        *metadata = Map::new().into();
                    }
                    let Some(metadata) = metadata.as_object_mut() else { continue };
                    for (key, value) in entries {
                        match value {
                            Value::Null => metadata.remove(&key),
                            value => metadata.insert(key, value),
                        };
                    }
                }
                ("metadata", Value::Null) => drop(fields.remove("metadata")),
                (
                    "contentType" | "contentEncoding" | "contentDisposition" | "contentLanguage"
                    | "cacheControl" | "customTime",
                    value,
                ) => drop(fields.insert(key, value)),
                _ => {}
            }
        }
        let metageneration = object.metageneration + 1;
        fields.insert("metageneration".into(), metageneration.to_string().into());
        fields.insert("updated".into(), timestamp(self.next_generation()).into());
        let object = Object::new(object.generation, metageneration, fields, object.data.clone());
        let resource = object.resource.clone();
        objects.insert(name.to_string(), Arc::new(object));
        Ok(json(StatusCode::OK, resource))
    }

    fn delete(&self, bucket: &str, name: &str) -> Answer {
        let bucket = self.bucket(bucket)?;
        let removed = bucket.objects.lock().unwrap().remove(name);
        removed.ok_or_else(|| no_object(&bucket.name, name))?;
        Ok(empty(StatusCode::NO_CONTENT))
    }

    /// A page of the bucket's objects in name order: `maxResults` (at most 1,000) from the
    /// first name after `pageToken` (the last name of the previous page) that has `prefix`.
    fn list(&self, bucket: &str, query: &str) -> Answer {
        let bucket = self.bucket(bucket)?;
        let prefix = param(query, "prefix").unwrap_or_default();
        let max = param(query, "maxResults").and_then(|m| m.parse().ok()).unwrap_or(1000);
        let max = usize::clamp(max, 1, 1000);
        let token = param(query, "pageToken").filter(|t| t.as_ref() > prefix.as_ref());
        let from = match &token {
            Some(token) => Bound::Excluded(token.as_ref()),
            None => Bound::Included(prefix.as_ref()),
        };
        let objects = bucket.objects.lock().unwrap();
        let mut page: Vec<Arc<Object>> = (objects.range::<str, _>((from, Bound::Unbounded)))
            .take_while(|(name, _)| name.starts_with(prefix.as_ref()))
            .take(max + 1)
            .map(|(_, object)| object.clone())
            .collect();
        drop(objects);
        let more = page.len() > max;
        page.truncate(max);
        let mut out = br#"{"kind":"storage#objects""#.to_vec();
        if more && let Some(last) = page.last() {
            let last = last.fields.get("name").cloned().unwrap_or_default();
            out.extend_from_slice(format!(r#","nextPageToken":{last}"#).as_bytes());
        }
        if !page.is_empty() {
            out.extend_from_slice(br#","items":["#);
            for (i, object) in page.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&object.resource);
            }
            out.push(b']');
        }
        out.push(b'}');
        Ok(json(StatusCode::OK, out.into()))
    }

    fn bucket(&self, name: &str) -> Result<Arc<Bucket>, Failure> {
        let bucket = self.buckets.lock().unwrap().get(name).cloned();
        bucket.ok_or_else(|| no_bucket(name))
    }

    fn object(&self, bucket: &str, name: &str) -> Result<Arc<Object>, Failure> {
        let bucket = self.bucket(bucket)?;
        let object = bucket.objects.lock().unwrap().get(name).cloned();
        object.ok_or_else(|| no_object(&bucket.name, name))
    }

    /// A new generation: the time in microseconds, as the service's, and above every earlier one.
    fn next_generation(&self) -> i64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let previous = self
            .generation
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)));
        let previous = previous.unwrap_or_else(|last| last);
        now.max(previous + 1)
    }
}

impl Object {
    fn new(
        generation: i64,
        metageneration: i64,
        mut fields: Map<String, Value>,
        data: Bytes,
    ) -> Self {
        fields.insert("metageneration".into(), metageneration.to_string().into());
        fields.insert("etag".into(), format!("{generation:x}.{metageneration}").into());
        // Most resources fit: no copies as it grows.
        let mut resource = Vec::with_capacity(1024);
        let _ = serde_json::to_writer(&mut resource, &fields);
        let resource = Bytes::from(resource);
        Object { generation, metageneration, fields, resource, data }
    }
}

/// A multipart upload: its first part is the resource, its second the data (a slice of
/// `body`); a third, the checksums some clients compute while sending, adds its fields to the
/// resource's.
fn multipart_upload(content_type: &str, body: &Bytes) -> Result<Upload, Failure> {
    let malformed = || (StatusCode::BAD_REQUEST, "a malformed multipart upload".to_string());
    let boundary = multipart::boundary(content_type).ok_or_else(malformed)?;
    let parts = multipart::parts(body, boundary).ok_or_else(malformed)?;
    let [resource, media, rest @ ..] = parts.as_slice() else { return Err(malformed()) };
    let mut fields: Map<String, Value> =
        serde_json::from_slice(&body[resource.content.clone()]).map_err(invalid)?;
    for part in rest {
        let checksums: Map<String, Value> =
            serde_json::from_slice(&body[part.content.clone()]).map_err(invalid)?;
        fields.extend(checksums);
    }
    let media_type = multipart::header(&body[media.head.clone()], "content-type");
    let data = body.slice(media.content.clone());
    Ok(Upload { fields, data, media_type: media_type.map(Into::into) })
}

/// The value of `key` in a query string, decoded.
fn param<'a>(query: &'a str, key: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query.as_bytes()).find_map(|(k, v)| (k == key).then_some(v))
}

/// A path segment, percent-decoded (an object name may hold any character, `/` included).
fn decode(segment: &str) -> Result<Cow<'_, str>, Failure> {
    percent_encoding::percent_decode_str(segment).decode_utf8().map_err(invalid)
}

/// RFC 3339 in UTC with microseconds, as the service writes its times.
fn timestamp(micros: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000);
    time.ok().and_then(|t| t.format(format).ok()).unwrap_or_default()
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let content_type = HeaderValue::from_static("application/json; charset=UTF-8");
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn no_bucket(name: &str) -> Failure {
    (StatusCode::NOT_FOUND, format!("The specified bucket does not exist: {name}"))
}

fn no_object(bucket: &str, name: &str) -> Failure {
    (StatusCode::NOT_FOUND, format!("No such object: {bucket}/{name}"))
}

fn precondition_failed() -> Failure {
    let message = "At least one of the pre-conditions you specified did not hold.";
    (StatusCode::PRECONDITION_FAILED, message.into())
}

fn invalid(e: impl std::fmt::Display) -> Failure {
    (StatusCode::BAD_REQUEST, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl std::ops::Deref for FastGcs {
    type Target = crate::faults::Faults;

    /// The fault knobs: latency, 403 for 412, throttling, failing uploads and reads.
    fn deref(&self) -> &Self::Target {
        &self.state.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gcs;
    use crate::rest::{http_client, send};

    /// The listing's pages and prefix, the JSON API's error shape, and the proxy's faults.
    #[tokio::test]
    async fn listings_page_in_name_order_and_faults_answer_as_the_proxy_s() -> Result<()> {
        let server = FastGcs::start()?;
        let (gcs, http) = (Gcs::new(&server.url(), "p"), http_client());
        gcs.create_bucket("b").await?;
        for name in ["c", "a/1", "a/2", "b"] {
            gcs.put_object("b", name, name.as_bytes(), &[]).await?;
        }
        let list = async |query: &str| -> Result<Value> {
            let url = format!("{}/storage/v1/b/b/o?maxResults=2&{query}", server.url());
            Ok(send(http.get(url), "list").await?.json().await?)
        };
        let names = |page: &Value| -> Vec<String> {
            let items = page["items"].as_array().into_iter().flatten();
            items.map(|o| o["name"].as_str().unwrap_or_default().to_string()).collect()
        };
        let first = list("").await?;
        assert_eq!(
            (names(&first), &first["nextPageToken"]),
            (vec!["a/1".into(), "a/2".into()], &"a/2".into())
        );
        let second = list("pageToken=a%2F2").await?;
        assert_eq!(
            (names(&second), second.get("nextPageToken")),
            (vec!["b".into(), "c".into()], None)
        );
        assert_eq!(names(&list("prefix=a%2F").await?), ["a/1", "a/2"]);
        assert_eq!(gcs.list_objects("b").await?.len(), 4);

        let missing = http.get(format!("{}/storage/v1/b/b/o/nope", server.url())).send().await?;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let error: Value = missing.json().await?;
        assert_eq!(
            (&error["error"]["code"], &error["error"]["errors"][0]["reason"]),
            (&404.into(), &"notFound".into())
        );

        server.fail_uploads(Some(StatusCode::SERVICE_UNAVAILABLE));
        let failed = gcs.put_object("b", "d", b"d", &[]).await.expect_err("uploads fail");
        assert!(failed.to_string().contains("503"), "{failed:#}");
        server.fail_uploads(None);
        // One upload a second: within a few uploads, one is over.
        server.throttle(1);
        let mut refused = None;
        for i in 0..20 {
            if let Err(e) = gcs.put_object("b", &format!("t{i}"), b"t", &[]).await {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("an upload over the rate is refused").to_string();
        assert!(refused.contains("429"), "{refused}");
        assert_eq!(server.throttled(), 1);
        assert!(server.cpu_time()? > Duration::ZERO);
        Ok(())
    }
}
