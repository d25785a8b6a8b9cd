//! The test harness: the emulators, their REST APIs and the proxies come from `testkit`; [`app`]
//! is what is about the worker under test.

pub mod app;

pub use testkit::{Emulators, HttpProxy, Latency, LoopbackCa, Mode, OutMessage, Proxy, TlsFront};
pub use testkit::{get, metrics, unique_name, wait_for};
