//! How a committed reply reaches the customer: the held web-chat or API request is woken, or
//! the reply is sent through WhatsApp's or Telegram's API exactly once (dead-lettered when the
//! platform refuses it). [`DeliveryPath`] is the one place that tells the two apart.

use super::turn::TurnContext;
use crate::live::Live;
use crate::message::{Channel, InboundMessage, StoredReply};
use crate::state::keys::KeyLayout;
use crate::state::{
    DeliveryDone, HeldTurn, ReplyDeadLetter, StateError, StateStore, while_unavailable,
};
use crate::telemetry;

/// How a reply reaches the customer, decided once by the message's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeliveryPath {
    /// Web chat and the API: the customer's request is held open (on the replica that took the
    /// message) and answered with the reply; the commit publishes it to that replica.
    HeldRequest,
    /// WhatsApp and Telegram: the turn sends the reply through the platform's API after the
    /// commit, keeping the conversation's lease until it is sent so no later reply overtakes it.
    PlatformApi,
}

impl DeliveryPath {
    pub(super) fn of(channel: Channel) -> DeliveryPath {
        match channel {
            Channel::Whatsapp | Channel::Telegram => DeliveryPath::PlatformApi,
            Channel::Webchat | Channel::Api => DeliveryPath::HeldRequest,
        }
    }

    /// Where the commit publishes `msg`'s reply: the reply channel of the replica holding the
    /// request, when that is another replica (this one is woken directly).
    pub(super) fn notify_channel(
        self,
        msg: &InboundMessage,
        this_replica: &str,
        keys: &KeyLayout,
    ) -> Option<String> {
        (self == DeliveryPath::HeldRequest && msg.ingress_replica != this_replica)
            .then(|| keys.reply_channel(&msg.ingress_replica, &msg.conversation()))
    }

    /// Whether the commit itself ends the conversation's lease: nothing is left to send.
    pub(super) fn releases_lease_at_commit(self) -> bool {
        self == DeliveryPath::HeldRequest
    }
}

/// Whose reply [`deliver`] hands over.
pub(super) enum Delivering<'a> {
    /// The reply this turn just committed (nobody can have sent it yet). On a platform, marking
    /// it delivered also ends the turn: its lease is released and its inbox entry acknowledged.
    Committed(HeldTurn<'a>),
    /// A reply found on record (the entry came back after a crash): sent unless it is marked
    /// delivered already; the caller acknowledges the entry.
    OnRecord,
}

/// Hands the reply to the customer: wakes the web-chat or API request held open on this replica
/// (a request held elsewhere was woken by the commit's publish), or sends it on WhatsApp or
/// Telegram. A platform reply that cannot be sent goes to the dead-letter stream with the reason;
/// either way it is marked delivered, so it is never sent twice nor lost silently. True when the
/// marker ended the turn too ([`StateStore::finish_delivery`]: a committed platform reply sent
/// by this turn); else the caller releases the lease and acknowledges the entry.
pub(super) async fn deliver(
    ctx: &TurnContext,
    live: &Live,
    store: &dyn StateStore,
    msg: &InboundMessage,
    reply: &StoredReply,
    delivering: Delivering<'_>,
) -> Result<bool, StateError> {
    let committed = matches!(delivering, Delivering::Committed(_));
    if DeliveryPath::of(msg.channel) == DeliveryPath::HeldRequest {
        notify_local(ctx, msg, reply);
        // Recorded once, by the turn that committed it (not again when a re-claimed entry
        // finds it answered).
        if committed && reply.covered_by.is_none() {
            ctx.audit.replied(msg, reply, "answered");
        }
        return Ok(false);
    }
    if reply.covered_by.is_some() {
        // Answered together with an earlier message: that message's entry sends the reply.
        return Ok(false);
    }
    let id = msg.dedupe_id();
    if !committed && while_unavailable(|| store.delivered(&id)).await? {
        return Ok(false);
    }
    let outcome = match live.egress.deliver(msg, &reply.text).await {
        Ok(()) => "sent",
        Err(failure) => {
            tracing::error!(
                channel = %msg.channel,
                message_id = %msg.message_id,
                reason = %failure.reason,
                "reply could not be sent; moving it to the dead-letter stream"
            );
            metrics::counter!(telemetry::EGRESS_DEAD_LETTERS, "channel" => msg.channel.as_str())
                .increment(1);
            let letter = ReplyDeadLetter {
                msg,
                text: &reply.text,
                reason: &failure.reason,
                chunks_sent: failure.chunks_sent,
            };
            while_unavailable(|| store.dead_letter_reply(&letter)).await?;
            "dead_letter"
        }
    };
    ctx.audit.replied(msg, reply, outcome);
    match delivering {
        Delivering::Committed(held) => {
            let done = DeliveryDone { msg, outcome, held };
            while_unavailable(|| store.finish_delivery(&done)).await?;
            Ok(true)
        }
        Delivering::OnRecord => {
            while_unavailable(|| store.mark_delivered(&id, outcome)).await?;
            Ok(false)
        }
    }
}

pub(super) fn notify_local(ctx: &TurnContext, msg: &InboundMessage, reply: &StoredReply) {
    if msg.ingress_replica == ctx.replica_id {
        ctx.waiters.notify(&msg.dedupe_id(), reply);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A WhatsApp text from one customer, taken by replica `r1` (for the worker's unit tests).
    pub(in crate::worker) fn whatsapp(text: &str) -> InboundMessage {
        InboundMessage::new(
            Channel::Whatsapp,
            "31612345678",
            "wamid.1",
            text.into(),
            "r1",
        )
    }

    #[test]
    fn replies_on_platforms_are_sent_after_the_commit_and_held_requests_are_woken_where_they_wait()
    {
        let on = |channel, replica: &str| {
            let mut msg = whatsapp("hi");
            msg.channel = channel;
            msg.ingress_replica = replica.into();
            msg
        };
        let keys = KeyLayout::new(Some(16));
        for channel in [Channel::Whatsapp, Channel::Telegram] {
            let path = DeliveryPath::of(channel);
            assert_eq!(path, DeliveryPath::PlatformApi);
            assert!(!path.releases_lease_at_commit());
            assert_eq!(path.notify_channel(&on(channel, "r2"), "r1", &keys), None);
        }
        for channel in [Channel::Webchat, Channel::Api] {
            let path = DeliveryPath::of(channel);
            assert_eq!(path, DeliveryPath::HeldRequest);
            assert!(path.releases_lease_at_commit());
            // Held on this replica: woken directly, nothing published.
            assert_eq!(path.notify_channel(&on(channel, "r1"), "r1", &keys), None);
            // Held on another replica: published to that replica's reply channel.
            let held = on(channel, "r2");
            assert_eq!(
                path.notify_channel(&held, "r1", &keys),
                Some(keys.reply_channel("r2", &held.conversation()))
            );
        }
    }
}
