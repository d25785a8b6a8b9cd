//! What stands between the worker and the emulators, in this process: the latency proxy in front
//! of fake-gcs-server (always there; it adds nothing until `--latency`), with `--tls` a TLS front
//! before fake-gcs-server and one before the proxy, and with `--pubsub-cap` a per-connection rate
//! cap in front of the Pub/Sub emulator.

use anyhow::Context as _;
use std::time::Duration;
use testkit::{Emulators, HttpProxy, LoopbackCa, RateCap, TlsFront};

pub struct Fakes {
    pub proxy: HttpProxy,
    tls: Option<Tls>,
    pubsub_cap: Option<RateCap>,
}

struct Tls {
    /// Before fake-gcs-server, and before the latency proxy.
    direct: TlsFront,
    proxied: TlsFront,
    /// The fronts' authority, for `SSL_CERT_FILE`.
    ca_file: String,
}

impl Fakes {
    /// `pubsub_cap`: bytes per second for each connection to the Pub/Sub emulator; `ca`: the
    /// authority of the TLS fronts, when storage is to be reached over TLS.
    pub async fn start(
        emu: &Emulators,
        pubsub_cap: Option<u64>,
        ca: Option<&LoopbackCa>,
    ) -> anyhow::Result<Fakes> {
        let proxy = HttpProxy::start(emu.storage_addr()).await.context("starting the proxy")?;
        let tls = match ca {
            Some(ca) => Some(Tls {
                direct: TlsFront::start(emu.storage_addr(), ca).await?,
                proxied: TlsFront::start(proxy.addr(), ca).await?,
                ca_file: ca.file().to_string_lossy().into_owned(),
            }),
            None => None,
        };
        let pubsub_cap = match pubsub_cap {
            Some(rate) => Some(RateCap::start(emu.pubsub_addr(), rate).await?),
            None => None,
        };
        Ok(Fakes { proxy, tls, pubsub_cap })
    }

    /// The worker's variables for these fakes: its Pub/Sub through the cap, storage through a
    /// TLS front and its authority. The publisher (this process, over REST) goes straight to
    /// the emulator.
    pub fn worker_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if let Some(cap) = &self.pubsub_cap {
            vars.push(("PUBSUB_EMULATOR_HOST", cap.addr().to_string()));
        }
        if let Some(tls) = &self.tls {
            vars.push(("STORAGE_EMULATOR_HOST", tls.direct.url()));
            vars.push(("SSL_CERT_FILE", tls.ca_file.clone()));
        }
        vars
    }

    /// `STORAGE_EMULATOR_HOST` through the latency proxy (and its TLS front).
    pub fn storage_through_proxy(&self) -> String {
        self.tls.as_ref().map_or_else(|| self.proxy.url(), |tls| tls.proxied.url())
    }

    /// The least time `bytes` of messages take through the Pub/Sub cap, on one connection.
    pub fn pubsub_time(&self, bytes: u64) -> Duration {
        let rate = self.pubsub_cap.as_ref().map_or(f64::INFINITY, |c| c.bytes_per_sec() as f64);
        Duration::from_secs_f64(bytes as f64 / rate)
    }

    /// A line per fake that counts connections, for the end of the output.
    pub fn report(&self) {
        if let Some(cap) = &self.pubsub_cap {
            println!(
                "pubsub cap: {:.2} MB/s per connection; {} connections in all (each Pub/Sub \
                 ceiling and worker process opens its own)",
                cap.bytes_per_sec() as f64 / 1e6,
                cap.connections()
            );
        }
        if let Some(tls) = &self.tls {
            println!(
                "tls: {} connections (handshakes) to the front of fake-gcs-server, {} to the \
                 front of the latency proxy",
                tls.direct.connections(),
                tls.proxied.connections()
            );
        }
    }
}
