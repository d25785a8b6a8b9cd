//! The parts of a `multipart/related` upload, as the JSON API takes them: the object's resource
//! (JSON), its data, and, from some clients, a last part with the checksums computed while
//! sending. Each part is a range of the request body, so the data is never copied.

use std::ops::Range;
use std::sync::LazyLock;

use memchr::memmem;

/// One part: its headers and its content, as ranges of the body.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub head: Range<usize>,
    pub content: Range<usize>,
}

/// The boundary named by a `Content-Type: multipart/related; boundary=...` header.
pub(super) fn boundary(content_type: &str) -> Option<&str> {
    let (_, rest) = content_type.split_once("boundary=")?;
    let value = rest.split(';').next()?.trim();
    Some(value.trim_matches('"')).filter(|b| !b.is_empty())
}

/// The parts of `body` (RFC 2046, section 5.1.1): each starts after a `--BOUNDARY` line and ends
/// before the CRLF that precedes the next one; `--BOUNDARY--` closes the body. `None` when the
/// body is not such a message.
pub(super) fn parts(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    // Building a searcher costs about as much as searching a small upload: the one for the end
    // of a part's headers is built once, the delimiter's once per body.
    static HEAD_END: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
    let delimiter = [b"\r\n--", boundary.as_bytes()].concat();
    let next = memmem::Finder::new(&delimiter);
    // The first delimiter has no CRLF before it; a preamble may come first (none is sent).
    let first = match body.starts_with(&delimiter[2..]) {
        true => 0,
        false => next.find(body)? + 2,
    };
    let mut at = first + delimiter.len() - 2;
    let mut parts = Vec::with_capacity(3);
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        let start = at + rest.iter().position(|&b| b == b'\n')? + 1;
        let end = start + next.find(&body[start..])?;
        let part = &body[start..end];
        let head = match part.starts_with(b"\r\n") {
            true => 0,
            false => HEAD_END.find(part)? + 2,
        };
        parts.push(Part { head: start..start + head, content: start + head + 2..end });
        at = end + delimiter.len();
    }
}

/// The value of header `name` among a part's `head` lines.
pub(super) fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head).ok()?.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body as the storage client sends it (reqwest's multipart form), with data that holds a
    /// near miss of the delimiter and a part without headers.
    #[test]
    fn parts_are_ranges_of_the_body() {
        let body = b"--XYZ\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
                     Content-Type: application/json; charset=UTF-8\r\n\r\n{\"name\":\"a\"}\r\n\
                     --XYZ\r\nContent-Disposition: form-data; name=\"media\"\r\n\r\n\
                     data\r\n--XY\r\n--XYZ\r\n\r\nlast\r\n--XYZ--\r\n";
        let content_type = "multipart/related; boundary=XYZ";
        let parts = parts(body, boundary(content_type).expect("a boundary")).expect("parts");
        let text = |r: &Range<usize>| std::str::from_utf8(&body[r.clone()]).expect("text");
        let contents: Vec<_> = parts.iter().map(|p| text(&p.content)).collect();
        assert_eq!(contents, ["{\"name\":\"a\"}", "data\r\n--XY", "last"]);
        let json = header(&body[parts[0].head.clone()], "content-type");
        assert_eq!(json, Some("application/json; charset=UTF-8"));
        assert_eq!(header(&body[parts[1].head.clone()], "content-type"), None);
        assert!(parts[2].head.is_empty());
    }

    #[test]
    fn a_preamble_is_skipped_and_a_body_without_its_closing_delimiter_refused() {
        assert_eq!(parts(b"--XYZ\r\n\r\ndata", "XYZ"), None);
        assert_eq!(parts(b"no delimiter at all", "XYZ"), None);
        let preamble = parts(b"preamble\r\n--XYZ\r\n\r\nx\r\n--XYZ--\r\n", "XYZ").expect("parts");
        assert_eq!(preamble, [Part { head: 17..17, content: 19..20 }]);
        assert_eq!(boundary("multipart/related; boundary=\"q\"; x=1"), Some("q"));
        assert_eq!(boundary("application/json"), None);
    }
}
