//! Configuration: the only code that reads the environment.
//!
//! `envy` reads the environment into a map; every variable of [`VARIABLES`] is then checked
//! against its rule, so that a misconfigured deployment fails with one line naming *every* bad
//! variable and what it expects, instead of stopping at the first one. Values are trimmed, and an
//! empty value counts as unset, as in `.env` files.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

use crate::name::{DEFAULT_TEMPLATE, NameTemplate};
use crate::object::{ContentType, ObjectSettings};
pub use crate::telemetry::LogFormat;

/// A variable the worker reads, and how its value is checked.
pub struct Var {
    pub name: &'static str,
    rule: Rule,
}

enum Rule {
    /// Text that passes the check; otherwise, what is expected.
    Text(fn(&str) -> bool, &'static str),
    /// A whole number within the range, and its default (`None`: unset means off, or for
    /// `PULL_STREAMS` a default that [`default_pull_streams`] computes at start).
    Number(RangeInclusive<u64>, Option<u64>),
    /// One of the words; unset means the first.
    Choice(&'static [&'static str]),
}

use Rule::{Choice, Number, Text};

/// Every variable the worker reads, in the order the README documents them. The deploy scripts
/// pass exactly these (less [`EMULATOR_VARIABLES`]) to the worker pool, and their tests check it.
/// `SHUTDOWN_TIMEOUT_SECS` defaults below Cloud Run's 10 s between SIGTERM and SIGKILL;
/// `LIVENESS_STALL_SECS` above one write's `WRITE_TIMEOUT_SECS` plus the 10 s failure backoff.
pub const VARIABLES: [Var; 28] = [
    Var { name: "PROJECT_ID", rule: Text(is_id, "a project id, e.g. my-project") },
    Var { name: "SUBSCRIPTION_ID", rule: Text(is_subscription, SUBSCRIPTION) },
    Var {
        name: "BUCKET_NAME",
        rule: Text(is_bucket, "3-222 lowercase letters, digits, -, _ or ."),
    },
    Var { name: "OBJECT_PREFIX", rule: Text(|_| true, "") },
    Var { name: "OBJECT_NAME", rule: Text(|_| true, "") },
    Var {
        name: "OBJECT_CONTENT_TYPE",
        rule: Text(|s| ContentType::parse(s).is_some(), CONTENT_TYPE),
    },
    Var { name: "OBJECT_COMPRESSION", rule: Choice(&["none", "gzip"]) },
    Var {
        name: "OBJECT_STORAGE_CLASS",
        rule: Choice(&["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"]),
    },
    Var {
        name: "OBJECT_CACHE_CONTROL",
        rule: Text(is_header_value, "printable ASCII, e.g. no-store"),
    },
    Var { name: "OBJECT_CUSTOM_TIME", rule: Choice(&["none", "publish_time"]) },
    Var { name: "KMS_KEY_NAME", rule: Text(is_kms_key, KMS_KEY) },
    Var { name: "MAX_OUTSTANDING_MESSAGES", rule: Number(1..=1_000_000, Some(2000)) },
    Var { name: "MAX_OUTSTANDING_BYTES", rule: Number(1..=(i64::MAX as u64), Some(100 << 20)) },
    Var { name: "MAX_CONCURRENT_WRITES", rule: Number(1..=10_000, Some(1024)) },
    Var { name: "PULL_STREAMS", rule: Number(1..=32, None) },
    Var { name: "MAX_LEASE_EXTENSION_SECS", rule: Number(10..=600, Some(60)) },
    Var { name: "SHUTDOWN_TIMEOUT_SECS", rule: Number(1..=3600, Some(8)) },
    Var { name: "PROGRESS_INTERVAL_SECS", rule: Number(0..=86_400, Some(30)) },
    Var { name: "LOG_FORMAT", rule: Choice(&["auto", "json", "text"]) },
    Var { name: "RUST_LOG", rule: Text(|s| EnvFilter::try_new(s).is_ok(), "tracing directives") },
    Var { name: "WRITE_TIMEOUT_SECS", rule: Number(1..=3600, Some(60)) },
    Var { name: "HEALTH_PORT", rule: Number(0..=65_535, None) },
    Var { name: "HEALTH_HOST", rule: Text(|s| s.parse::<IpAddr>().is_ok(), "an IP address") },
    Var { name: "LIVENESS_STALL_SECS", rule: Number(1..=86_400, Some(120)) },
    Var { name: "STARTUP_CHECK", rule: Choice(&["auto", "on", "off"]) },
    Var {
        name: "PUBSUB_ENDPOINT",
        rule: Text(is_endpoint, "a host, e.g. us-east1-pubsub.googleapis.com"),
    },
    Var { name: "PUBSUB_EMULATOR_HOST", rule: Text(|_| true, "") },
    Var { name: "STORAGE_EMULATOR_HOST", rule: Text(is_http, "http://host:port") },
];

