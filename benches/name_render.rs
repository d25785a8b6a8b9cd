//! What an object name costs per message: `NameTemplate::render` on the worker's default names
//! and on templates that use every kind of token. `cargo bench --bench name_render`;
//! docs/performance.md, "What a naming template costs", quotes it.

use divan::{Bencher, black_box};
use pubsub_gcs_worker::name::{DEFAULT_TEMPLATE, NameFields, NameTemplate};
use std::collections::HashMap;
use time::macros::datetime;

/// The routing example of docs/performance.md: a strftime, an attribute with a default, a
/// hash shard.
const ROUTED: &str =
    "dt={publish_time:%Y-%m-%d}/{attributes.task_type|unrouted}/{hash:2}/{message_id}.{ext}";

fn main() {
    divan::main();
}

/// A message as Pub/Sub delivers it: a 17-digit id, a publish time, one attribute.
fn render(bencher: Bencher, template: &str, attribute: &str) {
    let names = NameTemplate::parse(template, "").expect("a valid template");
    let attributes = HashMap::from([("task_type".to_string(), attribute.to_string())]);
    let fields = NameFields {
        message_id: "14638401839455211",
        publish_time: Some(datetime!(2026-12-02 21:04:05.123456 UTC)),
        attributes: &attributes,
        ordering_key: "",
        subscription_id: "orders",
        text: true,
    };
    bencher.bench(|| names.render(black_box(&fields)));
}

#[divan::bench]
fn default_names(bencher: Bencher) {
    render(bencher, DEFAULT_TEMPLATE, "file_processing");
}

#[divan::bench]
fn routed(bencher: Bencher) {
    render(bencher, ROUTED, "file_processing");
}

/// An attribute of 2,000 characters that need encoding: the name is shortened to fit 1,024 bytes.
#[divan::bench]
fn routed_long_attribute(bencher: Bencher) {
    render(bencher, ROUTED, &"é/".repeat(1000));
}
