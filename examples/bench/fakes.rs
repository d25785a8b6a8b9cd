//! What stands between the worker and the emulators, in this process: the latency proxy in front
//! of fake-gcs-server (always there; it adds nothing until `--latency`), and with
//! `--pubsub-cap` a per-connection rate cap in front of the Pub/Sub emulator.

use anyhow::Context as _;
use testkit::{Emulators, HttpProxy, RateCap};

pub struct Fakes {
    pub proxy: HttpProxy,
    pub pubsub_cap: Option<RateCap>,
}

impl Fakes {
    /// `pubsub_cap`: bytes per second for each connection to the Pub/Sub emulator.
    pub async fn start(emu: &Emulators, pubsub_cap: Option<u64>) -> anyhow::Result<Fakes> {
        let proxy = HttpProxy::start(emu.storage_addr()).await.context("starting the proxy")?;
        let pubsub_cap = match pubsub_cap {
            Some(rate) => Some(RateCap::start(emu.pubsub_addr(), rate).await?),
            None => None,
        };
        Ok(Fakes { proxy, pubsub_cap })
    }

    /// The worker's variables for these fakes: its Pub/Sub through the cap. The publisher
    /// (this process, over REST) goes straight to the emulator.
    pub fn worker_vars(&self) -> Vec<(&'static str, String)> {
        let cap = self.pubsub_cap.as_ref();
        cap.map(|cap| ("PUBSUB_EMULATOR_HOST", cap.addr().to_string())).into_iter().collect()
    }

    /// `STORAGE_EMULATOR_HOST` through the latency proxy.
    pub fn storage_through_proxy(&self) -> String {
        self.proxy.url()
    }

    /// The least time `bytes` of messages take through the Pub/Sub cap, on one connection.
    pub fn pubsub_time(&self, bytes: u64) -> std::time::Duration {
        let rate = self.pubsub_cap.as_ref().map_or(f64::INFINITY, |c| c.bytes_per_sec() as f64);
        std::time::Duration::from_secs_f64(bytes as f64 / rate)
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
    }
}
