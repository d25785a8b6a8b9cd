//! Configuration: the only code that reads the environment.
//!
//! Every variable is read as an optional string (with `envy`) and then validated here, so that a
//! misconfigured deployment fails with one line naming *every* bad variable instead of stopping at
//! the first one.

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The worker's settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Google Cloud project that owns the bucket writes and, by default, the subscription.
    pub project_id: String,
    /// Full subscription path, `projects/P/subscriptions/S`.
    pub subscription: String,
    /// Destination bucket name (without `gs://`).
    pub bucket: String,
    /// Prepended to every object name, e.g. `pubsub/`.
    pub object_prefix: String,
    /// Flow control: the server stops sending when this many messages are leased.
    pub max_outstanding_messages: i64,
    /// Flow control: the server stops sending when this many bytes are leased.
    pub max_outstanding_bytes: i64,
    /// Object writes running at once.
    pub max_concurrent_writes: usize,
    /// How far each lease renewal pushes a message's ack deadline.
    pub max_lease_extension: Duration,
    /// Budget from the first SIGTERM/SIGINT to exit: drain in-flight writes and flush acks.
    pub shutdown_timeout: Duration,
    /// Period of the progress log line; `None` turns it off.
    pub progress_interval: Option<Duration>,
    /// How logs are written.
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG`).
    pub log_filter: String,
    /// `host:port` of a Pub/Sub emulator; switches to anonymous credentials.
    pub pubsub_emulator_host: Option<String>,
    /// `http://host:port` of a Cloud Storage emulator; switches to anonymous credentials.
    pub storage_emulator_url: Option<String>,
    /// Where the health probes and `/metrics` listen; `None` (the default) serves nothing.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Bound on one object write, the storage client's retries included.
    pub write_timeout: Duration,
    /// The liveness probe fails when messages are in flight and none settled for this long.
    pub liveness_stall: Duration,
    /// Whether to check at start that the credentials may create objects in the bucket.
    pub startup_check: bool,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON unless stderr is a terminal.
    Auto,
    /// One JSON object per line, with the fields Cloud Logging maps (`severity`, `message`).
    Json,
    /// Human-readable lines.
    Text,
}

/// Every problem found in the environment, reported together.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    /// One line per bad variable, in the order the variables are documented.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// Every variable the worker reads, in the order the README documents them. The deploy scripts
/// pass exactly these (less [`EMULATOR_VARIABLES`]) to the worker pool, and their tests check it.
pub const VARIABLES: [&str; 19] = [
    "PROJECT_ID",
    "SUBSCRIPTION_ID",
    "BUCKET_NAME",
    "OBJECT_PREFIX",
    "MAX_OUTSTANDING_MESSAGES",
    "MAX_OUTSTANDING_BYTES",
    "MAX_CONCURRENT_WRITES",
    "MAX_LEASE_EXTENSION_SECS",
    "SHUTDOWN_TIMEOUT_SECS",
    "PROGRESS_INTERVAL_SECS",
    "LOG_FORMAT",
    "RUST_LOG",
    "WRITE_TIMEOUT_SECS",
    "HEALTH_PORT",
    "HEALTH_HOST",
    "LIVENESS_STALL_SECS",
    "STARTUP_CHECK",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
];

/// The variables that point the worker at local emulators: never deployed.
pub const EMULATOR_VARIABLES: [&str; 2] = ["PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"];

pub const DEFAULT_MAX_OUTSTANDING_MESSAGES: i64 = 1000;
pub const DEFAULT_MAX_OUTSTANDING_BYTES: i64 = 100 * 1024 * 1024;
pub const DEFAULT_MAX_CONCURRENT_WRITES: usize = 64;
pub const DEFAULT_MAX_LEASE_EXTENSION_SECS: u64 = 60;
/// Below Cloud Run's 10 s between SIGTERM and SIGKILL, with room for the process to exit.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 8;
pub const DEFAULT_PROGRESS_INTERVAL_SECS: u64 = 30;
/// A 10 MB upload takes well under a second on Cloud Run; this leaves room for the storage
/// client's retries with backoff through a short outage.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 60;
/// Longer than one write may take (`WRITE_TIMEOUT_SECS`) plus the 10 s failure backoff.
pub const DEFAULT_LIVENESS_STALL_SECS: u64 = 120;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // `std::env::vars()` panics on a non-UTF-8 entry; such an entry cannot be one of ours.
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Reads the given `(NAME, value)` pairs as if they were the environment; tests and the local
    /// runner use this to build a configuration without touching the process environment.
    pub fn from_vars<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // Every field is an optional string, so deserialisation itself cannot fail on values.
        let raw: RawEnv = envy::from_iter(vars).map_err(|e| ConfigError {
            problems: vec![format!("environment could not be read: {e}")],
        })?;
        raw.validate()
    }
}

