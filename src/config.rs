//! Configuration: the only code that reads the environment.
//!
//! Each variable is one typed entry (name, parser, default), and [`Config`] is filled from the
//! entries, so a misspelt name does not compile. Every variable is parsed, so that a bad deployment
//! fails with one line naming *every* bad variable and what it expects. Values are trimmed, and an
//! empty value counts as unset, as in `.env` files.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

mod per_core;

pub use per_core::PerCore;

use crate::name::{DEFAULT_TEMPLATE, NameTemplate};
use crate::object::{ContentType, ObjectSettings};
use crate::telemetry::LogFormat;

/// A variable the worker reads: its name, how its value is parsed, and its value when unset.
struct Var<T: 'static> {
    name: &'static str,
    parse: Parse<T>,
    default: T,
}

/// How a value becomes a `T`; a value refused is a problem that says what is expected.
enum Parse<T: 'static> {
    /// Text the first function accepts, made a `T` by the second (`Some`, `Cow::Owned`).
    Check(fn(&str) -> bool, fn(String) -> T, &'static str),
    /// Text the function parses (`None`: refused).
    Text(fn(&str) -> Option<T>, &'static str),
    /// A whole number within the range (which keeps it within `T`), made a `T`.
    Number(RangeInclusive<u64>, fn(u64) -> T),
    /// One of the words, each with its value.
    Choice(&'static [(&'static str, T)]),
}

use Parse::{Check, Choice, Number, Text};

