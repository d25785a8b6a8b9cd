//! What one message becomes: the object's name, content type, metadata and the settings it is
//! stored with (`OBJECT_CONTENT_TYPE`, `OBJECT_COMPRESSION`, `OBJECT_STORAGE_CLASS`,
//! `OBJECT_CACHE_CONTROL`, `OBJECT_CUSTOM_TIME`, `KMS_KEY_NAME`).
//!
//! Everything here is a pure function of the message and the configuration, so a redelivered
//! message maps to the same object name and the create-only write in [`crate::sink::Sink`] turns the
//! redelivery into a no-op. No setting changes the name but `OBJECT_COMPRESSION`, through `{ext}`
//! ([`NameTemplate::gzipped`], which `config.rs` applies), fixed for the life of a deployment.

use crate::name::{NameFields, NameTemplate};
use google_cloud_pubsub::model::Message;
use google_cloud_wkt::Timestamp;
use std::borrow::Cow;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Content type of a message whose data is valid UTF-8 (including empty data).
pub const TEXT: &str = "text/plain; charset=utf-8";
/// Content type of a message whose data is not valid UTF-8; the bytes are stored unchanged.
pub const BINARY: &str = "application/octet-stream";

/// Cloud Storage rejects objects whose custom metadata exceeds 8 KiB (keys plus values).
const METADATA_LIMIT: usize = 8 * 1024;

/// Metadata keys this worker sets itself; see [`metadata_key`].
const RESERVED_KEYS: [&str; 5] =
    ["message_id", "publish_time", "delivery_attempt", "subscription", "attributes_omitted"];

/// What an attribute's key is prefixed with when it would take one of the worker's own keys.
const ATTRIBUTE_PREFIX: &str = "attribute_";

/// The metadata key an attribute is stored under: its own name, or `attribute_{name}` when that
/// is one of the worker's own keys in any case (`Message_ID` too: metadata read as HTTP headers
/// comes back lowercased, and a tool reading the object that way would see a second value of
/// the worker's key) or itself starts with `attribute_` in any case. The second rule keeps the
/// mapping one-to-one: `message_id` becomes `attribute_message_id`, and a literal
/// `attribute_message_id` becomes `attribute_attribute_message_id`, so no attribute's value
/// replaces another's.
pub fn metadata_key(attribute: &str) -> Cow<'_, str> {
    let prefixed = attribute
        .get(..ATTRIBUTE_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(ATTRIBUTE_PREFIX));
    match prefixed || RESERVED_KEYS.iter().any(|key| key.eq_ignore_ascii_case(attribute)) {
        true => Cow::Owned(format!("{ATTRIBUTE_PREFIX}{attribute}")),
        false => Cow::Borrowed(attribute),
    }
}

/// The longest content type taken from an attribute; a longer value falls back.
const CONTENT_TYPE_MAX: usize = 256;

/// How every object is stored: the same for all messages of a deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectSettings {
    pub content_type: ContentType,
    /// `OBJECT_COMPRESSION=gzip`: the body gzipped, stored with `Content-Encoding: gzip`; the
    /// name template is then [`NameTemplate::gzipped`] too (`config.rs` makes both).
    pub gzip: bool,
    /// `OBJECT_STORAGE_CLASS`; `None`: the bucket's default class.
    pub storage_class: Option<String>,
    /// `OBJECT_CACHE_CONTROL`; `None`: Cloud Storage's default for the object's access.
    pub cache_control: Option<String>,
    /// `OBJECT_CUSTOM_TIME=publish_time`: the object's custom time is the publish time, so that
    /// a lifecycle rule on `daysSinceCustomTime` ages data by when it was published.
    pub custom_time: bool,
    /// `KMS_KEY_NAME`: `projects/P/locations/L/keyRings/R/cryptoKeys/K`; `None`: the bucket's
    /// default encryption.
    pub kms_key: Option<String>,
}

/// Where an object's content type comes from (`OBJECT_CONTENT_TYPE`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContentType {
    /// [`TEXT`] for valid UTF-8, [`BINARY`] otherwise (unset).
    #[default]
    Detect,
    /// The same type for every object, e.g. `application/json`.
    Fixed(String),
    /// `{attributes.NAME}` or `{attributes.NAME|FALLBACK}`: the attribute's value when it is a
    /// valid media type, else the fallback, else [`ContentType::Detect`]'s choice.
    Attribute { name: String, fallback: Option<String> },
}

impl ContentType {
    /// Parses `OBJECT_CONTENT_TYPE`; `None` when it is neither a media type nor an attribute.
    pub fn parse(value: &str) -> Option<Self> {
        let Some(body) = value.strip_prefix("{attributes.").and_then(|v| v.strip_suffix('}'))
        else {
            return is_media_type(value).then(|| ContentType::Fixed(value.to_string()));
        };
        let (name, fallback) = match body.split_once('|') {
            Some((name, fallback)) => (name, Some(fallback)),
            None => (body, None),
        };
        let valid = !name.is_empty() && !name.contains(['{', '}', '|']);
        let fallback = fallback.map(|f| is_media_type(f).then(|| f.to_string()));
        match (valid, fallback) {
            (true, None) => Some(ContentType::Attribute { name: name.into(), fallback: None }),
            (true, Some(Some(f))) => {
                Some(ContentType::Attribute { name: name.into(), fallback: Some(f) })
            }
            _ => None,
        }
    }

