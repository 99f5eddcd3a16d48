//! Following a Redis pub/sub channel for as long as the replica runs: subscribe when Redis is
//! up, resubscribe after every disconnect, and tell the subscriber each time it is subscribed
//! again, because a message published meanwhile was missed and must be re-read from the store.

use super::link::RedisLink;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a followed channel's messages are handed to.
pub trait Subscriber: Send + Sync {
    /// The subscription is (re)established: anything published before now may have been
    /// missed.
    fn subscribed(&self);

    /// One published message.
    fn message(&self, payload: &[u8]);
}

/// Follows `channel` until `cancel`, handing its messages to `subscriber`.
pub async fn follow(
    link: Arc<RedisLink>,
    channel: String,
    subscriber: Arc<dyn Subscriber>,
    cancel: CancellationToken,
) {
    let mut state = link.watch();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if !link.is_up() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = state.changed() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let subscribed = async {
            let client = link
                .client()
                .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(link.command_timeout() * 2, subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        tracing::debug!(%channel, "subscribed");
        subscriber.subscribed();
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                message = messages.next() => match message {
                    Some(message) => subscriber.message(message.get_payload_bytes()),
                    None => break,
                },
                // A silently dead connection never ends the stream: follow the health loop.
                _ = state.changed() => {
                    if !link.is_up() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(%channel, "subscription lost; resubscribing");
    }
}
