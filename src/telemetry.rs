//! Logging: JSON lines for Cloud Logging on Cloud Run, readable text on a terminal.
//!
//! Cloud Logging parses a JSON line written to stdout or stderr into a structured entry: it maps
//! `severity` to the entry's level, `message` to its text, `logging.googleapis.com/labels` to
//! labels and `logging.googleapis.com/sourceLocation` to the source location; the other keys
//! become the entry's `jsonPayload`. `tracing_subscriber`'s own JSON format nests fields and
//! writes `level`, so this module has its own small formatter.

use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Log output format (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON unless stderr is a terminal.
    Auto,
    /// One JSON object per line, with the fields Cloud Logging maps (`severity`, `message`).
    Json,
    /// Human-readable lines.
    Text,
}

/// Fields that are copied into Cloud Logging labels, so entries can be filtered by them.
const LABEL_FIELDS: [&str; 2] = ["message_id", "subscription"];

/// Installs the global subscriber; logs go to stderr.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG={filter:?} is invalid: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder.event_format(CloudLogging).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
    result.map_err(|e| anyhow::anyhow!("logging could not be set up: {e}"))
}

/// A JSON subscriber writing to `writer`; tests use it to check the shape of the lines.
pub fn json_subscriber<W>(writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt().with_writer(writer).event_format(CloudLogging).finish()
}

/// Formats each event as one JSON object in Cloud Logging's structured-logging shape.
struct CloudLogging;

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldVisitor::default();
        event.record(&mut fields);

        let mut entry = Map::new();
        entry.insert("severity".into(), severity(meta.level()).into());
        entry.insert("message".into(), fields.message.take().unwrap_or_default().into());
        if let Ok(now) =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)
        {
            entry.insert("timestamp".into(), now.into());
        }
        entry.insert("target".into(), meta.target().into());
        let labels: Map<String, Value> = LABEL_FIELDS
            .iter()
            .filter_map(|&name| {
                let value = fields.values.get(name)?;
                let text = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
                Some((name.to_string(), Value::String(text)))
            })
            .collect();
        for (key, value) in fields.values {
            // Event fields never overwrite the keys Cloud Logging gives a meaning to.
            entry.entry(key).or_insert(value);
        }
        if !labels.is_empty() {
            entry.insert("logging.googleapis.com/labels".into(), labels.into());
        }
        if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
            entry.insert(
                "logging.googleapis.com/sourceLocation".into(),
                serde_json::json!({ "file": file, "line": line.to_string() }),
            );
        }
        writeln!(writer, "{}", Value::Object(entry))
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// Collects an event's fields as JSON values, keeping numbers and booleans typed.
#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    values: Map<String, Value>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.values.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, as anyhow's `{:#}` would print it.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        self.put(field, text.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_lines_have_the_shape_cloud_logging_maps() {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(json_subscriber(buffer.clone()), || {
            tracing::warn!(
                message_id = "123",
                subscription = "projects/p/subscriptions/s",
                delivery_attempt = 2,
                error = "boom",
                "write failed"
            );
            tracing::info!(severity = "spoof", "plain");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["severity"], "WARNING");
        assert_eq!(first["message"], "write failed");
        assert_eq!(first["message_id"], "123");
        assert_eq!(first["delivery_attempt"], 2);
        assert_eq!(first["error"], "boom");
        assert_eq!(
            first["logging.googleapis.com/labels"],
            serde_json::json!({"message_id": "123", "subscription": "projects/p/subscriptions/s"})
        );
        assert!(first["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(first["logging.googleapis.com/sourceLocation"]["file"].is_string());
        assert_eq!(lines[1]["severity"], "INFO", "a field cannot overwrite severity");
        assert!(lines[1].get("logging.googleapis.com/labels").is_none());
    }
}
