//! Following Redis pub/sub channels for as long as the replica runs: subscribe when Redis is
//! up, resubscribe after every disconnect, and tell the subscriber each time it is subscribed
//! again, because a message published meanwhile was missed and must be re-read from the store.
//! In a Redis Cluster the channels are shard channels (`SSUBSCRIBE`), each served by the master
//! of its slot; the cluster client moves the subscriptions when slots move or masters fail over.

use super::connection::ClusterSettings;
use super::link::RedisLink;
use futures_util::StreamExt;
use redis::{PushInfo, PushKind, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A Lua script whose announcements (`redis.call('PUBLISH', …)` in `text`) go out with `command`:
/// `PUBLISH`, or `SPUBLISH` on a Redis Cluster, where a script may announce only on shard
/// channels of its own slot.
pub fn publishing_script(text: &str, command: &str) -> redis::Script {
    redis::Script::new(&text.replace("redis.call('PUBLISH'", &format!("redis.call('{command}'")))
}

/// What a followed channel's messages are handed to.
pub trait Subscriber: Send + Sync {
    /// The subscription is (re)established: anything published before now may have been
    /// missed.
    fn subscribed(&self);

    /// One published message.
    fn message(&self, payload: &[u8]);
}

/// Follows `channels` until `cancel`, handing their messages to `subscriber`.
pub async fn follow(
    link: Arc<RedisLink>,
    channels: Vec<String>,
    subscriber: Arc<dyn Subscriber>,
    cancel: CancellationToken,
) {
    if let Some(cluster) = link.cluster().cloned() {
        return follow_shard_channels(&link, &cluster, &channels, &*subscriber, &cancel).await;
    }
    let channel = channels.join(" ");
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
            pubsub.subscribe(&channels).await?;
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

/// [`follow`] in a Redis Cluster: one RESP3 cluster connection subscribed to every shard
/// channel. Any subscription confirmed after the first round means a node was reconnected or a
/// slot moved, so messages may have been missed meanwhile.
async fn follow_shard_channels(
    link: &RedisLink,
    cluster: &ClusterSettings,
    channels: &[String],
    subscriber: &dyn Subscriber,
    cancel: &CancellationToken,
) {
    while !cancel.is_cancelled() {
        let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let subscribed = async {
            let client = cluster
                .builder(link.command_timeout())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()?;
            let mut connection = client.get_async_connection().await?;
            // One command per channel: one SSUBSCRIBE may not span slots.
            for channel in channels {
                connection.ssubscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(connection)
        };
        let connection = match tokio::time::timeout(link.command_timeout() * 3, subscribed).await {
            Ok(Ok(connection)) => connection,
            result => {
                if let Ok(Err(e)) = result {
                    tracing::debug!(error = %e, "cannot subscribe to the shard channels; trying again");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        tracing::debug!(
            channels = channels.len(),
            "subscribed to the shard channels"
        );
        subscriber.subscribed();
        let mut confirmations = 0usize;
        loop {
            let push = tokio::select! {
                _ = cancel.cancelled() => return,
                push = received.recv() => push,
            };
            let Some(push) = push else { break };
            match push.kind {
                PushKind::SMessage => {
                    if let Some(Value::BulkString(payload)) = push.data.get(1) {
                        subscriber.message(payload);
                    }
                }
                PushKind::SSubscribe => {
                    confirmations += 1;
                    if confirmations > channels.len() {
                        subscriber.subscribed();
                    }
                }
                _ => {}
            }
        }
        drop(connection);
    }
}
