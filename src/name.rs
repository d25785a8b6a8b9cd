//! Object names from a template: `OBJECT_PREFIX`, then `OBJECT_NAME` with its tokens filled in.
//!
//! The create-only write in [`crate::sink`] takes "already exists" to mean "already written", so a
//! name must be a pure function of the message and differ between messages, or a message is acked
//! without its object. [`NameTemplate::parse`] refuses every template that could break this, and
//! [`NameTemplate::render`] cannot fail: values from publishers go through one rule (`encode`),
//! and a name that could grow too long has its other values shortened, never the message id.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use time::format_description::{OwnedFormatItem, parse_strftime_owned};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

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

/// Why a template is refused. Display reads after the variable's name: "OBJECT_NAME {error}".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("is empty (expected a template such as {DEFAULT_TEMPLATE})")]
    Empty,
    #[error("has no {{message_id}}: {NO_ID}")]
    NoMessageId,
    #[error("has an unknown token {{{0}}} (expected {TOKENS})")]
    UnknownToken(String),
    #[error("has an unmatched '{brace}' at byte {at} (write {brace}{brace} for a literal brace)")]
    UnmatchedBrace { brace: char, at: usize },
    #[error(
        "has a bad time format {{publish_time:{format}}}: {reason} (expected strftime, e.g. %F)"
    )]
    BadTimeFormat { format: String, reason: String },
    #[error("has {{hash:{0}}} (expected a number of hex characters from 1 to 8)")]
    BadHashLength(String),
    #[error("has the attribute default {0:?}, which encoding would change (expected {PLAIN})")]
    BadDefault(String),
    #[error("has {0:?} in its text, which {FORBIDDEN}")]
    ForbiddenCharacter(char),
    #[error("has a prefix with {0:?}, which {FORBIDDEN}")]
    ForbiddenInPrefix(char),
    #[error("can give a path segment that is only {0:?}, which names must avoid ({DOT_FIX})")]
    DotSegment(String),
    #[error("has {{message_id}} next to values of varying width in its path segment: {NOT_ALONE}")]
    IdNotAlone,
    #[error("takes {0} bytes before any value: {TOO_LONG}")]
    TooLong(usize),
    /// `in_prefix`: `OBJECT_PREFIX` alone is to blame.
    #[error("{RESERVED}")]
    ReservedStart { in_prefix: bool },
}

impl TemplateError {
    /// Whether `OBJECT_PREFIX`, not `OBJECT_NAME`, is the variable to name.
    pub fn in_prefix(&self) -> bool {
        matches!(self, Self::ForbiddenInPrefix(_) | Self::ReservedStart { in_prefix: true })
    }
}

const NO_ID: &str =
    "two messages could get the same name and one would be acked without its object";
const TOKENS: &str = "{message_id}, {ext}, {subscription}, {ordering_key}, {publish_time}, \
    {publish_time:FORMAT}, {attributes.NAME}, {attributes.NAME|DEFAULT} or {hash:N}";
const PLAIN: &str = "at most 128 of A-Z a-z 0-9 - . _ ~, and not . or ..";
const FORBIDDEN: &str = "object names must not contain (control characters, #, [, ], * or ?)";
const DOT_FIX: &str = "add text, a token that is never empty, or a default to the attribute";
const NOT_ALONE: &str = "two messages could get the same name ({a}{message_id} gives 123 for a=1 \
    and id 23, and for a=12 and id 3); put a / between them, or use {publish_time} or {hash:N}";
const RESERVED: &str = "makes names start with .well-known/acme-challenge/, or text that values \
    could complete to it, which Cloud Storage refuses (expected another first folder)";
const TOO_LONG: &str = "counting 128 per {message_id} and 12 per other value, the fixed part \
    may take at most 512 bytes, half of a name, so that values keep the other half";

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

/// A part as the parse-time checks see it.
enum Piece<'a> {
    Fixed(&'a str),
    Id,
    /// Never empty, at most this many bytes, of a width that may vary.
    Token {
        max: usize,
        varies: bool,
    },
    /// Encoded, shortened when needed.
    Value {
        may_be_empty: bool,
    },
}

