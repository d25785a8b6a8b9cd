//! Replays: the window `deploy/setup` gives both subscriptions (`RETAIN_ACKED_FOR`) and its
//! exactly-once opt-in; what `deploy/replay` seeks to, and what it refuses before it seeks;
//! `deploy/snapshot`. The dead letters' move runs against the Pub/Sub emulator, with the worker,
//! in the end-to-end tests (`tests/e2e/replay.rs`).

use crate::harness::{Sandbox, flag};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

const SUBSCRIPTIONS: [&str; 2] = ["pubsub-gcs-worker", "pubsub-gcs-worker-dead-letter"];

/// Both subscriptions keep their messages, acked ones included, for `RETAIN_ACKED_FOR`; empty
/// keeps no acked message (and the dead-letter subscription its 7 days of unacked ones); a value
/// Pub/Sub would refuse stops setup before it runs anything.
#[test]
fn setup_keeps_acked_messages_for_the_replay_window() {
    let sandbox = Sandbox::new();
    for (extra, window) in [("", "7d"), ("RETAIN_ACKED_FOR=36h", "36h")] {
        let run = sandbox.run(extra, "setup").ok();
        for sub in SUBSCRIPTIONS {
            let create = run.find(&format!("gcloud pubsub subscriptions create {sub}"));
            assert!(create.iter().any(|w| w == "--retain-acked-messages"), "{create:?}");
            assert_eq!(flag(&create, "--message-retention-duration"), Some(window), "{create:?}");
        }
    }
    let run = sandbox.run("RETAIN_ACKED_FOR=", "setup").ok();
    for (sub, kept) in SUBSCRIPTIONS.into_iter().zip([None, Some("7d")]) {
        let create = run.find(&format!("gcloud pubsub subscriptions create {sub}"));
        assert!(!create.iter().any(|w| w == "--retain-acked-messages"), "{create:?}");
        assert_eq!(flag(&create, "--message-retention-duration"), kept, "{create:?}");
    }
    for bad in ["5m", "32d", "1w", "'7 days'"] {
        sandbox.run(&format!("RETAIN_ACKED_FOR={bad}"), "setup").refused("RETAIN_ACKED_FOR");
    }
}

/// `EXACTLY_ONCE_DELIVERY=true` creates the worker's subscription with exactly-once delivery;
/// it is off by default, and a value other than true, false or empty is refused.
#[test]
fn exactly_once_delivery_is_opt_in() {
    let sandbox = Sandbox::new();
    let flag = "--enable-exactly-once-delivery";
    let create = "gcloud pubsub subscriptions create pubsub-gcs-worker ";
    let on = sandbox.run("EXACTLY_ONCE_DELIVERY=true", "setup").ok().find(create);
    assert!(on.iter().any(|w| w == flag), "{on:?}");
    for off in ["", "EXACTLY_ONCE_DELIVERY=false"] {
        let all = sandbox.run(off, "setup").ok().gcloud();
        assert!(all.iter().flatten().all(|w| w != flag), "{off}: {all:?}");
    }
    sandbox.run("EXACTLY_ONCE_DELIVERY=yes", "setup").refused("EXACTLY_ONCE_DELIVERY");
}

/// An age or an RFC 3339 time (any offset) becomes the UTC time the subscription is seeked to;
/// a snapshot is taken of the subscription and seeked to by name.
#[test]
fn replay_seeks_to_the_time_or_the_snapshot_asked() {
    let sandbox = Sandbox::new();
    let seek = "gcloud pubsub subscriptions seek pubsub-gcs-worker";
    let time = |args: &str| {
        let run = sandbox.run("", args).ok();
        OffsetDateTime::parse(&run.value(seek, "--time"), &Rfc3339).unwrap()
    };
    let before = OffsetDateTime::now_utc();
    let since = time("replay --since 2h");
    let after = OffsetDateTime::now_utc();
    let hours = |n| Duration::hours(n);
    assert!(since >= before - hours(2) - Duration::SECOND && since <= after - hours(2), "{since}");

    let asked = (before - hours(1)).replace_nanosecond(0).unwrap();
    let local = asked.to_offset(UtcOffset::from_hms(5, 30, 0).unwrap()).format(&Rfc3339).unwrap();
    assert_eq!(time(&format!("replay --since {local}")), asked, "{local}");

    let run = sandbox.run("", "replay --snapshot before-deploy").ok();
    assert_eq!(run.value(seek, "--snapshot"), "before-deploy");
    let run = sandbox.run("", "snapshot before-deploy").ok();
    let create = "gcloud pubsub snapshots create before-deploy";
    assert_eq!(run.value(create, "--subscription"), "pubsub-gcs-worker");
}

/// What a replay refuses, before it seeks: a time it cannot read, in the future, or older than
/// the window; no window at all; two kinds of replay at once; a snapshot name Pub/Sub refuses.
/// Run for real against the subscription's settings: one that keeps no acked messages (with
/// the command that changes that), or keeps them for less than the time asked.
#[test]
fn replay_refuses_what_it_cannot_replay() {
    let sandbox = Sandbox::new();
    let future = (OffsetDateTime::now_utc() + Duration::hours(1)).format(&Rfc3339).unwrap();
    for (extra, args, why) in [
        ("", "replay --since 8d", "RETAIN_ACKED_FOR"),
        ("RETAIN_ACKED_FOR=3h", "replay --since 4h", "RETAIN_ACKED_FOR"),
        ("", &format!("replay --since {future}"), "future"),
        ("", "replay --since yesterday", "--since"),
        ("RETAIN_ACKED_FOR=", "replay --since 1h", "RETAIN_ACKED_FOR"),
        ("", "replay --since 1h --snapshot before-deploy", "--snapshot"),
        ("", "replay", ""),
        ("", "snapshot goog-snapshot", "goog"),
        ("", "snapshot one two", "one snapshot"),
        ("", "snapshot", ""),
    ] {
        sandbox.run(extra, args).refused(why);
    }

    let run = sandbox.run_against("604800s\t", "replay --since 1h --yes");
    run.refused("does not retain acked messages");
    let update = "gcloud pubsub subscriptions update pubsub-gcs-worker --project=my-project \
                  --retain-acked-messages --message-retention-duration=7d";
    assert!(run.stderr_commands().contains(&crate::harness::words(update)), "{run}");
    sandbox.run_against("3600s\tTrue", "replay --since 2h --yes").refused("own retention");
    // Kept long enough: on to Cloud Monitoring, whose access token this stand-in refuses.
    let run = sandbox.run_against("604800s\tTrue", "replay --since 2h --yes");
    let last = run.stderr_commands().pop();
    assert_eq!(last, Some(crate::harness::words("gcloud auth print-access-token")), "{run}");
}
