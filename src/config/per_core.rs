//! The defaults that follow the instance's cores.

/// The defaults that grow with the instance: Cloud Run worker pools run from 1 to dozens of
/// vCPU, and a fixed number would bind before the CPU on a large one (docs/performance.md,
/// "Capacity planning", says which limit binds at each size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerCore {
    /// `MAX_OUTSTANDING_MESSAGES`: 2,000 per core (at most 1,000,000), at least twice the writes
    /// at once, so that the writes never wait for messages.
    pub max_outstanding_messages: i64,
    /// `MAX_OUTSTANDING_BYTES`: 100 MiB whatever the cores, for memory is the deployment's
    /// choice, not the CPU's: 64 KiB messages at this budget peak near 300 MB, and the deploy
    /// default is 512 MiB.
    pub max_outstanding_bytes: i64,
    /// `MAX_CONCURRENT_WRITES`: 1,024 per core (at most 10,000). One core writes about 3,400
    /// messages a second, which at a mean latency of 200 ms keeps 680 writes in flight, more
    /// with a long tail.
    pub max_concurrent_writes: usize,
    /// `PULL_STREAMS`: 18 per core, from 18 to 32. The worker opens one stream and more only
    /// while another raises the rate (`streams::demand`), so the maximum costs nothing where one
    /// stream carries the load. It is set where the CPU, not the streams, would bind for large
    /// messages: Pub/Sub caps a stream at about 10 MB/s (150 messages/s of 64 KiB), and one core
    /// of this worker writes some 2,700 such messages a second, 18 streams' worth. 32 is the most
    /// `PULL_STREAMS` allows: 320 MB/s, about what an instance's network carries.
    pub pull_streams: usize,
}

impl PerCore {
    /// For the cores this process may use (the count tokio sizes its runtime by, cgroup quotas
    /// included).
    pub fn here() -> Self {
        Self::for_cores(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn for_cores(cores: usize) -> Self {
        let cores = cores.max(1);
        Self {
            max_outstanding_messages: (2000 * cores as i64).min(1_000_000),
            max_outstanding_bytes: 100 << 20,
            max_concurrent_writes: (1024 * cores).min(10_000),
            pull_streams: (18 * cores).clamp(18, 32),
        }
    }
}