/// What the parse-time checks track of each path segment.
#[derive(Default)]
struct Segment {
    text: String,
    never_empty: bool,
    id: bool,
    varies: bool,
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
        let (mut out, mut used) = (self.prefix.clone(), 0);
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
            Part::Stamp => out.push_str(&stamp(time)),
            // `time_format` checked that the format renders across the whole range.
            Part::Time(format) => {
                let time = time.unwrap_or(OffsetDateTime::UNIX_EPOCH);
                out.push_str(&time.format(format).unwrap_or_default());
            }
            Part::Subscription | Part::OrderingKey | Part::Attribute { .. } => {}
        }
    }

    fn pieces<'a>(&'a self, out: &mut Vec<Piece<'a>>) {
        out.push(match self {
            Part::Text(text) => Piece::Fixed(text),
            Part::MessageId => Piece::Id,
            Part::Hash(n) => Piece::Token { max: *n, varies: false },
            Part::Ext => Piece::Token { max: 3, varies: false },
            // Only before year 0 is it wider, and no message was published then.
            Part::Stamp => Piece::Token { max: STAMP_MAX, varies: false },
            Part::Time(format) => {
                // `time_format` checked that this succeeds.
                let _ = time_pieces(format, out);
                return;
            }
            Part::Subscription | Part::OrderingKey => Piece::Value { may_be_empty: true },
            Part::Attribute { default, .. } => Piece::Value { may_be_empty: default.is_empty() },
        })
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

fn stamp(time: Option<OffsetDateTime>) -> String {
    let format =
        format_description!("[year][month][day]_[hour][minute][second]_[subsecond digits:6]");
    time.and_then(|t| t.format(format).ok()).unwrap_or_else(|| "00000000_000000_000000".to_string())
}

/// Whether fixed text at the start of a name starts with [`RESERVED_START`], or is part of it
/// that values could complete.
fn reserved_start(fixed: &str) -> bool {
    !fixed.is_empty() && (fixed.starts_with(RESERVED_START) || RESERVED_START.starts_with(fixed))
}

fn forbidden(text: &str) -> Option<char> {
    text.chars().find(|c| c.is_control() || "#[]*?".contains(*c))
}

fn push_text(parts: &mut Vec<Part>, text: &mut String) -> Result<(), TemplateError> {
    if let Some(c) = forbidden(text) {
        return Err(TemplateError::ForbiddenCharacter(c));
    }
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
    Ok(())
}

fn token(body: &str) -> Result<Part, TemplateError> {
    Ok(match body {
        "message_id" => Part::MessageId,
        "ext" => Part::Ext,
        "subscription" => Part::Subscription,
        "ordering_key" => Part::OrderingKey,
        "publish_time" => Part::Stamp,
        _ => {
            if let Some(format) = body.strip_prefix("publish_time:") {
                Part::Time(time_format(format)?)
            } else if let Some(n) = body.strip_prefix("hash:") {
                let bad = || TemplateError::BadHashLength(n.to_string());
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                Part::Hash(n.parse().ok().filter(|n| (1..=8).contains(n)).ok_or_else(bad)?)
            } else if let Some(attribute) = body.strip_prefix("attributes.")
                && !attribute.is_empty()
                && !attribute.starts_with('|')
            {
                let (name, default) = attribute.split_once('|').unwrap_or((attribute, ""));
                let mut encoded = String::new();
                if !encode(default, VALUE_MAX, &mut encoded) || encoded != default {
                    return Err(TemplateError::BadDefault(default.to_string()));
                }
                let (name, default) = (name.to_string(), encoded);
                Part::Attribute { name, default }
            } else {
                return Err(TemplateError::UnknownToken(body.to_string()));
            }
        }
    })
}

