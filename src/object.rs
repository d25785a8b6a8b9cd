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
mod tests;