    fn for_message(&self, message: &Message, text: bool) -> String {
        let detected = || if text { TEXT } else { BINARY }.to_string();
        match self {
            ContentType::Detect => detected(),
            ContentType::Fixed(fixed) => fixed.clone(),
            ContentType::Attribute { name, fallback } => (message.attributes.get(name))
                .map(|v| v.trim())
                .filter(|v| is_media_type(v))
                .map(str::to_string)
                .or_else(|| fallback.clone())
                .unwrap_or_else(detected),
        }
    }
}

/// A media type a publisher may choose: `type/subtype` of RFC 9110 token characters, then
/// parameters of printable ASCII, at most 256 bytes. Anything else (a control character, a
/// header injection attempt) is not sent to Cloud Storage.
pub fn is_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let (essence, parameters) = value.split_once(';').unwrap_or((value, ""));
    let printable = parameters.bytes().all(|b| (b' '..=b'~').contains(&b));
    let mut parts = essence.trim_end_matches(' ').splitn(2, '/');
    let (kind, subtype) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    value.len() <= CONTENT_TYPE_MAX && token(kind) && token(subtype) && printable
}

/// The object a message is written to.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectSpec {
    /// From the `OBJECT_PREFIX` and `OBJECT_NAME` template ([`NameTemplate`]).
    pub name: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    /// The data is valid UTF-8 (`false`: raw bytes, counted as binary).
    pub text: bool,
    /// The body is gzipped and stored with `Content-Encoding: gzip`.
    pub gzip: bool,
    /// The publish time, when `OBJECT_CUSTOM_TIME=publish_time`.
    pub custom_time: Option<Timestamp>,
}

impl ObjectSpec {
    /// Describes the object for `message`, delivered through `subscription`.
    pub fn for_message(
        message: &Message,
        names: &NameTemplate,
        settings: &ObjectSettings,
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
            content_type: settings.content_type.for_message(message, text),
            metadata: metadata(message, subscription, delivery_attempt),
            text,
            gzip: settings.gzip,
            custom_time: message.publish_time.filter(|_| settings.custom_time),
        }
    }

    /// Whether the data was stored as text (`false`: raw bytes, counted as binary).
    pub fn is_text(&self) -> bool {
        self.text
    }
}

/// `data` as a gzip member (flate2's default level 6), as Cloud Storage expects a body stored
/// with `Content-Encoding: gzip`.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    encoder.write_all(data)?;
    encoder.finish()
}

/// Valid UTF-8, the empty message included, is text.
pub fn is_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok()
}