/// Declares each variable once: a constant named as the variable, of the type of its value.
macro_rules! variables {
    ($($(#[$doc:meta])* $name:ident: $type:ty = $parse:expr, $default:expr;)*) => {
        $($(#[$doc])* const $name: &Var<$type> =
            &Var { name: stringify!($name), parse: $parse, default: $default };)*

        /// Every variable the worker reads, in the README's order (as `Env::config` reads them).
        /// The deploy scripts pass exactly these (less [`EMULATOR_VARIABLES`]): their tests check.
        pub const VARIABLES: [&str; [$(stringify!($name)),*].len()] = [$($name.name),*];
    };
}

variables! {
    PROJECT_ID: Option<String> = Check(is_id, Some, "a project id, e.g. my-project"), None;
    SUBSCRIPTION_ID: Option<String> = Check(is_subscription, Some, SUBSCRIPTION), None;
    BUCKET_NAME: Option<String> = Text(bucket, "3-222 lowercase letters, digits, -, _ or ."), None;
    /// With `OBJECT_NAME` and `OBJECT_COMPRESSION`, checked in [`Env::names`].
    OBJECT_PREFIX: Cow<str> = Check(|_| true, Cow::Owned, ""), Cow::Borrowed("");
    OBJECT_NAME: Cow<str> = Check(|_| true, Cow::Owned, ""), Cow::Borrowed(DEFAULT_TEMPLATE);
    OBJECT_CONTENT_TYPE: ContentType = Text(ContentType::parse, "a media type such as \
        application/json, or {attributes.NAME} or {attributes.NAME|FALLBACK}"), ContentType::Detect;
    OBJECT_COMPRESSION: bool = Choice(&[("none", false), ("gzip", true)]), false;
    /// Unset: the bucket's default class.
    OBJECT_STORAGE_CLASS: Option<&str> = Choice(&[("STANDARD", Some("STANDARD")),
        ("NEARLINE", Some("NEARLINE")), ("COLDLINE", Some("COLDLINE")),
        ("ARCHIVE", Some("ARCHIVE"))]), None;
    OBJECT_CACHE_CONTROL: Option<String> =
        Check(is_header_value, Some, "printable ASCII, e.g. no-store"), None;
    OBJECT_CUSTOM_TIME: bool = Choice(&[("none", false), ("publish_time", true)]), false;
    KMS_KEY_NAME: Option<String> = Check(is_kms_key, Some,
        "projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY"), None;
    /// Unset, these four: [`PerCore::for_cores`] this process may use, computed at start.
    MAX_OUTSTANDING_MESSAGES: Option<i64> = Number(1..=1_000_000, |n| Some(n as i64)), None;
    MAX_OUTSTANDING_BYTES: Option<i64> = Number(1..=(i64::MAX as u64), |n| Some(n as i64)), None;
    MAX_CONCURRENT_WRITES: Option<usize> = Number(1..=10_000, |n| Some(n as usize)), None;
    PULL_STREAMS: Option<usize> = Number(1..=32, |n| Some(n as usize)), None;
    /// 0: never.
    STREAM_IDLE_SECS: Option<Duration> =
        Number(0..=86_400, |n| Some(secs(n)).filter(|d| !d.is_zero())), Some(secs(60));
    MAX_LEASE_EXTENSION_SECS: Duration = Number(10..=600, secs), secs(60);
    /// Below Cloud Run's 10 s between SIGTERM and SIGKILL.
    SHUTDOWN_TIMEOUT_SECS: Duration = Number(1..=3600, secs), secs(8);
    /// 0: no progress line.
    PROGRESS_INTERVAL_SECS: Option<Duration> =
        Number(0..=86_400, |n| Some(secs(n)).filter(|d| !d.is_zero())), Some(secs(30));
    LOG_FORMAT: LogFormat = Choice(&[("auto", LogFormat::Auto), ("json", LogFormat::Json),
        ("text", LogFormat::Text)]), LogFormat::Auto;
    RUST_LOG: Cow<str> = Check(|s| EnvFilter::try_new(s).is_ok(), Cow::Owned, "tracing directives"),
        Cow::Borrowed("info");
    WRITE_TIMEOUT_SECS: Duration = Number(1..=3600, secs), secs(60);
    /// Unset: no health server.
    HEALTH_PORT: Option<u16> = Number(0..=65_535, |n| Some(n as u16)), None;
    HEALTH_HOST: IpAddr =
        Text(|s| s.parse().ok(), "an IP address"), IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    /// Above one write's `WRITE_TIMEOUT_SECS` plus the 10 s failure backoff.
    LIVENESS_STALL_SECS: Duration = Number(1..=86_400, secs), secs(120);
    /// `None` (auto): on unless `STORAGE_EMULATOR_HOST` is set.
    STARTUP_CHECK: Option<bool> =
        Choice(&[("auto", None), ("on", Some(true)), ("off", Some(false))]), None;
    PUBSUB_ENDPOINT: Option<String> =
        Text(endpoint, "a host, e.g. us-east1-pubsub.googleapis.com"), None;
    PUBSUB_EMULATOR_HOST: Option<String> = Check(|_| true, Some, ""), None;
    STORAGE_EMULATOR_HOST: Option<String> = Check(is_http, Some, "http://host:port"), None;
}

/// The variables that point the worker at local emulators: never deployed.
pub const EMULATOR_VARIABLES: [&str; 2] = [PUBSUB_EMULATOR_HOST.name, STORAGE_EMULATOR_HOST.name];

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The worker's settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Full subscription path, `projects/P/subscriptions/S`.
    pub subscription: String,
    /// Bucket name, without `gs://`.
    pub bucket: String,
    /// `OBJECT_PREFIX` and the `OBJECT_NAME` template, checked.
    pub names: NameTemplate,
    /// How objects are stored: the `OBJECT_*` settings and `KMS_KEY_NAME`.
    pub objects: ObjectSettings,
    pub max_outstanding_messages: i64,
    pub max_outstanding_bytes: i64,
    pub max_concurrent_writes: usize,
    /// StreamingPull streams on the subscription, each on its own connection.
    pub pull_streams: usize,
    /// A stream that delivers nothing for this long is opened again on a new connection
    /// (`STREAM_IDLE_SECS`; `None`: never).
    pub stream_idle: Option<Duration>,
    pub max_lease_extension: Duration,
    pub shutdown_timeout: Duration,
    pub progress_interval: Option<Duration>,
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG`), known to parse.
    pub log_filter: String,
    /// `PUBSUB_ENDPOINT` as a URL (`https://` added to a bare host): a regional endpoint for
    /// messages that must stay in a region. `PUBSUB_EMULATOR_HOST` wins over it.
    pub pubsub_endpoint: Option<String>,
    /// `PUBSUB_EMULATOR_HOST` and `STORAGE_EMULATOR_HOST`, as given: see [`crate::clients`].
    pub pubsub_emulator: Option<String>,
    pub storage_emulator: Option<String>,
    pub health_addr: Option<SocketAddr>,
    pub write_timeout: Duration,
    pub liveness_stall: Duration,
    pub startup_check: bool,
}

/// Every problem found in the environment, one per bad variable, reported in one line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // `std::env::vars()` panics on a non-UTF-8 entry; such an entry cannot be one of ours.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::from_vars(vars)
    }

    /// Reads `(NAME, value)` pairs as if they were the environment (tests, the local runner).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let values = envy::from_iter(vars)
            .map_err(|e| ConfigError(vec![format!("the environment could not be read: {e}")]))?;
        let mut env = Env { values, ..Env::default() };
        let config = env.config();
        env.problems.is_empty().then_some(config).ok_or(ConfigError(env.problems))
    }
}