/// The variables that point the worker at local emulators: never deployed.
pub const EMULATOR_VARIABLES: [&str; 2] = ["PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"];

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
        let raw: HashMap<String, String> = envy::from_iter(vars)
            .map_err(|e| ConfigError(vec![format!("the environment could not be read: {e}")]))?;
        let mut env = Env::default();
        for var in &VARIABLES {
            let value = raw.get(&var.name.to_ascii_lowercase()).map(|v| v.trim());
            env.read(var, value.filter(|v| !v.is_empty()));
        }
        let config = env.config();
        env.problems.is_empty().then_some(config).ok_or(ConfigError(env.problems))
    }
}

/// The values read, each checked against its own rule, and the problems found so far.
#[derive(Default)]
struct Env {
    texts: HashMap<&'static str, String>,
    numbers: HashMap<&'static str, u64>,
    problems: Vec<String>,
}

impl Env {
    /// Checks `value` (`None`: unset) against the variable's own rule; keeps it or the default.
    fn read(&mut self, var: &Var, value: Option<&str>) {
        let name = var.name;
        match (&var.rule, value) {
            (Number(range, default), value) => {
                let n = value.map(|v| v.parse::<u64>().ok().filter(|n| range.contains(n)));
                if let (Some(text), Some(None)) = (value, n) {
                    let (low, high) = (range.start(), range.end());
                    self.invalid(name, text, &format!("a whole number from {low} to {high}"));
                }
                if let Some(n) = n.flatten().or(*default) {
                    self.numbers.insert(name, n);
                }
            }
            (_, None) => {}
            (Text(valid, expected), Some(text)) if !valid(text) => {
                self.invalid(name, text, expected)
            }
            (Choice(words), Some(text)) if !words.contains(&text) => {
                let (last, rest) = words.split_last().unwrap_or((&"", &[]));
                self.invalid(name, text, &format!("{} or {last}", rest.join(", ")));
            }
            (_, Some(text)) => drop(self.texts.insert(name, text.into())),
        }
    }

