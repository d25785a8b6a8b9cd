//! Bad input: data and attributes that are hard to store are stored byte-exact, once each.

use crate::support::OutMessage;
use crate::support::app::{BinaryWorker, Fixture, Result, with_vars};

/// Invalid UTF-8, empty data with attributes only, a 10 MiB message, attributes with unusual
/// characters and very long values, and thousands of one-byte messages: all stored byte-exact,
/// each delivered once (no redelivery loop), nothing nacked, and no warning per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_stored_byte_exact_without_a_redelivery_loop() -> Result {
    const TINY: usize = 1000;
    let fx = Fixture::new(true).await?;
    // The emulator ignores flow control and sends the whole backlog at once; with a budget
    // below it, the unread rest would expire in the stream and come back (as duplicates, never
    // as second objects). The real service stops at the budget, so give it room here.
    let env = with_vars(
        fx.binary_env(&fx.emulators.storage_url()),
        &[("MAX_OUTSTANDING_MESSAGES", "5000")],
    );
    let mut worker = BinaryWorker::spawn(&env, "bad-input")?;
    let mut messages = odd_messages();
    messages.extend((0..TINY).map(|i| OutMessage::new(vec![(i % 256) as u8])));
    let published = fx.publish(&messages).await?;
    let end = fx.settle(&mut worker, &published).await?;
    let n = messages.len() as u64;
    assert_eq!((end.received, end.written, end.duplicates, end.nacked), (n, n, 0, 0), "{end:?}");
    // Binary data is no reason for a warning: at 1,000 msg/s a line each would flood the log.
    let lines = worker.json_lines();
    let per_message =
        lines.iter().filter(|l| l["severity"] == "WARNING" && l["message_id"].is_string());
    let warned: Vec<_> = per_message.take(3).collect();
    assert!(warned.is_empty(), "a warning per message: {warned:?}");
    Ok(())
}

/// Messages that are hard to store: not UTF-8, empty, the largest Pub/Sub accepts, and
/// attributes that are unusual as metadata.
fn odd_messages() -> Vec<OutMessage> {
    let mut big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    big[0] = 0xff;
    let long = "ü".repeat(512); // 1024 bytes, the Pub/Sub limit for a value
    // Many attributes, though not near Cloud Storage's 8 KiB of metadata, where the worker leaves
    // attributes out (the unit tests of `object.rs` cover that): more than about 4 KiB breaks
    // fake-gcs-server's filesystem backend on ext4.
    let mut many = OutMessage::new("eighty attributes");
    for i in 0..80 {
        many = many.attr(format!("k{i:03}"), format!("value {i}"));
    }
    vec![
        OutMessage::new(vec![0xff]),
        OutMessage::new(vec![0xc3]), // a truncated two-byte sequence
        OutMessage::new(vec![0xe2, 0x82]), // a truncated three-byte sequence
        OutMessage::new(vec![0xc0, 0xaf]), // an overlong '/'
        OutMessage::new(vec![0xed, 0xa0, 0x80]), // a UTF-16 surrogate
        OutMessage::new((0..=255u8).collect::<Vec<u8>>()),
        OutMessage::new(b"\xff\xfeU\x00T\x00F\x00-\x001\x006\x00".to_vec()),
        OutMessage::new(b"\xef\xbb\xbfa byte order mark, then text".to_vec()),
        OutMessage::new("NUL \0 and controls \x01\x1b[31m are valid UTF-8"),
        OutMessage::new(Vec::new()).attr("only", "attributes"),
        OutMessage::new(Vec::new())
            .attr("origin", "no data")
            .attr("message_id", "spoofed")
            .attr("subscription", "spoofed too"),
        OutMessage::new(big),
        OutMessage::new("unusual attribute names and values")
            .attr("ключ ✓ 🚀", "значение ✓ 🚀")
            .attr("with spaces", "  leading and trailing  ")
            .attr("a=b", "c=d=e")
            .attr("path/like/key", "/a/b/../c")
            .attr("quotes\"and'apostrophes", "\"{json: true}\"")
            .attr("newline", "line one\nline two\r\n")
            .attr("long", long),
        many,
    ]
}
