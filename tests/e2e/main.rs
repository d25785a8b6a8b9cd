//! End-to-end tests: the worker against the real emulators (Google's Pub/Sub emulator and
//! fake-gcs-server), which the harness in `support/` starts on loopback. One test binary, so the
//! emulators start once and are shared by every test that does not stop or restart one; each test
//! gets its own topic, subscription and bucket, so tests run in parallel (four at a time:
//! `.cargo/config.toml`). Worker logs stay quiet
//! unless `TEST_LOG` is set; measured figures are printed on `[figures]` lines (`--nocapture`).
//!
//! The slow tests (`memory.rs`: a 100,000-message backlog, 5-10 MB messages, a soak; `soak.rs`:
//! the chaos soak, shortened) are `#[ignore]`d: `cargo test -- --ignored` runs them.

mod fakes;
mod faults;
mod memory;
mod names;
mod objects;
mod operations;
mod soak;
mod support;
mod worker;
