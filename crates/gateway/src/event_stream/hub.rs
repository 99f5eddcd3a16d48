//! Which sessions have open event streams on this replica, and waking them.
//!
//! Every replica subscribes once to the events channels (`oc:events`, one per shard when sharded), where the scripts that write a session's events
//! publish the conversation's name; a stream of that session on this replica then reads on from
//! its last event id. An idle stream costs one map entry and one watch receiver, never a Redis
//! connection. After a resubscription every stream reads again (a publish may have been missed);
//! streams also re-read on a slow timer, so even a lost wake-up only delays an event.

use crate::message::ConversationKey;
use crate::state::link::RedisLink;
use crate::state::pubsub::Subscriber;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The name the scripts publish (literally `'escalations'`) when the pending escalations
/// changed: a hand-over, a claim, a person's message, a resolution, a customer's message while
/// handed over. The console's list watches it.
pub const ESCALATIONS_NEWS: &str = "escalations";

/// One watched session: its wake-up channel and how many streams follow it.
struct Watched {
    news: watch::Sender<u64>,
    streams: usize,
}

/// The sessions followed by open event streams on this replica.
pub struct EventHub {
    sessions: Mutex<HashMap<String, Watched>>,
    /// Bumped when the subscription is (re)established: every stream reads again.
    resubscribed: watch::Sender<u64>,
}

impl Default for EventHub {
    fn default() -> EventHub {
        EventHub {
            sessions: Mutex::new(HashMap::new()),
            resubscribed: watch::channel(0).0,
        }
    }
}

/// A stream's registration; dropping it unregisters.
pub struct Watch {
    hub: Arc<EventHub>,
    conversation: String,
    news: watch::Receiver<u64>,
    resubscribed: watch::Receiver<u64>,
    /// A widget's event stream (counted in `clawgate_webchat_event_streams`), not a console's.
    counted: bool,
}

impl EventHub {
    /// Registers a stream of `conversation`'s events.
    pub fn watch(self: &Arc<Self>, conversation: &ConversationKey) -> Watch {
        metrics::gauge!(crate::telemetry::WEBCHAT_EVENT_STREAMS).increment(1.0);
        self.register(conversation.as_str(), true)
    }

    /// Registers a console's interest in `name`: a conversation (`channel:user`) or
    /// [`ESCALATIONS_NEWS`].
    pub fn watch_name(self: &Arc<Self>, name: &str) -> Watch {
        self.register(name, false)
    }

    fn register(self: &Arc<Self>, name: &str, counted: bool) -> Watch {
        let mut sessions = self.lock();
        let watched = sessions.entry(name.to_string()).or_insert_with(|| Watched {
            news: watch::channel(0).0,
            streams: 0,
        });
        watched.streams += 1;
        let news = watched.news.subscribe();
        drop(sessions);
        Watch {
            hub: self.clone(),
            conversation: name.to_string(),
            news,
            resubscribed: self.resubscribed.subscribe(),
            counted,
        }
    }

    /// Wakes the streams of `conversation` (named as `channel:user`), if any are open here.
    pub fn wake(&self, conversation: &str) {
        if let Some(watched) = self.lock().get(conversation) {
            watched.news.send_modify(|n| *n += 1);
        }
    }

    /// Number of event streams open on this replica.
    pub fn open_streams(&self) -> usize {
        self.lock().values().map(|w| w.streams).sum()
    }

    /// Follows `oc:events` until `cancel`.
    pub async fn listen(self: Arc<Self>, link: Arc<RedisLink>, cancel: CancellationToken) {
        let channels = link.keys().events_channels();
        crate::state::pubsub::follow(link, channels, self, cancel).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Subscriber for EventHub {
    fn subscribed(&self) {
        self.resubscribed.send_modify(|n| *n += 1);
    }

    fn message(&self, payload: &[u8]) {
        if let Ok(conversation) = std::str::from_utf8(payload) {
            self.wake(conversation);
        }
    }
}

impl Watch {
    /// Waits until the session may have news: a wake-up, a resubscription, or `poll` passing.
    pub async fn news(&mut self, poll: std::time::Duration) {
        tokio::select! {
            _ = self.news.changed() => {}
            _ = self.resubscribed.changed() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut sessions = self.hub.lock();
        if let Some(watched) = sessions.get_mut(&self.conversation) {
            watched.streams -= 1;
            if watched.streams == 0 {
                sessions.remove(&self.conversation);
            }
        }
        if self.counted {
            metrics::gauge!(crate::telemetry::WEBCHAT_EVENT_STREAMS).decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Channel;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_wake_reaches_the_sessions_streams_and_a_closed_stream_leaves_nothing() {
        let hub = Arc::new(EventHub::default());
        let session = ConversationKey::new(Channel::Webchat, "ws_1");
        let mut first = hub.watch(&session);
        let second = hub.watch(&session);
        assert_eq!(hub.open_streams(), 2);
        hub.message(session.as_str().as_bytes());
        let started = tokio::time::Instant::now();
        first.news(Duration::from_secs(60)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "woken, not polled"
        );
        drop((first, second));
        assert_eq!(hub.open_streams(), 0);
        assert!(hub.lock().is_empty());
    }
}