fn time_format(format: &str) -> Result<OwnedFormatItem, TemplateError> {
    let bad = |reason: String| TemplateError::BadTimeFormat { format: format.into(), reason };
    if format.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let item = parse_strftime_owned(format).map_err(|e| bad(e.to_string()))?;
    let mut pieces = Vec::new();
    time_pieces(&item, &mut pieces).map_err(bad)?;
    for piece in &pieces {
        if let Piece::Fixed(text) = piece
            && let Some(c) = forbidden(text)
        {
            return Err(bad(format!("it writes {c:?}, which object names must not contain")));
        }
    }
    let range = [PrimitiveDateTime::MIN, PrimitiveDateTime::MAX].map(|t| t.assume_utc());
    for time in [OffsetDateTime::UNIX_EPOCH].iter().chain(&range) {
        time.format(&item).map_err(|e| bad(e.to_string()))?;
    }
    Ok(item)
}

fn time_pieces<'a>(item: &'a OwnedFormatItem, out: &mut Vec<Piece<'a>>) -> Result<(), String> {
    match item {
        OwnedFormatItem::StringLiteral(text) => out.push(Piece::Fixed(text)),
        OwnedFormatItem::Component(_) => {
            out.push(Piece::Token { max: TIME_FIELD_MAX, varies: true })
        }
        OwnedFormatItem::Compound(items) => {
            for item in items {
                time_pieces(item, out)?;
            }
        }
        other => return Err(format!("it uses an unsupported item {other:?}")),
    }
    Ok(())
}

/// Refuses what could repeat a name or break one; returns the value budget.
///
/// Values and ids never hold a `/`, so the n-th segment of a name always comes from the same part
/// of the template. In a segment where `{message_id}` has only neighbours of fixed width, the
/// encoded id's place and length are fixed too: the name gives it away, so messages with
/// different ids get different names, whatever else they hold.
///
/// A segment can only be `.` or `..` if its fixed text is, and every value in it can be empty:
/// a value that is not empty either holds a character other than `.` or is at least `...`.
/// [`check_layout`] of the prefix and the parts, with `{ext}`'s `.gz` as fixed text when `gzip`.
fn layout(prefix: &str, parts: &[Part], gzip: bool) -> Result<usize, TemplateError> {
    let mut pieces = vec![Piece::Fixed(prefix)];
    for part in parts {
        part.pieces(&mut pieces);
        if gzip && matches!(part, Part::Ext) {
            pieces.push(Piece::Fixed(GZIP_EXT));
        }
    }
    check_layout(&pieces)
}

fn check_layout(pieces: &[Piece<'_>]) -> Result<usize, TemplateError> {
    let (mut fixed, mut values) = (0, 0);
    let mut segments = vec![Segment::default()];
    for piece in pieces {
        let Some(segment) = segments.last_mut() else {
            continue;
        };
        match piece {
            Piece::Id => {
                fixed += ID_MAX;
                (segment.never_empty, segment.id) = (true, true);
            }
            Piece::Token { max, varies } => {
                fixed += max;
                segment.never_empty = true;
                segment.varies |= varies;
            }
            Piece::Value { may_be_empty } => {
                values += 1;
                segment.never_empty |= !may_be_empty;
                segment.varies = true;
            }
            Piece::Fixed(text) => {
                fixed += text.len();
                let mut parts = text.split('/');
                segment.text.extend(parts.next());
                segments.extend(
                    parts.map(|text| Segment { text: text.to_string(), ..Segment::default() }),
                );
            }
        }
    }
    for segment in &segments {
        if !segment.never_empty && (segment.text == "." || segment.text == "..") {
            return Err(TemplateError::DotSegment(segment.text.clone()));
        }
    }
    if !segments.iter().any(|s| s.id && !s.varies) {
        return Err(TemplateError::IdNotAlone);
    }
    let reserved = fixed + values * VALUE_MIN;
    if reserved > FIXED_MAX {
        return Err(TemplateError::TooLong(reserved));
    }
    Ok(NAME_MAX - fixed)
}

#[cfg(test)]
mod tests;
