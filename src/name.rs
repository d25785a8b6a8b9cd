//! Object names from a template: `OBJECT_PREFIX`, then `OBJECT_NAME` with its tokens filled in.
//!
//! The create-only write in [`crate::sink`] takes "already exists" to mean "already written", so a
//! name must be a pure function of the message and differ between messages, or a message is acked
//! without its object. [`NameTemplate::parse`] refuses every template that could break this, and
//! [`NameTemplate::render`] cannot fail: values from publishers go through one rule (`encode`),
//! and a name that could grow too long has its other values shortened, never the message id.

mod check;

pub use check::TemplateError;
use check::{Piece, check_layout, forbidden, layout, push_text, reserved_start, token};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use time::format_description::OwnedFormatItem;
use time::{OffsetDateTime, UtcOffset};

/// The default template: with an empty `OBJECT_PREFIX`, exactly the names earlier versions gave,
/// so redeliveries of messages they wrote land on the objects that already exist.
pub const DEFAULT_TEMPLATE: &str = "message_{publish_time}_{message_id}.{ext}";

/// Cloud Storage's limit on a name, in bytes.
const NAME_MAX: usize = 1024;
/// Cloud Storage refuses every name that starts with this (it serves ACME HTTP-01 challenges).
const RESERVED_START: &str = ".well-known/acme-challenge/";
/// The fixed part of a name (prefix, literal text, the widest rendering of each fixed-width token,
/// [`ID_MAX`] per `{message_id}` and [`VALUE_MIN`] per other value) may take half of a name, so
/// that values always keep the other half.
const FIXED_MAX: usize = NAME_MAX / 2;
/// Room kept for each `{message_id}`. Pub/Sub ids are about 20 digits; an id that is empty or
/// encodes to more is written as `sha256=` and the 64 hex digits of its SHA-256, which stays
/// unique and cannot be mistaken for an encoded id, since encoding turns `=` into `%3D`.
const ID_MAX: usize = 128;
/// What a name is given room for after the prefix, so that the usual one (the default template
/// takes 51 bytes with a 20-digit id) is written without growing.
const NAME_CAPACITY: usize = 96;
/// Cap on the encoding of every other value.
const VALUE_MAX: usize = 128;
/// Shortening stops here: one character encodes to at most 12 bytes, so a value that is not
/// empty stays so (which [`NameTemplate::parse`] counts on when it looks for `.` segments).
const VALUE_MIN: usize = 12;

/// Everything but RFC 3986's unreserved characters `A-Z a-z 0-9 - . _ ~` is percent-encoded.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// `%s` at year -9999 is the widest a strftime field renders.
const TIME_FIELD_MAX: usize = 13;
/// `{publish_time}` with the widest year, -9999.
const STAMP_MAX: usize = 23;

/// A parsed `OBJECT_PREFIX` + `OBJECT_NAME`, ready to name messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    /// The prefix and the template as given, for the start-up log line.
    source: String,
    prefix: String,
    parts: Vec<Part>,
    /// What values may take in total, so that a name is at most [`NAME_MAX`] bytes with any id.
    value_budget: usize,
    /// `{ext}` ends in [`GZIP_EXT`]: see [`NameTemplate::gzipped`].
    gzip: bool,
}

/// What `{ext}` gains for gzipped bodies (`OBJECT_COMPRESSION=gzip`).
const GZIP_EXT: &str = ".gz";

/// What a name may be made of: all from the message, plus the subscription id.
#[derive(Debug, Clone, Copy)]
pub struct NameFields<'a> {
    pub message_id: &'a str,
    /// Rendered in UTC, whatever its offset. `None` never comes from Pub/Sub; it renders as
    /// 1970-01-01T00:00:00Z, except that `{publish_time}` gives `00000000_000000_000000`, as
    /// earlier versions did.
    pub publish_time: Option<OffsetDateTime>,
    pub attributes: &'a HashMap<String, String>,
    pub ordering_key: &'a str,
    /// The id, i.e. the last segment of `projects/P/subscriptions/S`.
    pub subscription_id: &'a str,
    /// The data is valid UTF-8.
    pub text: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    MessageId,
    Hash(usize),
    Ext,
    Stamp,
    Time(OwnedFormatItem),
    Subscription,
    OrderingKey,
    /// An empty default means none.
    Attribute {
        name: String,
        default: String,
    },
}

