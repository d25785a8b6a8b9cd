//! What one message becomes: the object's name, content type and metadata.
//!
//! Everything here is a pure function of the message, so a redelivered message maps to the same
//! object name and the create-only write in [`crate::sink`] turns the redelivery into a no-op.

use google_cloud_pubsub::model::Message;
use google_cloud_wkt::Timestamp;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Content type of a message whose data is valid UTF-8 (including empty data).
pub const TEXT: &str = "text/plain; charset=utf-8";
/// Content type of a message whose data is not valid UTF-8; the bytes are stored unchanged.
pub const BINARY: &str = "application/octet-stream";

/// Cloud Storage rejects objects whose custom metadata exceeds 8 KiB (keys plus values).
const METADATA_LIMIT: usize = 8 * 1024;

/// Metadata keys this worker sets itself; an attribute with one of these names is stored under
/// `attribute_{name}` instead, so it can neither hide nor be hidden by the worker's own keys.
pub const RESERVED_KEYS: [&str; 4] =
    ["message_id", "publish_time", "delivery_attempt", "subscription"];

/// The object a message is written to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSpec {
    /// `{prefix}message_{YYYYMMDD_HHMMSS_ffffff}_{message_id}.txt` (`.bin` for binary data).
    pub name: String,
    pub content_type: &'static str,
    pub metadata: BTreeMap<String, String>,
}

impl ObjectSpec {
    /// Describes the object for `message`, delivered through `subscription`.
    pub fn for_message(
        message: &Message,
        prefix: &str,
        subscription: &str,
        delivery_attempt: Option<i32>,
    ) -> Self {
        let text = is_text(&message.data);
        Self {
            name: object_name(prefix, message.publish_time.as_ref(), &message.message_id, text),
            content_type: if text { TEXT } else { BINARY },
            metadata: metadata(message, subscription, delivery_attempt),
        }
    }

    /// Whether the data was stored as text (`false`: raw bytes, worth a warning).
    pub fn is_text(&self) -> bool {
        self.content_type == TEXT
    }
}

/// Valid UTF-8, the empty message included, is text.
pub fn is_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok()
}

/// Builds the deterministic object name.
///
/// The publish time comes first so that a listing sorts by time; the message id makes the name
/// unique, since two messages published in the same microsecond have different ids.
pub fn object_name(
    prefix: &str,
    publish_time: Option<&Timestamp>,
    message_id: &str,
    text: bool,
) -> String {
    let stamp = publish_time
        .and_then(to_datetime)
        .and_then(|t| {
            t.format(format_description!(
                "[year][month][day]_[hour][minute][second]_[subsecond digits:6]"
            ))
            .ok()
        })
        // Pub/Sub always sets a publish time; a message without one still gets a stable name.
        .unwrap_or_else(|| "00000000_000000_000000".to_string());
    let id: String = message_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let extension = if text { "txt" } else { "bin" };
    format!("{prefix}message_{stamp}_{id}.{extension}")
}

/// The object's custom metadata: where the message came from, and its attributes.
///
/// Attributes that would push the metadata past Cloud Storage's 8 KiB limit are left out (in key
/// order) and counted in `attributes_omitted`, because an object that can never be written would
/// otherwise be redelivered forever.
pub fn metadata(
    message: &Message,
    subscription: &str,
    delivery_attempt: Option<i32>,
) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert("message_id".to_string(), message.message_id.clone());
    if let Some(time) =
        message.publish_time.as_ref().and_then(to_datetime).and_then(|t| t.format(&Rfc3339).ok())
    {
        metadata.insert("publish_time".to_string(), time);
    }
    if let Some(attempt) = delivery_attempt {
        metadata.insert("delivery_attempt".to_string(), attempt.to_string());
    }
    metadata.insert("subscription".to_string(), subscription.to_string());

    let mut size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut omitted = 0usize;
    let attributes: BTreeMap<&String, &String> = message.attributes.iter().collect();
    for (key, value) in attributes {
        let key = if RESERVED_KEYS.contains(&key.as_str()) || key == "attributes_omitted" {
            format!("attribute_{key}")
        } else {
            key.clone()
        };
        // Reserve room for the `attributes_omitted` entry itself.
        if size + key.len() + value.len() + 32 > METADATA_LIMIT {
            omitted += 1;
            continue;
        }
        size += key.len() + value.len();
        metadata.insert(key, value.clone());
    }
    if omitted > 0 {
        metadata.insert("attributes_omitted".to_string(), omitted.to_string());
    }
    metadata
}

