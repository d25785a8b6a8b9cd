//! The one HTTP call helper of the REST clients ([`crate::PubSub`], [`crate::Gcs`]).

use std::time::Duration;

/// Percent-encodes everything but RFC 3986 unreserved characters, for names in URLs.
pub(crate) fn url_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Sends `request`; a non-2xx answer becomes an error with `what`, the status and the body,
/// because "404" alone does not say which of the emulator calls failed.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let response = request.send().await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: String = response.text().await.unwrap_or_default().chars().take(2000).collect();
    anyhow::bail!("{what}: HTTP {status}: {body}")
}

/// A client for loopback emulators: no proxy, bounded timeouts so a broken emulator fails a
/// test instead of hanging it.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // A download carries a header per metadata entry, and a message may have 100 attributes:
        // past hyper's default of 100 headers.
        .http1_max_headers(1000)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap_or_default()
}