/// The environment as strings; empty values count as unset, as they do in `.env` files.
#[derive(Deserialize, Default)]
struct RawEnv {
    project_id: Option<String>,
    subscription_id: Option<String>,
    bucket_name: Option<String>,
    object_prefix: Option<String>,
    max_outstanding_messages: Option<String>,
    max_outstanding_bytes: Option<String>,
    max_concurrent_writes: Option<String>,
    max_lease_extension_secs: Option<String>,
    shutdown_timeout_secs: Option<String>,
    progress_interval_secs: Option<String>,
    log_format: Option<String>,
    rust_log: Option<String>,
    pubsub_emulator_host: Option<String>,
    storage_emulator_host: Option<String>,
    write_timeout_secs: Option<String>,
    health_port: Option<String>,
    health_host: Option<String>,
    liveness_stall_secs: Option<String>,
    startup_check: Option<String>,
}

/// Collects problems while each variable is checked.
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn required(&mut self, name: &str, value: Option<String>, expected: &str) -> String {
        match non_empty(value) {
            Some(v) => v,
            None => {
                self.problems
                    .push(format!("{name} is not set (expected {expected})"));
                String::new()
            }
        }
    }

    /// Parses an optional positive integer within `range`, or returns the default.
    fn number<T>(
        &mut self,
        name: &str,
        value: Option<String>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(text) = non_empty(value) else {
            return default;
        };
        match text.trim().parse::<T>() {
            Ok(v) if range.contains(&v) => v,
            _ => {
                self.problems.push(format!(
                    "{name}={text:?} is invalid (expected a whole number from {} to {})",
                    range.start(),
                    range.end()
                ));
                default
            }
        }
    }

    fn problem(&mut self, text: String) {
        self.problems.push(text);
    }
}

impl RawEnv {
    fn validate(self) -> Result<Config, ConfigError> {
        let mut c = Checker {
            problems: Vec::new(),
        };

        let project_id = c.required(
            "PROJECT_ID",
            self.project_id,
            "the Google Cloud project id, e.g. my-project",
        );
        if project_id.contains('/') {
            c.problem(format!(
                "PROJECT_ID={project_id:?} is invalid (expected a project id, not a path)"
            ));
        }

        let subscription_id = c.required(
            "SUBSCRIPTION_ID",
            self.subscription_id,
            "a subscription id or projects/PROJECT/subscriptions/ID",
        );
        let subscription = match subscription_path(&project_id, &subscription_id) {
            Ok(path) => path,
            Err(expected) => {
                if !subscription_id.is_empty() {
                    c.problem(format!(
                        "SUBSCRIPTION_ID={subscription_id:?} is invalid (expected {expected})"
                    ));
                }
                String::new()
            }
        };

        let bucket = c.required(
            "BUCKET_NAME",
            self.bucket_name,
            "a Cloud Storage bucket name, e.g. my-bucket",
        );
        let bucket = bucket.strip_prefix("gs://").unwrap_or(&bucket).to_string();
        if !bucket.is_empty() && !is_valid_bucket_name(&bucket) {
            c.problem(format!(
                "BUCKET_NAME={bucket:?} is invalid (expected 3-222 lowercase letters, digits, '-', '_' or '.')"
            ));
        }

        let max_outstanding_messages = c.number(
            "MAX_OUTSTANDING_MESSAGES",
            self.max_outstanding_messages,
            DEFAULT_MAX_OUTSTANDING_MESSAGES,
            1..=1_000_000,
        );
        let max_outstanding_bytes = c.number(
            "MAX_OUTSTANDING_BYTES",
            self.max_outstanding_bytes,
            DEFAULT_MAX_OUTSTANDING_BYTES,
            1..=i64::MAX,
        );
        let max_concurrent_writes = c.number(
            "MAX_CONCURRENT_WRITES",
            self.max_concurrent_writes,
            DEFAULT_MAX_CONCURRENT_WRITES,
            1..=10_000,
        );
        let max_lease_extension_secs = c.number(
            "MAX_LEASE_EXTENSION_SECS",
            self.max_lease_extension_secs,
            DEFAULT_MAX_LEASE_EXTENSION_SECS,
            10..=600,
        );
        let shutdown_timeout_secs = c.number(
            "SHUTDOWN_TIMEOUT_SECS",
            self.shutdown_timeout_secs,
            DEFAULT_SHUTDOWN_TIMEOUT_SECS,
            1..=3600,
        );
        let progress_interval_secs = c.number(
            "PROGRESS_INTERVAL_SECS",
            self.progress_interval_secs,
            DEFAULT_PROGRESS_INTERVAL_SECS,
            0..=86_400,
        );

        let log_format = match non_empty(self.log_format).as_deref().map(str::trim) {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                c.problem(format!(
                    "LOG_FORMAT={other:?} is invalid (expected auto, json or text)"
                ));
                LogFormat::Auto
            }
        };