/// The environment (by lowercase name, as `envy` gives it), the names read so far, the problems.
#[derive(Default)]
struct Env {
    values: HashMap<String, String>,
    read: Vec<&'static str>,
    problems: Vec<String>,
}

impl Env {
    /// The variable's value, parsed, or its default when unset (or refused: a problem then).
    fn get<T: Clone>(&mut self, var: &Var<T>) -> T {
        self.read.push(var.name);
        let text = self.values.get(&var.name.to_ascii_lowercase()).map(|value| value.trim());
        let Some(text) = text.filter(|text| !text.is_empty()) else {
            return var.default.clone();
        };
        let parsed = match &var.parse {
            Check(ok, to, _) if ok(text) => Ok(to(text.into())),
            Check(_, _, expected) => Err(expected.to_string()),
            Text(parse, expected) => parse(text).ok_or(expected.to_string()),
            Number(range, to) => (text.parse().ok().filter(|n| range.contains(n)).map(to))
                .ok_or_else(|| format!("a whole number from {} to {}", range.start(), range.end())),
            Choice(words) => (words.iter().find(|(word, _)| *word == text).map(|(_, v)| v.clone()))
                .ok_or_else(|| {
                    let words: Vec<&str> = words.iter().map(|(word, _)| *word).collect();
                    let (last, rest) = words.split_last().unwrap_or((&"", &[]));
                    format!("{} or {last}", rest.join(", "))
                }),
        };
        parsed.unwrap_or_else(|expected| {
            self.problems.push(format!("{}={text:?} is invalid (expected {expected})", var.name));
            var.default.clone()
        })
    }

    /// The settings: every variable read in the order of [`VARIABLES`], so that problems come in
    /// that order; then the rules across variables.
    fn config(&mut self) -> Config {
        let (project, id) = (self.get(PROJECT_ID), self.get(SUBSCRIPTION_ID));
        let (bucket, prefix, template) =
            (self.get(BUCKET_NAME), self.get(OBJECT_PREFIX), self.get(OBJECT_NAME));
        let objects = ObjectSettings {
            content_type: self.get(OBJECT_CONTENT_TYPE),
            gzip: self.get(OBJECT_COMPRESSION),
            storage_class: self.get(OBJECT_STORAGE_CLASS).map(String::from),
            cache_control: self.get(OBJECT_CACHE_CONTROL),
            custom_time: self.get(OBJECT_CUSTOM_TIME),
            kms_key: self.get(KMS_KEY_NAME),
        };
        let per_core = PerCore::here();
        let max_outstanding_messages =
            self.get(MAX_OUTSTANDING_MESSAGES).unwrap_or(per_core.max_outstanding_messages);
        let max_outstanding_bytes =
            self.get(MAX_OUTSTANDING_BYTES).unwrap_or(per_core.max_outstanding_bytes);
        let max_concurrent_writes =
            self.get(MAX_CONCURRENT_WRITES).unwrap_or(per_core.max_concurrent_writes);
        let pull_streams = self.get(PULL_STREAMS).unwrap_or(per_core.pull_streams);
        let stream_idle = self.get(STREAM_IDLE_SECS);
        let max_lease_extension = self.get(MAX_LEASE_EXTENSION_SECS);
        let shutdown_timeout = self.get(SHUTDOWN_TIMEOUT_SECS);
        let progress_interval = self.get(PROGRESS_INTERVAL_SECS);
        let (log_format, log_filter) = (self.get(LOG_FORMAT), self.get(RUST_LOG).into_owned());
        let (write_timeout, health_port) = (self.get(WRITE_TIMEOUT_SECS), self.get(HEALTH_PORT));
        let health_addr = health_port.zip(Some(self.get(HEALTH_HOST)));
        let (liveness_stall, startup_check) =
            (self.get(LIVENESS_STALL_SECS), self.get(STARTUP_CHECK));
        let pubsub_endpoint = self.get(PUBSUB_ENDPOINT);
        let (pubsub_emulator, storage_emulator) =
            (self.get(PUBSUB_EMULATOR_HOST), self.get(STORAGE_EMULATOR_HOST));
        let subscription = self.subscription(project, id);
        let bucket =
            bucket.unwrap_or_else(|| self.missing(BUCKET_NAME, "a bucket name, e.g. my-bucket"));
        Config {
            subscription,
            bucket,
            names: self.names(&prefix, &template, objects.gzip),
            objects,
            max_outstanding_messages,
            max_outstanding_bytes,
            max_concurrent_writes,
            pull_streams,
            stream_idle,
            max_lease_extension,
            shutdown_timeout,
            progress_interval,
            log_format,
            log_filter,
            pubsub_endpoint,
            pubsub_emulator,
            health_addr: health_addr.map(|(port, ip)| SocketAddr::new(ip, port)),
            write_timeout,
            liveness_stall,
            // By default the check runs against the real service only: emulators lack the API.
            startup_check: startup_check.unwrap_or(storage_emulator.is_none()),
            storage_emulator,
        }
    }