/// The object's custom metadata: where the message came from, and its attributes.
///
/// Attributes that would push the metadata past Cloud Storage's 8 KiB limit are left out (in key
/// order) and counted in `attributes_omitted`: an object that can never be written would
/// otherwise be redelivered until it is dead-lettered. Every attribute kept has a key of its
/// own ([`metadata_key`]).
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
        let key = metadata_key(key).into_owned();
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

    fn spec(m: &Message, settings: &ObjectSettings) -> ObjectSpec {
        let names = NameTemplate::parse("{message_id}.{ext}", "").expect("valid template");
        let names = if settings.gzip { names.gzipped().expect("valid") } else { names };
        ObjectSpec::for_message(m, &names, settings, "s", None)
    }

    #[test]
    fn the_name_comes_from_the_template_and_the_content_type_from_the_data() {
        let names =
            NameTemplate::parse("{subscription}/{attributes.kind}/{message_id}.{ext}", "in/");
        let names = names.expect("valid template");
        let m = message("42", 0, 0, "héllo ✓".as_bytes()).set_attributes([("kind", "a b")]);
        let detect = ObjectSettings::default();
        let spec = ObjectSpec::for_message(&m, &names, &detect, "projects/p/subscriptions/s", None);
        assert_eq!((spec.name.as_str(), spec.content_type.as_str()), ("in/s/a%20b/42.txt", TEXT));
        let empty = message("2", 0, 0, b"");
        assert_eq!(ObjectSpec::for_message(&empty, &names, &detect, "s", None).content_type, TEXT);
        let binary = message("3", 0, 0, &[0xff, 0xfe, 0x00, 0x80]);
        let spec = ObjectSpec::for_message(&binary, &names, &detect, "s", None);
        assert_eq!((spec.name.as_str(), spec.content_type.as_str()), ("in/s//3.bin", BINARY));
        assert!(!spec.is_text());
        // A redelivery has another delivery attempt but the same name.
        let again = ObjectSpec::for_message(&binary, &names, &detect, "s", Some(5));
        assert_eq!(again.name, spec.name);
        // Nothing but the settings asked for is set.
        assert_eq!((spec.gzip, spec.custom_time), (false, None));
    }

    #[test]
    fn the_content_type_is_fixed_or_a_valid_attribute_or_its_fallback() {
        let settings = |value: &str| ObjectSettings {
            content_type: ContentType::parse(value).expect(value),
            ..ObjectSettings::default()
        };
        let json = message("1", 0, 0, b"{}");
        assert_eq!(spec(&json, &settings("application/json")).content_type, "application/json");
        let by_attribute = settings("{attributes.type|application/json}");
        let typed = |value: &str| json.clone().set_attributes([("type", value)]);
        let content_type = |m: &Message| spec(m, &by_attribute).content_type;
        assert_eq!(content_type(&typed("text/csv; charset=utf-8")), "text/csv; charset=utf-8");
        assert_eq!(content_type(&json), "application/json", "no attribute: the fallback");
        for bad in ["", "csv", "text/csv\r\nX-Evil: 1", "a/b/c", "text /csv", &"x".repeat(300)] {
            assert_eq!(content_type(&typed(bad)), "application/json", "{bad:?}");
        }
        // No fallback: today's choice by the data.
        let binary = message("2", 0, 0, &[0xff]).set_attributes([("type", "nope")]);
        assert_eq!(spec(&binary, &settings("{attributes.type}")).content_type, BINARY);
        for bad in ["json", "{attributes.}", "{attributes.t|bad}", "{attributes.t", "a/b\n"] {
            assert_eq!(ContentType::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn gzip_and_custom_time_change_only_the_ext_the_encoding_and_the_time() {
        let m = message("7", 1_700_000_000, 5, b"{\"a\":1}");
        let plain = spec(&m, &ObjectSettings::default());
        let settings = ObjectSettings { gzip: true, custom_time: true, ..Default::default() };
        let stored = spec(&m, &settings);
        assert_eq!((plain.name.as_str(), stored.name.as_str()), ("7.txt", "7.txt.gz"));
        assert!(stored.gzip);
        assert_eq!(stored.custom_time, m.publish_time);
        assert_eq!(
            (&stored.metadata, &stored.content_type),
            (&plain.metadata, &plain.content_type)
        );
    }

    #[test]
    fn gzip_inflates_to_the_same_bytes() {
        use std::io::Read as _;
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let zipped = gzip(&data).expect("gzip into memory");
        assert!(zipped.len() < data.len() / 2, "{} of {} bytes", zipped.len(), data.len());
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(zipped.as_slice())
            .read_to_end(&mut inflated)
            .expect("inflate");
        assert_eq!(inflated, data);
        assert_eq!(gzip(&data).expect("again"), zipped, "the same bytes each time");
    }

    #[test]
    fn metadata_traces_the_object_to_its_message() {
        let m = message("42", 1_700_000_000, 5_000_000, b"x").set_attributes([
            ("origin", "test"),
            ("message_id", "spoofed"),
            ("Subscription", "x"),
        ]);
        let md = metadata(&m, "projects/p/subscriptions/s", Some(3));
        let want: BTreeMap<String, String> = [
            ("message_id", "42"),
            ("publish_time", "2023-11-14T22:13:20.005Z"),
            ("delivery_attempt", "3"),
            ("subscription", "projects/p/subscriptions/s"),
            ("origin", "test"),
            ("attribute_message_id", "spoofed"),
            ("attribute_Subscription", "x"),
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

    #[test]
    fn every_attribute_keeps_a_key_of_its_own() {
        let m = message("7", 0, 0, b"x").set_attributes([
            ("message_id", "a"),
            ("attribute_message_id", "b"),
            ("Attribute_Message_ID", "c"),
            ("attribute_attribute_message_id", "d"),
            ("app/version", "e"),
        ]);
        let md = metadata(&m, "s", None);
        let values: std::collections::BTreeSet<&str> = md.values().map(String::as_str).collect();
        for value in ["a", "b", "c", "d", "e"] {
            assert!(values.contains(value), "{value} lost: {md:?}");
        }
        assert_eq!(md["message_id"], "7");
        assert!(!md.contains_key("attributes_omitted"));
    }

    #[test]
    fn a_hundred_attributes_all_become_entries() {
        let attributes: Vec<(String, String)> =
            (0..100).map(|i| (format!("k{i:03}"), "v".to_string())).collect();
        let m = message("1", 0, 0, b"x").set_attributes(attributes);
        let md = metadata(&m, "s", Some(1));
        assert_eq!(md.keys().filter(|k| k.starts_with('k')).count(), 100);
        assert!(!md.contains_key("attributes_omitted"));
    }

    proptest::proptest! {
        /// Two attributes never share a metadata key, nor take one of the worker's own.
        #[test]
        fn metadata_keys_are_one_to_one(
            a in "(?i)(attribute_){0,2}(message_id|subscription|x|/|)",
            b in "(?i)(attribute_){0,2}(message_id|subscription|x|/|)",
        ) {
            proptest::prop_assert!(!RESERVED_KEYS.contains(&metadata_key(&a).as_ref()));
            proptest::prop_assert_eq!(a == b, metadata_key(&a) == metadata_key(&b));
        }
    }
}