fn to_datetime(t: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(t.seconds()) * 1_000_000_000 + i128::from(t.nanos());
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, seconds: i64, nanos: i32, data: &[u8]) -> Message {
        Message::new()
            .set_message_id(id)
            .set_publish_time(Timestamp::new(seconds, nanos).expect("valid timestamp"))
            .set_data(bytes::Bytes::copy_from_slice(data))
    }

    #[test]
    fn name_has_prefix_utc_timestamp_with_microseconds_and_id() {
        // 2024-02-29T23:59:58.123456789Z
        let m = message("1234567890", 1_709_251_198, 123_456_789, b"hi");
        let spec = ObjectSpec::for_message(&m, "in/", "projects/p/subscriptions/s", None);
        assert_eq!(spec.name, "in/message_20240229_235958_123456_1234567890.txt");
    }

    #[test]
    fn name_is_deterministic_and_unique_per_message() {
        let a = message("1", 1_700_000_000, 0, b"x");
        let b = message("2", 1_700_000_000, 0, b"x");
        let name = |m: &Message| ObjectSpec::for_message(m, "", "s", None).name;
        assert_eq!(name(&a), name(&a.clone()));
        assert_ne!(name(&a), name(&b));
        // A redelivery has another delivery attempt but the same name.
        assert_eq!(
            ObjectSpec::for_message(&a, "", "s", Some(1)).name,
            ObjectSpec::for_message(&a, "", "s", Some(5)).name
        );
    }

    #[test]
    fn odd_characters_in_message_ids_cannot_escape_the_prefix() {
        let m = message("../a b", 0, 0, b"");
        let spec = ObjectSpec::for_message(&m, "p/", "s", None);
        assert_eq!(spec.name, "p/message_19700101_000000_000000____a_b.txt");
    }

    #[test]
    fn missing_publish_time_still_gives_a_stable_name() {
        let m = Message::new().set_message_id("7");
        assert_eq!(
            ObjectSpec::for_message(&m, "", "s", None).name,
            "message_00000000_000000_000000_7.txt"
        );
    }

    #[test]
    fn content_type_follows_utf8_validity() {
        let text = message("1", 0, 0, "héllo ✓".as_bytes());
        let empty = message("2", 0, 0, b"");
        let binary = message("3", 0, 0, &[0xff, 0xfe, 0x00, 0x80]);
        assert_eq!(ObjectSpec::for_message(&text, "", "s", None).content_type, TEXT);
        assert_eq!(ObjectSpec::for_message(&empty, "", "s", None).content_type, TEXT);
        let spec = ObjectSpec::for_message(&binary, "", "s", None);
        assert_eq!(spec.content_type, BINARY);
        assert!(!spec.is_text());
        assert!(spec.name.ends_with("_3.bin"), "{}", spec.name);
    }

    #[test]
    fn metadata_traces_the_object_to_its_message() {
        let m = message("42", 1_700_000_000, 5_000_000, b"x")
            .set_attributes([("origin", "test"), ("message_id", "spoofed")]);
        let md = metadata(&m, "projects/p/subscriptions/s", Some(3));
        let want: BTreeMap<String, String> = [
            ("message_id", "42"),
            ("publish_time", "2023-11-14T22:13:20.005Z"),
            ("delivery_attempt", "3"),
            ("subscription", "projects/p/subscriptions/s"),
            ("origin", "test"),
            ("attribute_message_id", "spoofed"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(md, want);
        assert!(!metadata(&m, "s", None).contains_key("delivery_attempt"));
    }

    #[test]
    fn oversized_attributes_are_omitted_and_counted() {
        let big = "v".repeat(1000);
        let attributes: Vec<(String, String)> =
            (0..20).map(|i| (format!("k{i:02}"), big.clone())).collect();
        let m = message("1", 0, 0, b"x").set_attributes(attributes);
        let md = metadata(&m, "s", None);
        let size: usize = md.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= METADATA_LIMIT, "size {size}");
        let kept = md.keys().filter(|k| k.starts_with('k')).count();
        assert_eq!(md["attributes_omitted"], (20 - kept).to_string());
        assert!(kept >= 7, "kept {kept}");
    }
}