    /// The settings, from values that passed their rules; a required one missing is a problem.
    fn config(&mut self) -> Config {
        let id = self.text("SUBSCRIPTION_ID");
        let full = id.as_deref().filter(|id| id.starts_with("projects/"));
        let project = match (self.text("PROJECT_ID"), full) {
            (Some(project), _) => project,
            (None, Some(_)) => String::new(),
            (None, None) => {
                self.missing("PROJECT_ID", "the Google Cloud project id, e.g. my-project")
            }
        };
        let subscription = match (full, &id) {
            (Some(path), _) => path.to_string(),
            (None, Some(id)) => format!("projects/{project}/subscriptions/{id}"),
            (None, None) => self.missing("SUBSCRIPTION_ID", SUBSCRIPTION),
        };
        let bucket = self.text("BUCKET_NAME");
        let bucket =
            bucket.unwrap_or_else(|| self.missing("BUCKET_NAME", "a bucket name, e.g. my-bucket"));
        let health_ip =
            self.text("HEALTH_HOST").map_or(Ok(IpAddr::from([0, 0, 0, 0])), |h| h.parse());
        let health_port = self.numbers.get("HEALTH_PORT").map(|&port| port as u16);
        let names = self.names();
        let objects = ObjectSettings {
            content_type: (self.text("OBJECT_CONTENT_TYPE").as_deref())
                .and_then(ContentType::parse)
                .unwrap_or_default(),
            gzip: self.text("OBJECT_COMPRESSION").as_deref() == Some("gzip"),
            storage_class: self.text("OBJECT_STORAGE_CLASS"),
            cache_control: self.text("OBJECT_CACHE_CONTROL"),
            custom_time: self.text("OBJECT_CUSTOM_TIME").as_deref() == Some("publish_time"),
            kms_key: self.text("KMS_KEY_NAME"),
        };
        let secs = |name| Duration::from_secs(self.number(name));
        Config {
            subscription,
            bucket: bucket.strip_prefix("gs://").unwrap_or(&bucket).to_string(),
            names,
            objects,
            max_outstanding_messages: self.number("MAX_OUTSTANDING_MESSAGES") as i64,
            max_outstanding_bytes: self.number("MAX_OUTSTANDING_BYTES") as i64,
            max_concurrent_writes: self.number("MAX_CONCURRENT_WRITES") as usize,
            pull_streams: self
                .numbers
                .get("PULL_STREAMS")
                .map_or_else(default_pull_streams, |&n| n as usize),
            max_lease_extension: secs("MAX_LEASE_EXTENSION_SECS"),
            shutdown_timeout: secs("SHUTDOWN_TIMEOUT_SECS"),
            progress_interval: Some(secs("PROGRESS_INTERVAL_SECS")).filter(|d| !d.is_zero()),
            log_format: match self.text("LOG_FORMAT").as_deref() {
                Some("json") => LogFormat::Json,
                Some("text") => LogFormat::Text,
                _ => LogFormat::Auto,
            },
            log_filter: self.text("RUST_LOG").unwrap_or_else(|| "info".into()),
            health_addr: health_ip.ok().zip(health_port).map(SocketAddr::from),
            write_timeout: secs("WRITE_TIMEOUT_SECS"),
            liveness_stall: secs("LIVENESS_STALL_SECS"),
            // By default the check runs against the real service only: emulators lack the API.
            startup_check: match self.text("STARTUP_CHECK").as_deref() {
                Some("on") => true,
                Some("off") => false,
                _ => !self.texts.contains_key("STORAGE_EMULATOR_HOST"),
            },
            pubsub_endpoint: self.text("PUBSUB_ENDPOINT").map(|e| {
                let host = e.trim_end_matches('/');
                let host = host.strip_prefix("https://").unwrap_or(host);
                format!("https://{host}")
            }),
            pubsub_emulator: self.text("PUBSUB_EMULATOR_HOST"),
            storage_emulator: self.text("STORAGE_EMULATOR_HOST"),
        }
    }

    /// `OBJECT_PREFIX` and `OBJECT_NAME`; a template that could lose messages is refused. With
    /// `OBJECT_COMPRESSION=gzip`, `{ext}` says so.
    fn names(&mut self) -> NameTemplate {
        let prefix = self.text("OBJECT_PREFIX").unwrap_or_default();
        let template = self.text("OBJECT_NAME").unwrap_or_else(|| DEFAULT_TEMPLATE.into());
        let gzip = self.text("OBJECT_COMPRESSION").as_deref() == Some("gzip");
        let parsed = NameTemplate::parse(&template, &prefix);
        parsed.and_then(|t| if gzip { t.gzipped() } else { Ok(t) }).unwrap_or_else(|e| {
            let in_prefix = e.in_prefix();
            let (name, value) =
                if in_prefix { ("OBJECT_PREFIX", prefix) } else { ("OBJECT_NAME", template) };
            self.problems.push(format!("{name}={value:?} {e}"));
            NameTemplate::default()
        })
    }