impl NameTemplate {
    /// `prefix` is `OBJECT_PREFIX`: literal text put in front of every name (no tokens are read
    /// in it).
    pub fn parse(template: &str, prefix: &str) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        if let Some(c) = forbidden(prefix) {
            return Err(TemplateError::ForbiddenInPrefix(c));
        }
        let (mut parts, mut text, mut i) = (Vec::new(), String::new(), 0);
        while let Some(c) = template[i..].chars().next() {
            let doubled = template[i + c.len_utf8()..].starts_with(c);
            match c {
                '{' | '}' if doubled => {
                    text.push(c);
                    i += 2;
                }
                '}' => return Err(TemplateError::UnmatchedBrace { brace: c, at: i }),
                '{' => {
                    let unmatched = TemplateError::UnmatchedBrace { brace: c, at: i };
                    let len = template[i..].find('}').ok_or(unmatched)?;
                    push_text(&mut parts, &mut text)?;
                    parts.push(token(&template[i + 1..i + len])?);
                    i += len + 1;
                }
                _ => {
                    text.push(c);
                    i += c.len_utf8();
                }
            }
        }
        push_text(&mut parts, &mut text)?;
        if !parts.iter().any(|p| matches!(p, Part::MessageId)) {
            return Err(TemplateError::NoMessageId);
        }
        let mut pieces = vec![Piece::Fixed(prefix)];
        parts.iter().for_each(|part| part.pieces(&mut pieces));
        if reserved_start(prefix) {
            return Err(TemplateError::ReservedStart { in_prefix: true });
        }
        let fixed_start: String = (pieces.iter())
            .map_while(|piece| if let Piece::Fixed(text) = piece { Some(*text) } else { None })
            .collect();
        if reserved_start(&fixed_start) {
            return Err(TemplateError::ReservedStart { in_prefix: false });
        }
        let value_budget = check_layout(&pieces)?;
        let prefix = prefix.to_string();
        Ok(Self { source: format!("{prefix}{template}"), prefix, parts, value_budget, gzip: false })
    }

    /// The same template for gzipped bodies: `{ext}` renders `txt.gz` or `bin.gz`. Its three
    /// more bytes are fixed text to the budget, so names without gzip stay exactly as they were.
    pub fn gzipped(mut self) -> Result<Self, TemplateError> {
        self.value_budget = layout(&self.prefix, &self.parts, true)?;
        self.gzip = true;
        Ok(self)
    }

    /// The prefix and the template as given.
    pub fn template(&self) -> &str {
        &self.source
    }

    /// The object name for a message: at most 1024 bytes, whatever the message holds.
    ///
    /// When values would take more than their budget, they all get the same cap, the largest
    /// from 128 bytes down to 12 that fits, so the longest are cut first. The budget assumes a
    /// 128-byte id, so what is cut never depends on the id: two messages that differ only in
    /// their id always get different names.
    pub fn render(&self, fields: &NameFields<'_>) -> String {
        let (name, used) = self.write(fields, VALUE_MAX);
        if used <= self.value_budget {
            return name;
        }
        // `parse` checked that VALUE_MIN fits.
        let (mut fits, mut too_big) = (VALUE_MIN, VALUE_MAX);
        while too_big - fits > 1 {
            let cap = (fits + too_big) / 2;
            if self.write(fields, cap).1 <= self.value_budget {
                fits = cap;
            } else {
                too_big = cap;
            }
        }
        self.write(fields, fits).0
    }

    /// The name with values capped at `cap` bytes each, and the bytes the values took.
    ///
    /// A name that values made start with `.well-known/acme-challenge/` (`parse` refused fixed
    /// text that could) has that first `.` written `%2E`, as [`encode`] writes a lone `.`: the
    /// name is then one Cloud Storage takes. The two bytes this adds count as the values'.
    fn write(&self, fields: &NameFields<'_>, cap: usize) -> (String, usize) {
        let mut out = String::with_capacity(self.prefix.len() + NAME_CAPACITY);
        out.push_str(&self.prefix);
        let mut used = 0;
        let time = fields.publish_time.and_then(|t| t.checked_to_offset(UtcOffset::UTC));
        for part in &self.parts {
            let value = match part {
                Part::Subscription => fields.subscription_id,
                Part::OrderingKey => fields.ordering_key,
                Part::Attribute { name, default } => (fields.attributes.get(name))
                    .filter(|v| !v.is_empty())
                    .map_or(default.as_str(), String::as_str),
                _ => {
                    part.write_token(fields, time, &mut out);
                    if self.gzip && matches!(part, Part::Ext) {
                        out.push_str(GZIP_EXT);
                    }
                    continue;
                }
            };
            let start = out.len();
            encode(value, cap, &mut out);
            used += out.len() - start;
        }
        if out.starts_with(RESERVED_START) {
            out.replace_range(..1, "%2E");
            used += 2;
        }
        (out, used)
    }
}