        let pubsub_emulator_host = non_empty(self.pubsub_emulator_host).map(|h| {
            // Accept the URL form too; the standard variable is a bare host:port.
            let h = h.trim();
            let h = h.strip_prefix("http://").unwrap_or(h);
            h.trim_end_matches('/').to_string()
        });
        let storage_emulator_url = match non_empty(self.storage_emulator_host) {
            None => None,
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(u.trim_end_matches('/').to_string())
            }
            // Some tools set a bare host:port; the emulator speaks plain http on it.
            Some(u) if !u.contains("://") => Some(format!("http://{}", u.trim_end_matches('/'))),
            Some(u) => {
                c.problem(format!(
                    "STORAGE_EMULATOR_HOST={u:?} is invalid (expected http://host:port)"
                ));
                None
            }
        };

        let health_addr = match non_empty(self.health_port) {
            None => None,
            Some(port) => {
                let port = c.number("HEALTH_PORT", Some(port), 0u16, 0..=u16::MAX);
                let host = non_empty(self.health_host).unwrap_or_else(|| "0.0.0.0".into());
                match host.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(std::net::SocketAddr::new(ip, port)),
                    Err(_) => {
                        c.problem(format!(
                            "HEALTH_HOST={host:?} is invalid (expected an IP address, e.g. 0.0.0.0)"
                        ));
                        None
                    }
                }
            }
        };
        let write_timeout_secs = c.number(
            "WRITE_TIMEOUT_SECS",
            self.write_timeout_secs,
            DEFAULT_WRITE_TIMEOUT_SECS,
            1..=3600,
        );
        let liveness_stall_secs = c.number(
            "LIVENESS_STALL_SECS",
            self.liveness_stall_secs,
            DEFAULT_LIVENESS_STALL_SECS,
            1..=86_400,
        );
        // By default the check runs against the real service only: emulators lack the API.
        let startup_check = match non_empty(self.startup_check).as_deref().map(str::trim) {
            None | Some("auto") => storage_emulator_url.is_none(),
            Some("on") => true,
            Some("off") => false,
            Some(other) => {
                c.problem(format!(
                    "STARTUP_CHECK={other:?} is invalid (expected auto, on or off)"
                ));
                false
            }
        };

        if !c.problems.is_empty() {
            return Err(ConfigError {
                problems: c.problems,
            });
        }
        Ok(Config {
            project_id,
            subscription,
            bucket,
            object_prefix: self.object_prefix.unwrap_or_default(),
            max_outstanding_messages,
            max_outstanding_bytes,
            max_concurrent_writes,
            max_lease_extension: Duration::from_secs(max_lease_extension_secs),
            shutdown_timeout: Duration::from_secs(shutdown_timeout_secs),
            progress_interval: (progress_interval_secs > 0)
                .then(|| Duration::from_secs(progress_interval_secs)),
            log_format,
            log_filter: non_empty(self.rust_log).unwrap_or_else(|| "info".to_string()),
            pubsub_emulator_host,
            storage_emulator_url,
            health_addr,
            write_timeout: Duration::from_secs(write_timeout_secs),
            liveness_stall: Duration::from_secs(liveness_stall_secs),
            startup_check,
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Expands a bare subscription id to its full path; a full path is checked and kept.
fn subscription_path(project_id: &str, subscription_id: &str) -> Result<String, &'static str> {
    const EXPECTED: &str = "a subscription id or projects/PROJECT/subscriptions/ID";
    let parts: Vec<&str> = subscription_id.split('/').collect();
    match parts.as_slice() {
        // With PROJECT_ID missing this path is wrong, but that is reported on its own.
        [id] if !id.is_empty() => Ok(format!("projects/{project_id}/subscriptions/{id}")),
        ["projects", project, "subscriptions", id] if !project.is_empty() && !id.is_empty() => {
            Ok(subscription_id.to_string())
        }
        _ => Err(EXPECTED),
    }
}

/// The naming rules of Cloud Storage buckets, loosely: enough to catch typos and `gs://` paths.
fn is_valid_bucket_name(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=222).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The required variables, with `overrides` replacing or adding entries.
    fn env(overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut map: std::collections::BTreeMap<String, String> = [
            ("PROJECT_ID", "my-project"),
            ("SUBSCRIPTION_ID", "my-sub"),
            ("BUCKET_NAME", "my-bucket"),
        ]
        .iter()
        .chain(overrides)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        map.retain(|_, v| v != "<unset>");
        map.into_iter().collect()
    }

    #[test]
    fn defaults_apply_when_only_required_variables_are_set() {
        let config = Config::from_vars(env(&[])).expect("valid");
        assert_eq!(
            config.subscription,
            "projects/my-project/subscriptions/my-sub"
        );
        assert_eq!(config.bucket, "my-bucket");
        assert_eq!(config.object_prefix, "");
        assert_eq!(config.max_outstanding_messages, 1000);
        assert_eq!(config.max_outstanding_bytes, 100 * 1024 * 1024);
        assert_eq!(config.max_concurrent_writes, 64);
        assert_eq!(config.max_lease_extension, Duration::from_secs(60));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(8));
        assert_eq!(config.progress_interval, Some(Duration::from_secs(30)));
        assert_eq!(config.log_format, LogFormat::Auto);
        assert_eq!(config.log_filter, "info");
        assert_eq!(config.pubsub_emulator_host, None);
        assert_eq!(config.storage_emulator_url, None);
        assert_eq!(config.health_addr, None, "nothing listens unless asked");
        assert_eq!(config.liveness_stall, Duration::from_secs(120));
        assert_eq!(config.write_timeout, Duration::from_secs(60));
        assert!(config.startup_check, "on against the real service");
    }

    #[test]
    fn health_endpoint_and_startup_check_settings() {
        let v = env(&[
            ("HEALTH_PORT", "8080"),
            ("LIVENESS_STALL_SECS", "30"),
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1"),
        ]);
        let config = Config::from_vars(v).expect("valid");
        assert_eq!(
            config.health_addr,
            Some("0.0.0.0:8080".parse().expect("addr"))
        );
        assert_eq!(config.liveness_stall, Duration::from_secs(30));
        assert!(!config.startup_check, "off by default against an emulator");

        let v = env(&[
            ("HEALTH_PORT", "0"),
            ("HEALTH_HOST", "127.0.0.1"),
            ("STARTUP_CHECK", "off"),
        ]);
        let config = Config::from_vars(v).expect("valid");
        assert_eq!(
            config.health_addr,
            Some("127.0.0.1:0".parse().expect("addr"))
        );
        assert!(!config.startup_check);

        let v = env(&[
            ("HEALTH_PORT", "http"),
            ("HEALTH_HOST", "localhost"),
            ("STARTUP_CHECK", "yes"),
        ]);
        let err = Config::from_vars(v).expect_err("invalid");
        let line = err.to_string();
        for name in [
            "HEALTH_PORT=\"http\"",
            "HEALTH_HOST=\"localhost\"",
            "STARTUP_CHECK=\"yes\"",
        ] {
            assert!(line.contains(name), "missing {name} in {line}");
        }
    }

    #[test]
    fn full_subscription_path_is_kept() {
        let v = env(&[("SUBSCRIPTION_ID", "projects/other/subscriptions/s1")]);
        let config = Config::from_vars(v).expect("valid");
        assert_eq!(config.subscription, "projects/other/subscriptions/s1");
    }

    #[test]
    fn missing_variables_are_all_named_in_one_error() {
        let err = Config::from_vars(env(&[
            ("PROJECT_ID", "<unset>"),
            ("SUBSCRIPTION_ID", "<unset>"),
            ("BUCKET_NAME", "<unset>"),
        ]))
        .expect_err("must fail");
        let line = err.to_string();
        for name in ["PROJECT_ID", "SUBSCRIPTION_ID", "BUCKET_NAME"] {
            assert!(line.contains(name), "{line}");
        }
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(err.problems().len(), 3, "{line}");
    }

    #[test]
    fn empty_values_count_as_missing() {
        let err = Config::from_vars(env(&[("PROJECT_ID", "")])).expect_err("must fail");
        assert_eq!(
            err.problems(),
            ["PROJECT_ID is not set (expected the Google Cloud project id, e.g. my-project)"]
        );
    }

    #[test]
    fn invalid_values_are_named_with_what_is_expected() {
        let v = env(&[
            ("MAX_CONCURRENT_WRITES", "lots"),
            ("MAX_OUTSTANDING_MESSAGES", "0"),
            ("MAX_LEASE_EXTENSION_SECS", "5"),
            ("LOG_FORMAT", "xml"),
            ("SUBSCRIPTION_ID", "projects/p/topics/t"),
            ("BUCKET_NAME", "Bad_Bucket"),
            ("STORAGE_EMULATOR_HOST", "ftp://x"),
        ]);
        let err = Config::from_vars(v).expect_err("must fail");
        let line = err.to_string();
        for needle in [
            "MAX_CONCURRENT_WRITES=\"lots\" is invalid (expected a whole number from 1 to 10000)",
            "MAX_OUTSTANDING_MESSAGES=\"0\"",
            "MAX_LEASE_EXTENSION_SECS=\"5\" is invalid (expected a whole number from 10 to 600)",
            "LOG_FORMAT=\"xml\"",
            "SUBSCRIPTION_ID=\"projects/p/topics/t\"",
            "BUCKET_NAME=\"Bad_Bucket\"",
            "STORAGE_EMULATOR_HOST=\"ftp://x\"",
        ] {
            assert!(line.contains(needle), "missing {needle:?} in {line}");
        }
        assert_eq!(err.problems().len(), 7, "{line}");
    }

    #[test]
    fn emulator_hosts_are_normalised() {
        let v = env(&[
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
            ("STORAGE_EMULATOR_HOST", "127.0.0.1:4443/"),
        ]);
        let config = Config::from_vars(v).expect("valid");
        assert_eq!(
            config.pubsub_emulator_host.as_deref(),
            Some("127.0.0.1:8085")
        );
        assert_eq!(
            config.storage_emulator_url.as_deref(),
            Some("http://127.0.0.1:4443")
        );
    }

    #[test]
    fn gs_prefix_and_zero_progress_interval_are_understood() {
        let v = env(&[
            ("BUCKET_NAME", "gs://my-bucket"),
            ("PROGRESS_INTERVAL_SECS", "0"),
            ("LOG_FORMAT", "json"),
            ("OBJECT_PREFIX", "in/"),
        ]);
        let config = Config::from_vars(v).expect("valid");
        assert_eq!(config.bucket, "my-bucket");
        assert_eq!(config.progress_interval, None);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.object_prefix, "in/");
    }
}
