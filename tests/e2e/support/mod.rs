//! The test harness: the emulators, their REST APIs and the proxies come from `testkit` (shared
//! with the examples and the benchmark); what is about the worker under test is [`app`]: a fresh
//! topic, subscription and bucket per test, and the worker run in this process or as the real
//! binary (whose path Cargo gives integration tests only).

pub mod app;

pub use testkit::{Emulators, HttpProxy, Latency, LoopbackCa, Mode, OutMessage, Proxy, TlsFront};
pub use testkit::{get, metrics, unique_name, wait_for};
