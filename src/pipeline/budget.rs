//! The byte and message budget every receive loop takes from before it holds a message.

use super::Limits;
use google_cloud_pubsub::model::Message;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The streams' flow control, held by the worker as well: the service stops sending on each
/// stream at its share of `MAX_OUTSTANDING_MESSAGES`/`_BYTES`, the Pub/Sub emulator unmended
/// does not, and reading stops here instead, on every stream at once. Unlike a semaphore it
/// cannot be closed, so a reservation cannot fail and drop a message.
pub(super) struct Budget {
    /// Messages and bytes still free.
    free: Mutex<(u64, u64)>,
    released: Notify,
    max: (u64, u64),
}

/// What a message weighs in the [`Budget`]: its data, its attributes (keys and values, up to
/// 100 of them), its ordering key and its id, all of which the process holds. The service's
/// flow control counts "bytes worth of messages", whole messages (Google's Java client weighs
/// each by its serialized size), so the streams' shares of `MAX_OUTSTANDING_BYTES` need no
/// change and measure about as this budget does (it leaves out a few bytes of framing).
pub fn held_bytes(message: &Message) -> usize {
    let attributes: usize = message.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    message.data.len() + attributes + message.ordering_key.len() + message.message_id.len()
}

/// One message's share of the [`Budget`], returned when dropped.
pub(super) struct Held {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    pub(super) fn new(limits: &Limits) -> Arc<Self> {
        let max_bytes = limits.max_outstanding_bytes.max(1) as u64;
        let max = (limits.max_outstanding_messages.max(1) as u64, max_bytes);
        Arc::new(Self { free: Mutex::new(max), released: Notify::new(), max })
    }

    /// How full the budget is now, from 0 to 1: the larger of its messages' and bytes' shares.
    pub(super) fn fill(&self) -> f64 {
        let free = *self.free.lock().unwrap_or_else(|e| e.into_inner());
        let share = |free: u64, max: u64| 1.0 - free as f64 / max as f64;
        share(free.0, self.max.0).max(share(free.1, self.max.1))
    }

    /// Waits until a message of `size` bytes fits; one larger than the whole budget waits for
    /// all of it.
    pub(super) async fn reserve(self: &Arc<Self>, size: usize) -> Held {
        let bytes = (size as u64).clamp(1, self.max.1);
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            {
                let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
                if free.0 >= 1 && free.1 >= bytes {
                    *free = (free.0 - 1, free.1 - bytes);
                    return Held { budget: self.clone(), bytes };
                }
            }
            released.await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut free = self.budget.free.lock().unwrap_or_else(|e| e.into_inner());
        *free = (free.0 + 1, free.1 + self.bytes);
        // Every receive loop may be waiting, each for a message of its own size: wake them all,
        // so that one whose message fits is not left waiting behind one whose message does not.
        self.budget.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_message_weighs_its_data_attributes_ordering_key_and_id() {
        let attributes = (0..100).map(|i| (format!("k{i:02}"), "v".repeat(1000)));
        let message = Message::new()
            .set_message_id("1234")
            .set_data(bytes::Bytes::from_static(b"12345"))
            .set_ordering_key("key")
            .set_attributes(attributes);
        assert_eq!(held_bytes(&message), 5 + 100 * (3 + 1000) + 3 + 4);
    }

    /// Attributes take room in the budget: a message of a few data bytes with 600 bytes of
    /// attributes leaves no room for a second one under a 1,000-byte budget until it is done.
    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_attributes_as_well_as_data() {
        let limits = Limits {
            max_concurrent_writes: 1,
            max_outstanding_messages: 10,
            max_outstanding_bytes: 1000,
        };
        let budget = Budget::new(&limits);
        let message = Message::new()
            .set_data(bytes::Bytes::from_static(b"x"))
            .set_attributes([("a", "v".repeat(600))]);
        let first = budget.reserve(held_bytes(&message)).await;
        let second =
            tokio::time::timeout(Duration::from_secs(1), budget.reserve(held_bytes(&message)));
        assert!(second.await.is_err(), "two such messages fit in 1,000 bytes");
        drop(first);
        let again =
            tokio::time::timeout(Duration::from_secs(1), budget.reserve(held_bytes(&message)));
        assert!(again.await.is_ok(), "the first one's bytes were returned");
    }
}