    fn text(&self, name: &str) -> Option<String> {
        self.texts.get(name).cloned()
    }

    /// A number of [`VARIABLES`]: the value that passed its rule, or its default.
    fn number(&self, name: &str) -> u64 {
        self.numbers.get(name).copied().unwrap_or_default()
    }

    /// A required variable is unset, unless set to something invalid; an empty value stands in.
    fn missing(&mut self, name: &str, expected: &str) -> String {
        if !self.problems.iter().any(|p| p.starts_with(&format!("{name}="))) {
            self.problems.push(format!("{name} is not set (expected {expected})"));
        }
        String::new()
    }

    fn invalid(&mut self, name: &str, value: &str, expected: &str) {
        self.problems.push(format!("{name}={value:?} is invalid (expected {expected})"));
    }
}

/// `PULL_STREAMS` when unset: [`pull_streams_for`] the cores this process may use (the count
/// tokio sizes its runtime by, cgroup quotas included).
pub fn default_pull_streams() -> usize {
    pull_streams_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Two StreamingPull streams per core, at least 2 and at most 8.
///
/// Pub/Sub caps each stream at about 10 MB/s (150 messages/s of 64 KiB), while one core of
/// this worker handles well over that (README, "Capacity planning"), so one stream would hold a
/// 1 vCPU instance back; a second stream also keeps messages coming while the service restarts
/// the other (it closes streams from time to time). Two per core is what the Rust client's own
/// concurrency sample opens (`pubsub_subscriber_concurrency_control`: `2 * NCPU` streams); the
/// other official clients default to one stream (Java's `parallelPullCount`, Go's v2
/// `NumGoroutines`) or ten (Go's v1 client, whose maintainers now discourage many), hence the
/// cap of 8 (about 80 MB/s). The streams share one flow-control budget, so more of them lease no
/// more messages; for large messages on few cores, set `PULL_STREAMS` higher (up to 32).
pub fn pull_streams_for(cores: usize) -> usize {
    (2 * cores).clamp(2, 8)
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

/// The naming rules of Cloud Storage buckets, loosely: enough to catch typos and paths.
fn is_bucket(s: &str) -> bool {
    let name = s.strip_prefix("gs://").unwrap_or(s);
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    let edges = !name.starts_with(['-', '_', '.']) && !name.ends_with(['-', '_', '.']);
    (3..=222).contains(&name.len()) && name.chars().all(valid) && edges
}

const CONTENT_TYPE: &str =
    "a media type such as application/json, or {attributes.NAME} or {attributes.NAME|FALLBACK}";

const KMS_KEY: &str = "projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY";

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

/// A host (`us-east1-pubsub.googleapis.com`), `host:port`, or an `https://` URL without a path.
fn is_endpoint(s: &str) -> bool {
    let host = s.strip_prefix("https://").unwrap_or(s).trim_end_matches('/');
    let valid = |c: char| c.is_ascii_alphanumeric() || "-.:".contains(c);
    !host.is_empty() && !host.starts_with(['-', '.', ':']) && host.chars().all(valid)
}

/// `host:port`, or a URL with the http(s) scheme.
fn is_http(s: &str) -> bool {
    !s.contains("://") || s.starts_with("http://") || s.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The required variables, with `overrides` replacing or adding entries ("<unset>" removes).
    fn config(overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let required = [("PROJECT_ID", "p"), ("SUBSCRIPTION_ID", "s"), ("BUCKET_NAME", "b-1")];
        let mut vars: HashMap<&str, &str> = required.into_iter().collect();
        vars.extend(overrides.iter().copied());
        vars.retain(|_, v| *v != "<unset>");
        Config::from_vars(vars.into_iter().map(|(k, v)| (k.into(), v.into())))
    }

    #[test]
    #[rustfmt::skip]
    fn defaults_apply_when_only_required_variables_are_set() {
        let secs = Duration::from_secs;
        let want = Config {
            subscription: "projects/p/subscriptions/s".into(), bucket: "b-1".into(),
            names: NameTemplate::default(), objects: ObjectSettings::default(),
            max_outstanding_messages: 2000, max_outstanding_bytes: 100 << 20,
            max_concurrent_writes: 1024, pull_streams: default_pull_streams(),
            max_lease_extension: secs(60), shutdown_timeout: secs(8),
            progress_interval: Some(secs(30)), log_format: LogFormat::Auto, log_filter: "info".into(),
            pubsub_endpoint: None, pubsub_emulator: None, storage_emulator: None, health_addr: None,
            write_timeout: secs(60), liveness_stall: secs(120), startup_check: true,
        };
        assert_eq!(config(&[]), Ok(want));
    }

    #[test]
    #[rustfmt::skip]
    fn values_are_trimmed_and_understood() {
        let c = config(&[
            ("PROJECT_ID", "<unset>"), ("SUBSCRIPTION_ID", "projects/o/subscriptions/sub\t"),
            ("BUCKET_NAME", " gs://my-bucket "), ("OBJECT_PREFIX", "in/"), ("LOG_FORMAT", " json"),
            ("PROGRESS_INTERVAL_SECS", "0"), ("HEALTH_PORT", "8080"),
            ("STORAGE_EMULATOR_HOST", "127.0.0.1:4443"), ("PULL_STREAMS", "32"),
        ]);
        let c = c.expect("valid: a full subscription path needs no PROJECT_ID");
        assert_eq!(c.pull_streams, 32);
        assert_eq!((c.subscription.as_str(), c.bucket.as_str()), ("projects/o/subscriptions/sub", "my-bucket"));
        assert_eq!(c.names.template(), "in/message_{publish_time}_{message_id}.{ext}");
        assert_eq!((c.progress_interval, c.log_format, c.startup_check), (None, LogFormat::Json, false));
        assert_eq!(c.health_addr, Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
    }

    #[test]
    #[rustfmt::skip]
    fn every_bad_variable_is_named_with_what_is_expected_in_one_line() {
        let problems = |vars: &[(&str, &str)]| config(vars).expect_err("invalid").0;
        let p = problems(&[("PROJECT_ID", " "), ("SUBSCRIPTION_ID", "<unset>"), ("BUCKET_NAME", "")]);
        assert_eq!(p, [
            "PROJECT_ID is not set (expected the Google Cloud project id, e.g. my-project)",
            "SUBSCRIPTION_ID is not set (expected a subscription id or projects/PROJECT/subscriptions/ID)",
            "BUCKET_NAME is not set (expected a bucket name, e.g. my-bucket)",
        ]);
        let p = problems(&[
            ("PROJECT_ID", "a/b"), ("SUBSCRIPTION_ID", "my sub"), ("BUCKET_NAME", "gs://"),
            ("OBJECT_NAME", "{attributes.x}"), ("MAX_CONCURRENT_WRITES", "lots"),
            ("MAX_LEASE_EXTENSION_SECS", "5"), ("LOG_FORMAT", "xml"), ("RUST_LOG", "info,[{"),
            ("HEALTH_HOST", "localhost"), ("STORAGE_EMULATOR_HOST", "ftp://x"), ("PULL_STREAMS", "0"),
        ]);
        assert_eq!(p, [
            r#"PROJECT_ID="a/b" is invalid (expected a project id, e.g. my-project)"#,
            r#"SUBSCRIPTION_ID="my sub" is invalid (expected a subscription id or projects/PROJECT/subscriptions/ID)"#,
            r#"BUCKET_NAME="gs://" is invalid (expected 3-222 lowercase letters, digits, -, _ or .)"#,
            r#"MAX_CONCURRENT_WRITES="lots" is invalid (expected a whole number from 1 to 10000)"#,
            r#"PULL_STREAMS="0" is invalid (expected a whole number from 1 to 32)"#,
            r#"MAX_LEASE_EXTENSION_SECS="5" is invalid (expected a whole number from 10 to 600)"#,
            r#"LOG_FORMAT="xml" is invalid (expected auto, json or text)"#,
            r#"RUST_LOG="info,[{" is invalid (expected tracing directives)"#,
            r#"HEALTH_HOST="localhost" is invalid (expected an IP address)"#,
            r#"STORAGE_EMULATOR_HOST="ftp://x" is invalid (expected http://host:port)"#,
            r#"OBJECT_NAME="{attributes.x}" has no {message_id}: two messages could get the same name and one would be acked without its object"#,
        ]);
        assert!(!ConfigError(p).to_string().contains('\n'), "one line");
    }

    #[test]
    #[rustfmt::skip]
    fn object_settings_and_the_pubsub_endpoint_are_read_and_checked() {
        let key = "projects/p/locations/us/keyRings/r/cryptoKeys/k";
        let c = config(&[
            ("OBJECT_CONTENT_TYPE", "{attributes.type|application/json}"), ("OBJECT_COMPRESSION", "gzip"),
            ("OBJECT_STORAGE_CLASS", "NEARLINE"), ("OBJECT_CACHE_CONTROL", "no-store"),
            ("OBJECT_CUSTOM_TIME", "publish_time"), ("KMS_KEY_NAME", key),
            ("PUBSUB_ENDPOINT", "us-east1-pubsub.googleapis.com"),
        ]).expect("valid");
        let want = ObjectSettings {
            content_type: ContentType::Attribute { name: "type".into(), fallback: Some("application/json".into()) },
            gzip: true, storage_class: Some("NEARLINE".into()), cache_control: Some("no-store".into()),
            custom_time: true, kms_key: Some(key.into()),
        };
        assert_eq!(c.objects, want);
        assert_eq!(c.names, NameTemplate::default().gzipped().expect("valid"), "{{ext}} says gzip");
        assert_eq!(c.pubsub_endpoint.as_deref(), Some("https://us-east1-pubsub.googleapis.com"));
        let c = config(&[("OBJECT_CONTENT_TYPE", "text/csv"), ("PUBSUB_ENDPOINT", "https://h:443/")]);
        let c = c.expect("valid");
        assert_eq!(c.objects.content_type, ContentType::Fixed("text/csv".into()));
        assert_eq!(c.pubsub_endpoint.as_deref(), Some("https://h:443"));

        let p = config(&[
            ("OBJECT_CONTENT_TYPE", "json"), ("OBJECT_COMPRESSION", "zstd"),
            ("OBJECT_STORAGE_CLASS", "nearline"), ("OBJECT_CACHE_CONTROL", "no-store\u{7}x"),
            ("OBJECT_CUSTOM_TIME", "now"), ("KMS_KEY_NAME", "k"), ("PUBSUB_ENDPOINT", "http://h/x"),
        ]).expect_err("invalid").0;
        let named: Vec<&str> = p.iter().map(|p| p.split('=').next().unwrap_or_default()).collect();
        assert_eq!(named, [
            "OBJECT_CONTENT_TYPE", "OBJECT_COMPRESSION", "OBJECT_STORAGE_CLASS",
            "OBJECT_CACHE_CONTROL", "OBJECT_CUSTOM_TIME", "KMS_KEY_NAME", "PUBSUB_ENDPOINT",
        ], "{p:?}");
        assert!(p[2].ends_with("(expected STANDARD, NEARLINE, COLDLINE or ARCHIVE)"), "{p:?}");
        assert!(p[5].contains("cryptoKeys"), "{p:?}");
    }

    #[test]
    fn pull_streams_default_to_two_per_core_from_2_to_8() {
        let streams: Vec<usize> = [1, 2, 3, 4, 64].into_iter().map(pull_streams_for).collect();
        assert_eq!(streams, [2, 4, 6, 8, 8]);
    }
}