    /// The subscription's full path from `SUBSCRIPTION_ID` (a bare id, with `PROJECT_ID`, or
    /// a full `projects/P/subscriptions/S`, which needs no project).
    fn subscription(&mut self, project: Option<String>, id: Option<String>) -> String {
        let full = id.as_deref().filter(|id| id.starts_with("projects/"));
        let project = match (project, full) {
            (Some(project), _) => project,
            (None, Some(_)) => String::new(),
            (None, None) => {
                self.missing(PROJECT_ID, "the Google Cloud project id, e.g. my-project")
            }
        };
        match (full, &id) {
            (Some(path), _) => path.to_string(),
            (None, Some(id)) => format!("projects/{project}/subscriptions/{id}"),
            (None, None) => self.missing(SUBSCRIPTION_ID, SUBSCRIPTION),
        }
    }

    /// `OBJECT_PREFIX` and `OBJECT_NAME`; a template that could lose messages is refused. With
    /// `OBJECT_COMPRESSION=gzip`, `{ext}` says so.
    fn names(&mut self, prefix: &str, template: &str, gzip: bool) -> NameTemplate {
        let parsed = NameTemplate::parse(template, prefix);
        parsed.and_then(|t| if gzip { t.gzipped() } else { Ok(t) }).unwrap_or_else(|e| {
            let (var, value) =
                if e.in_prefix() { (OBJECT_PREFIX, prefix) } else { (OBJECT_NAME, template) };
            self.problems.push(format!("{}={value:?} {e}", var.name));
            NameTemplate::default()
        })
    }

    /// A required variable is unset, unless set to something invalid; an empty value stands in.
    fn missing<T>(&mut self, var: &Var<T>, expected: &str) -> String {
        if !self.problems.iter().any(|p| p.starts_with(&format!("{}=", var.name))) {
            self.problems.push(format!("{} is not set (expected {expected})", var.name));
        }
        String::new()
    }
}

/// No spaces, slashes or control characters: a stray space would surface as a NOT_FOUND.
fn is_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '/')
}

const SUBSCRIPTION: &str = "a subscription id or projects/PROJECT/subscriptions/ID";

fn is_subscription(s: &str) -> bool {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p, "subscriptions", s] => is_id(p) && is_id(s),
        _ => is_id(s),
    }
}

/// A bucket name, without `gs://` if given with it. The naming rules of Cloud Storage buckets,
/// loosely: enough to catch typos and paths.
fn bucket(s: &str) -> Option<Option<String>> {
    let name = s.strip_prefix("gs://").unwrap_or(s);
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    let edges = !name.starts_with(['-', '_', '.']) && !name.ends_with(['-', '_', '.']);
    let ok = (3..=222).contains(&name.len()) && name.chars().all(valid) && edges;
    ok.then(|| Some(name.into()))
}

/// A header value Cloud Storage will store: printable ASCII, at most 1 KiB.
fn is_header_value(s: &str) -> bool {
    s.len() <= 1024 && s.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// A Cloud KMS key's resource name: a typo here would fail every write, so it fails at start.
fn is_kms_key(s: &str) -> bool {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p, "locations", l, "keyRings", r, "cryptoKeys", k] => {
            [p, l, r, k].iter().all(|part| is_id(part))
        }
        _ => false,
    }
}

/// A host (`us-east1-pubsub.googleapis.com`), `host:port`, or an `https://` URL without a path,
/// as the URL `https://host`.
fn endpoint(s: &str) -> Option<Option<String>> {
    let host = s.strip_prefix("https://").unwrap_or(s).trim_end_matches('/');
    let valid = |c: char| c.is_ascii_alphanumeric() || "-.:".contains(c);
    let ok = !host.is_empty() && !host.starts_with(['-', '.', ':']) && host.chars().all(valid);
    ok.then(|| Some(format!("https://{host}")))
}

/// `host:port`, or a URL with the http(s) scheme.
fn is_http(s: &str) -> bool {
    !s.contains("://") || s.starts_with("http://") || s.starts_with("https://")
}

#[cfg(test)]
mod tests;
