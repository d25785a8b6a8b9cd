//! The Google Cloud clients, built once per process from the configuration.
//!
//! Neither official crate reads `PUBSUB_EMULATOR_HOST` / `STORAGE_EMULATOR_HOST`, so the emulator
//! switch lives here: with an emulator address the client gets that endpoint (plain `http://`,
//! which also means gRPC without TLS for Pub/Sub) and anonymous credentials; without one it uses
//! the production endpoint and Application Default Credentials, as on Cloud Run. The subscribers
//! use `PUBSUB_ENDPOINT` (a regional endpoint) instead of the global one when it is set, unless
//! an emulator is: the emulator wins, so a local run never reaches the real service.

use crate::config::Config;
use anyhow::Context as _;
use google_cloud_auth::credentials::Builder as CredentialsBuilder;
use google_cloud_auth::credentials::Credentials;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_storage::client::{Storage, StorageControl};
use google_cloud_storage::retry_policy::RetryableErrors;

use crate::sink::MetadataReader;

/// Cloud Storage's endpoint, where no emulator is set.
const STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";

/// What every Pub/Sub client of the process is built from: one set of credentials (and so one
/// token) and the endpoint.
#[derive(Clone, Debug)]
pub struct PubsubClients {
    credentials: Credentials,
    endpoint: Option<String>,
}

impl PubsubClients {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let credentials = match &config.pubsub_emulator {
            Some(_) => Anonymous::new().build(),
            None => CredentialsBuilder::default()
                .build()
                .context("the Pub/Sub client could not be created")?,
        };
        let endpoint = match (&config.pubsub_emulator, &config.pubsub_endpoint) {
            (Some(host), _) => Some(emulator_url(host)),
            (None, endpoint) => endpoint.clone(),
        };
        Ok(Self { credentials, endpoint })
    }

    /// A subscriber client for one pull stream.
    ///
    /// A client holds one gRPC channel of one subchannel by default, that is one HTTP/2
    /// connection, so a client per stream gives each stream a connection of its own, and the
    /// stream's acks and lease extensions travel on it too. One client with
    /// `with_grpc_subchannel_count(n)` would open n connections as well, but it places every call,
    /// each stream included, on a random one: gax's channel is tonic's power-of-two-choices
    /// balancer, whose connections all report a load of 0, so two streams would often share a
    /// connection while another carried none.
    pub async fn subscriber(&self) -> google_cloud_gax::client_builder::Result<Subscriber> {
        let mut builder = Subscriber::builder().with_credentials(self.credentials.clone());
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().await
    }
}

/// The storage clients the whole process shares, with one set of credentials (one token).
#[derive(Clone, Debug)]
pub struct StorageClients {
    /// Writes objects; keeps the connection pool.
    pub storage: Storage,
    /// Reads an existing object's metadata, from the JSON object resource.
    pub metadata: MetadataReader,
}

/// Builds the [`StorageClients`], pointed at the emulator when `STORAGE_EMULATOR_HOST` is set.
pub async fn storage(config: &Config) -> anyhow::Result<StorageClients> {
    let context = "the Cloud Storage client could not be created";
    let (credentials, endpoint) = match &config.storage_emulator {
        Some(host) => (Anonymous::new().build(), emulator_url(host)),
        None => {
            (CredentialsBuilder::default().build().context(context)?, STORAGE_ENDPOINT.to_string())
        }
    };
    // No new attempt starts after WRITE_TIMEOUT_SECS; the sink bounds the running one.
    let mut builder = Storage::builder()
        .with_retry_policy(RetryableErrors.with_time_limit(config.write_timeout))
        .with_credentials(credentials.clone());
    if config.storage_emulator.is_some() {
        builder = builder.with_endpoint(&endpoint);
    }
    let storage = builder.build().await.context(context)?;
    let metadata = MetadataReader::new(&endpoint, credentials).context(context)?;
    Ok(StorageClients { storage, metadata })
}

/// The storage control client, used once at start for the self-check.
pub async fn storage_control(config: &Config) -> anyhow::Result<StorageControl> {
    let mut builder = StorageControl::builder();
    if let Some(host) = &config.storage_emulator {
        builder =
            builder.with_endpoint(emulator_url(host)).with_credentials(Anonymous::new().build());
    }
    builder.build().await.context("the Cloud Storage control client could not be created")
}

/// An emulator's endpoint: `PUBSUB_EMULATOR_HOST` is `host:port` by convention and
/// `STORAGE_EMULATOR_HOST` `http://host:port`; each variable takes either form.
pub fn emulator_url(host: &str) -> String {
    let host = host.trim_end_matches('/');
    match host.contains("://") {
        true => host.to_string(),
        false => format!("http://{host}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn emulator_hosts_take_both_forms() {
        for host in ["127.0.0.1:8085", "http://127.0.0.1:8085/"] {
            assert_eq!(super::emulator_url(host), "http://127.0.0.1:8085");
        }
    }
}
