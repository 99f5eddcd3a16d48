//! Waking the HTTP requests that wait for a reply (web chat), whichever replica produced it.
//!
//! A request registers its message's dedupe id before the message is accepted, so a reply can
//! never slip between accept and wait. A reply produced on this replica wakes it directly; one
//! produced elsewhere arrives on this replica's pub/sub channel (`oc:replies:<replica_id>`), which
//! the commit script publishes to. Waiters also re-read the reply store after a reconnect, when a
//! publish may have been missed.

use crate::message::{DedupeId, StoredReply};
use crate::state::link::RedisLink;
use crate::state::pubsub::Subscriber;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One awaited message: its channel, how many requests wait on it, and which registration
/// created it (a waiter only ever removes the channel it joined, not a newer one under the same
/// id).
struct Awaited {
    reply: watch::Sender<Option<StoredReply>>,
    waiters: usize,
    generation: u64,
}

#[derive(Default)]
struct Registry {
    awaited: HashMap<String, Awaited>,
    next_generation: u64,
}

/// Requests waiting for replies on this replica.
#[derive(Default)]
pub struct ReplyWaiters {
    /// One channel per awaited message; several requests may await the same one (a client
    /// resending while the first request still waits).
    registry: Mutex<Registry>,
    /// Bumped when the pub/sub subscription is (re)established: waiters re-read the store.
    resubscribed: watch::Sender<u64>,
}

/// A registered wait; dropping it unregisters.
pub struct Waiter<'a> {
    waiters: &'a ReplyWaiters,
    id: DedupeId,
    generation: u64,
    reply: watch::Receiver<Option<StoredReply>>,
    resubscribed: watch::Receiver<u64>,
}

impl ReplyWaiters {
    /// Registers interest in the reply to `id`.
    pub fn register(&self, id: &DedupeId) -> Waiter<'_> {
        let mut registry = self.lock();
        let generation = registry.next_generation;
        let awaited = registry
            .awaited
            .entry(id.as_str().to_string())
            .or_insert_with(|| Awaited {
                reply: watch::channel(None).0,
                waiters: 0,
                generation,
            });
        awaited.waiters += 1;
        let (reply, generation) = (awaited.reply.subscribe(), awaited.generation);
        registry.next_generation += 1;
        Waiter {
            waiters: self,
            id: id.clone(),
            generation,
            reply,
            resubscribed: self.resubscribed.subscribe(),
        }
    }

    /// Hands `reply` to every request waiting for `id`.
    pub fn notify(&self, id: &DedupeId, reply: &StoredReply) {
        self.notify_raw(id.as_str(), reply);
    }

    fn notify_raw(&self, id: &str, reply: &StoredReply) {
        if let Some(awaited) = self.lock().awaited.remove(id) {
            awaited.reply.send_replace(Some(reply.clone()));
        }
    }

    /// Number of messages whose replies are awaited now.
    pub fn len(&self) -> usize {
        self.lock().awaited.len()
    }

    /// True when no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listens on this replica's reply channel until `cancel`, resubscribing after every
    /// disconnect.
    pub async fn listen(
        self: Arc<Self>,
        link: Arc<RedisLink>,
        replica_id: String,
        cancel: CancellationToken,
    ) {
        let channels = link.keys().reply_channels(&replica_id);
        crate::state::pubsub::follow(link, channels, self, cancel).await;
    }
}

impl Subscriber for ReplyWaiters {
    fn subscribed(&self) {
        self.resubscribed.send_modify(|generation| *generation += 1);
    }

    fn message(&self, payload: &[u8]) {
        self.dispatch(payload);
    }
}

impl ReplyWaiters {
    fn dispatch(&self, payload: &[u8]) {
        #[derive(Deserialize)]
        struct Published {
            id: String,
            reply: StoredReply,
        }
        match serde_json::from_slice::<Published>(payload) {
            Ok(p) => self.notify_raw(&p.id, &p.reply),
            Err(e) => tracing::warn!(error = %e, "unreadable reply notification"),
        }
    }
}

impl Waiter<'_> {
    /// The message whose reply this waits for.
    pub fn id(&self) -> &DedupeId {
        &self.id
    }

    /// Waits until the reply arrives, or until a resubscription means a publish may have been
    /// missed (`None`: the caller re-reads the store), or until `poll` passes (`None` as well).
    pub async fn wait(&mut self, poll: Duration) -> Option<StoredReply> {
        tokio::select! {
            changed = self.reply.changed() => match changed {
                Ok(()) => self.reply.borrow().clone(),
                Err(_) => None,
            },
            _ = self.resubscribed.changed() => None,
            _ = tokio::time::sleep(poll) => None,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut registry = self.waiters.lock();
        if let Some(awaited) = registry.awaited.get_mut(self.id.as_str())
            && awaited.generation == self.generation
        {
            awaited.waiters -= 1;
            if awaited.waiters == 0 {
                registry.awaited.remove(self.id.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Channel;

    fn reply(text: &str) -> StoredReply {
        StoredReply {
            message_id: "m".into(),
            text: text.into(),
            skill: "general".into(),
            provider: "template".into(),
            ts: 0,
            covered_by: None,
            replica: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiter_of_a_message_gets_its_reply_and_is_unregistered() {
        let waiters = ReplyWaiters::default();
        let id = DedupeId::new(Channel::Webchat, "s", "m");
        let mut first = waiters.register(&id);
        let mut second = waiters.register(&id);
        waiters.notify(&id, &reply("hi"));
        assert_eq!(
            first.wait(Duration::from_secs(1)).await.map(|r| r.text),
            Some("hi".into())
        );
        assert_eq!(
            second.wait(Duration::from_secs(1)).await.map(|r| r.text),
            Some("hi".into())
        );
        drop((first, second));
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_waiter_does_not_unregister_a_newer_wait_for_the_same_message() {
        let waiters = ReplyWaiters::default();
        let id = DedupeId::new(Channel::Webchat, "s", "m");
        let first = waiters.register(&id);
        waiters.notify(&id, &reply("first answer"));
        // A resend registers while the first request has not finished yet.
        let mut resend = waiters.register(&id);
        drop(first);
        waiters.notify(&id, &reply("again"));
        assert_eq!(
            resend.wait(Duration::from_secs(1)).await.map(|r| r.text),
            Some("again".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_times_out_leaves_nothing_behind() {
        let waiters = ReplyWaiters::default();
        let id = DedupeId::new(Channel::Webchat, "s", "m");
        {
            let mut waiter = waiters.register(&id);
            assert_eq!(waiter.wait(Duration::from_millis(10)).await, None);
        }
        assert!(waiters.is_empty());
        let published = serde_json::json!({"id": id.as_str(), "reply": reply("late")}).to_string();
        waiters.dispatch(published.as_bytes());
        assert!(waiters.is_empty());
    }
}
