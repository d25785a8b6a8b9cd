//! What one message becomes: the object's name, content type and metadata.
//!
//! Everything here is a pure function of the message, so a redelivered message maps to the same
//! object name and the create-only write in [`crate::sink`] turns the redelivery into a no-op.

use crate::name::{NameFields, NameTemplate};
use google_cloud_pubsub::model::Message;
use google_cloud_wkt::Timestamp;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    /// From the `OBJECT_PREFIX` and `OBJECT_NAME` template ([`crate::name`]).
    pub name: String,
    pub content_type: &'static str,
    pub metadata: BTreeMap<String, String>,
}

impl ObjectSpec {
    /// Describes the object for `message`, delivered through `subscription`.
    pub fn for_message(
        message: &Message,
        names: &NameTemplate,
        subscription: &str,
        delivery_attempt: Option<i32>,
    ) -> Self {
        let text = is_text(&message.data);
        let name = names.render(&NameFields {
            message_id: &message.message_id,
            publish_time: message.publish_time.as_ref().and_then(to_datetime),
            attributes: &message.attributes,
            ordering_key: &message.ordering_key,
            subscription_id: subscription.rsplit('/').next().unwrap_or(subscription),
            text,
        });
        Self {
            name,
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
    fn the_name_comes_from_the_template_and_the_content_type_from_the_data() {
        let names =
            NameTemplate::parse("{subscription}/{attributes.kind}/{message_id}.{ext}", "in/");
        let names = names.expect("valid template");
        let m = message("42", 0, 0, "héllo ✓".as_bytes()).set_attributes([("kind", "a b")]);
        let spec = ObjectSpec::for_message(&m, &names, "projects/p/subscriptions/s", None);
        assert_eq!((spec.name.as_str(), spec.content_type), ("in/s/a%20b/42.txt", TEXT));
        let empty = message("2", 0, 0, b"");
        assert_eq!(ObjectSpec::for_message(&empty, &names, "s", None).content_type, TEXT);
        let binary = message("3", 0, 0, &[0xff, 0xfe, 0x00, 0x80]);
        let spec = ObjectSpec::for_message(&binary, &names, "s", None);
        assert_eq!((spec.name.as_str(), spec.content_type), ("in/s//3.bin", BINARY));
        assert!(!spec.is_text());
        // A redelivery has another delivery attempt but the same name.
        let again = ObjectSpec::for_message(&binary, &names, "s", Some(5));
        assert_eq!(again.name, spec.name);
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
