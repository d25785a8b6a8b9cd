//! End-to-end tests: the worker against the real emulators, which `testkit` starts on loopback
//! once for the test binary; each test gets its own topic, subscription and bucket, so tests run
//! in parallel (four at a time: `.cargo/config.toml`). Worker logs stay quiet unless `TEST_LOG`
//! is set; measured figures are printed on `[figures]` lines (`--nocapture`). The slow tests
//! (`memory.rs`, `soak.rs`) are `#[ignore]`d: `cargo test -- --ignored` runs them.

mod emulator;
mod fakes;
mod faults;
mod memory;
mod names;
mod objects;
mod operations;
mod replay;
mod soak;
mod streams;
mod support;
mod worker;