/// The names of earlier versions: `message_{publish_time}_{message_id}.{ext}`, no prefix.
impl Default for NameTemplate {
    fn default() -> Self {
        // Parsing the default cannot fail (a test says so); a bare id would still be unique.
        Self::parse(DEFAULT_TEMPLATE, "").unwrap_or_else(|_| Self {
            source: "{message_id}".into(),
            prefix: String::new(),
            parts: vec![Part::MessageId],
            value_budget: 0,
            gzip: false,
        })
    }
}

impl Part {
    fn write_token(&self, fields: &NameFields<'_>, time: Option<OffsetDateTime>, out: &mut String) {
        match self {
            Part::Text(text) => out.push_str(text),
            Part::MessageId => push_id(out, fields.message_id),
            Part::Hash(n) => out.push_str(&sha256_hex(fields.message_id)[..*n]),
            Part::Ext => out.push_str(if fields.text { "txt" } else { "bin" }),
            Part::Stamp => push_stamp(out, time),
            // `time_format` checked that the format renders across the whole range.
            Part::Time(format) => {
                let time = time.unwrap_or(OffsetDateTime::UNIX_EPOCH);
                out.push_str(&time.format(format).unwrap_or_default());
            }
            Part::Subscription | Part::OrderingKey | Part::Attribute { .. } => {}
        }
    }
}

/// The one rule that makes a publisher's value safe in a name, injective: every byte outside the
/// unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, uppercase, and `.`
/// and `..` become `%2E` and `%2E%2E`. Appends whole characters while the encoding stays within
/// `cap` bytes, and says whether all of it fitted.
///
/// Message ids go through it too. Earlier versions replaced every character outside
/// `A-Z a-z 0-9 _ -` by `_`, which was not injective; both agree on ids made of those, as every
/// Pub/Sub id is (decimal digits), so objects written before keep their names.
fn encode(value: &str, cap: usize, out: &mut String) -> bool {
    let start = out.len();
    if value == "." || value == ".." {
        out.push_str(&"%2E".repeat(value.len()));
        return true;
    }
    for c in value.chars() {
        let before = out.len();
        out.extend(utf8_percent_encode(c.encode_utf8(&mut [0; 4]), ENCODED));
        if out.len() - start > cap {
            out.truncate(before);
            return false;
        }
    }
    true
}

fn push_id(name: &mut String, id: &str) {
    let start = name.len();
    if id.is_empty() || !encode(id, ID_MAX, name) {
        name.truncate(start);
        name.push_str("sha256=");
        name.push_str(&sha256_hex(id));
    }
}

/// SHA-256 of the id's UTF-8 bytes, so `printf %s "$id" | sha256sum` gives the same.
fn sha256_hex(id: &str) -> String {
    Sha256::digest(id.as_bytes()).iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// `{publish_time}`: `[year][month][day]_[hour][minute][second]_[subsecond digits:6]` in `time`'s
/// format description, written digit by digit: the formatter took half of what a name costs.
fn push_stamp(out: &mut String, time: Option<OffsetDateTime>) {
    let Some(time) = time else {
        out.push_str("00000000_000000_000000");
        return;
    };
    if time.year() < 0 {
        out.push('-');
    }
    push_digits(out, time.year().unsigned_abs(), 4);
    push_digits(out, u8::from(time.month()).into(), 2);
    push_digits(out, time.day().into(), 2);
    out.push('_');
    for part in [time.hour(), time.minute(), time.second()] {
        push_digits(out, part.into(), 2);
    }
    out.push('_');
    push_digits(out, time.microsecond(), 6);
}

/// `n` in decimal, zero-padded to `width` digits (wider if it needs more).
fn push_digits(out: &mut String, n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let (mut rest, mut start) = (n, digits.len());
    while rest > 0 || start == digits.len() {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    for _ in (digits.len() - start)..width {
        out.push('0');
    }
    digits[start..].iter().for_each(|&d| out.push(char::from(d)));
}

#[cfg(test)]
mod tests;
