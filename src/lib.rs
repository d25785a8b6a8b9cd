//! `pubsub-gcs-worker` turns a Pub/Sub subscription into Cloud Storage objects: one object per
//! message, acked only after the object exists, nacked when it could not be written.
//!
//! # Layout
//!
//! A message flows through the modules in this order:
//!
//! - [`config`]: the environment, validated into a [`config::Config`] (the only reader of it).
//! - [`telemetry`]: JSON logs for Cloud Logging, or text on a terminal.
//! - [`clients`]: the Pub/Sub clients (one per stream) and Cloud Storage clients, pointed at
//!   emulators when asked.
//! - [`worker`]: builds the clients, runs the pipeline, logs progress and the final summary.
//! - [`streams`]: the StreamingPull streams, each on a client of its own, with the flow control
//!   and lease extension; when to open another and when to close one (`streams::demand`).
//! - `pipeline`: one stream at start and more as the load needs them, up to `PULL_STREAMS`; a
//!   receive loop per stream, one budget for all; a task per message takes a write permit; ack
//!   or nack; the drain on shutdown.
//! - [`name`]: `OBJECT_NAME` templates: parsed once, checked for uniqueness, rendered safely.
//! - `concurrency`: how many writes run at once, following storage latency.
//! - [`object`]: the message's object name, content type, metadata and stored settings (pure
//!   functions), and gzip.
//! - [`sink`]: the create-only write, and what a failure means.
//! - `stats`: the metrics behind the progress line, the summary, the probes and `/metrics`.
//! - `shutdown`: SIGTERM/SIGINT; a second signal exits at once.
//! - [`self_check`]: at start, may the credentials create objects in the bucket, and can the
//!   KMS key be used?
//! - `health`: opt-in HTTP endpoint with the startup and liveness probes and `/metrics`.
//!
//! # Surface
//!
//! These modules are public, for `main.rs`, the examples, the benchmarks and the tests:
//! `config` (`Config`, the table of variables), `telemetry`, `worker` (`Worker`, `Signals`, the
//! `Stats` it keeps), `clients`, `streams` (`PullStreams`, for the benchmark's Pub/Sub ceiling),
//! `self_check` (the start-up checks), `object` (an object's
//! description), `name` (its name template) and `sink` (the `Sink` that writes it). The rest
//! (the pipeline, the write limit, the metrics, shutdown, the health endpoint) is private, so a
//! change inside the message path cannot break a caller outside the crate.

pub mod clients;
mod concurrency;
pub mod config;
mod health;
pub mod name;
pub mod object;
mod pipeline;
pub mod self_check;
mod shutdown;
pub mod sink;
mod stats;
pub mod streams;
pub mod telemetry;
pub mod worker;

pub use shutdown::Signals;
pub use stats::{Snapshot, Stats};
