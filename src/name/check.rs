//! What [`NameTemplate::parse`](super::NameTemplate::parse) refuses: the template's tokens read
//! one by one, then its layout checked, so that no two messages can get the same name and no name
//! is one Cloud Storage refuses.

use super::{
    DEFAULT_TEMPLATE, FIXED_MAX, GZIP_EXT, ID_MAX, NAME_MAX, Part, RESERVED_START, STAMP_MAX,
    TIME_FIELD_MAX, VALUE_MAX, VALUE_MIN, encode,
};
use time::format_description::{OwnedFormatItem, parse_strftime_owned};
use time::{OffsetDateTime, PrimitiveDateTime};

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

/// A part as the parse-time checks see it.
pub(super) enum Piece<'a> {
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

impl Part {
    pub(super) fn pieces<'a>(&'a self, out: &mut Vec<Piece<'a>>) {
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

/// Whether fixed text at the start of a name starts with [`RESERVED_START`], or is part of it
/// that values could complete.
pub(super) fn reserved_start(fixed: &str) -> bool {
    !fixed.is_empty() && (fixed.starts_with(RESERVED_START) || RESERVED_START.starts_with(fixed))
}

pub(super) fn forbidden(text: &str) -> Option<char> {
    text.chars().find(|c| c.is_control() || "#[]*?".contains(*c))
}

pub(super) fn push_text(parts: &mut Vec<Part>, text: &mut String) -> Result<(), TemplateError> {
    if let Some(c) = forbidden(text) {
        return Err(TemplateError::ForbiddenCharacter(c));
    }
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
    Ok(())
}

pub(super) fn token(body: &str) -> Result<Part, TemplateError> {
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

pub(super) fn time_format(format: &str) -> Result<OwnedFormatItem, TemplateError> {
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
pub(super) fn layout(prefix: &str, parts: &[Part], gzip: bool) -> Result<usize, TemplateError> {
    let mut pieces = vec![Piece::Fixed(prefix)];
    for part in parts {
        part.pieces(&mut pieces);
        if gzip && matches!(part, Part::Ext) {
            pieces.push(Piece::Fixed(GZIP_EXT));
        }
    }
    check_layout(&pieces)
}

pub(super) fn check_layout(pieces: &[Piece<'_>]) -> Result<usize, TemplateError> {
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
