//! Customer channels: parsing and verifying what comes in, answering on the same channel.
//!
//! Web chat and the OpenAI-compatible API hold the HTTP request open until the reply is ready
//! ([`accept_and_wait`]); WhatsApp and Telegram acknowledge the webhook as soon as the messages
//! are durable, and replies go out through [`egress`].

pub mod api;
pub mod batch;
pub mod event_follow;
pub mod identity;
pub mod telegram;
pub mod webchat;
pub mod webchat_events;
pub mod whatsapp;

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::ingress::Origin;
use crate::message::{InboundMessage, StoredReply};
use crate::replies::Waiter;
use crate::state::Acceptance;
use std::borrow::Cow;
use std::time::Duration;
use tokio::time::Instant;

/// One line per channel for `clawgate config check`: where its messages come in, how they are
/// checked, where replies go, and what each kind of message gets; channels left out of the
/// configuration are named as such.
pub fn describe(config: &crate::config::Config) -> Vec<(&'static str, String)> {
    let channels = &config.channels;
    // Scheme and host only: a base URL's path could hold a token.
    let host = |url: &str| url.split('/').take(3).collect::<Vec<_>>().join("/");
    let mut lines = vec![(
        "webchat",
        format!(
            "POST /v1/webchat/messages; the answer comes in the response when ready within {} ms, else 202 and GET …/messages/{{id}}",
            config.webchat.reply_wait.as_millis()
        ),
    )];
    match &channels.whatsapp {
        Some(w) => lines.push(("whatsapp", format!(
            "POST /webhooks/whatsapp, signed with the app secret (GET for Meta's handshake); replies via {}/{} from number id {}, to the phone number or, for customers who share none, the business-scoped user id; texts, buttons and list replies answered, media get the text-only notice, reactions and statuses counted, unreadable messages dead-lettered",
            host(&w.api_base),
            w.api_version,
            w.phone_number_id
        ))),
        None => lines.push(("whatsapp", "not configured (channels.whatsapp)".into())),
    }
    match &channels.telegram {
        Some(t) => lines.push(("telegram", format!(
            "POST /webhooks/telegram, checked against the secret token; replies and button answers via {}; texts and button presses answered, media get the text-only notice, edits, channel posts and member updates counted",
            host(&t.api_base)
        ))),
        None => lines.push(("telegram", "not configured (channels.telegram)".into())),
    }
    lines.push((
        "api",
        match &channels.api {
            Some(_) => {
                "POST /v1/chat/completions with the bearer token; the answer comes in the response"
                    .into()
            }
            None => "not configured (channels.api)".into(),
        },
    ));
    let languages: Vec<&str> = channels
        .unsupported_reply
        .keys()
        .map(String::as_str)
        .collect();
    lines.push((
        "media",
        format!(
            "the text-only notice in {}",
            if languages.is_empty() {
                "the general skill's template language (none configured)".to_string()
            } else {
                languages.join(", ")
            }
        ),
    ));
    lines
}

/// A copy of `msg` marked for the too-long notice when its text is over `limit` UTF-16 units
/// (and cut to that, so an essay is neither stored whole nor read by the model); `None` when
/// it is within the limit or already marked.
pub fn over_limit(msg: &InboundMessage, limit: usize) -> Option<InboundMessage> {
    if msg.unsupported.is_some() || crate::egress::utf16_len(&msg.text) <= limit {
        return None;
    }
    let mut capped = msg.clone();
    capped
        .text
        .truncate(crate::egress::utf16_prefix_end(&capped.text, limit));
    capped.text.push('…');
    capped.unsupported = Some(crate::message::TOO_LONG.into());
    Some(capped)
}

/// Longest session, user or client message id.
const MAX_ID_LEN: usize = 128;
/// How often a request waiting for a reply re-reads the store in case it missed the wake-up
/// (a duplicate whose original was accepted by another replica is woken there, not here).
const POLL_FIRST_ACCEPT: Duration = Duration::from_secs(2);
const POLL_DUPLICATE: Duration = Duration::from_millis(250);

/// How waiting for a reply ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    /// The reply is ready.
    Replied(StoredReply),
    /// Not within the wait budget (or the server is stopping); the message is accepted and will
    /// be answered.
    Pending,
}

/// Checks a client-chosen id that becomes part of Redis keys: no `:` (the key separator, unless
/// `allow_colon` for the last component) and no braces (Redis Cluster hash tags).
pub fn check_id(what: &str, id: &str, allow_colon: bool) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '~' | '@' | '+' | '=')
                || (allow_colon && c == ':')
        });
    if valid {
        Ok(())
    } else {
        let colon = if allow_colon { ", ':'" } else { "" };
        Err(ApiError::bad_request(format!(
            "`{what}` must be 1 to {MAX_ID_LEN} characters of letters, digits and - _ . ~ @ + ={colon}"
        )))
    }
}

/// `msg` as it is accepted: cut to its channel's text limit and marked for the too-long notice
/// when it is over it.
pub fn within_limit<'m>(app: &AppState, msg: &'m InboundMessage) -> Cow<'m, InboundMessage> {
    match over_limit(
        msg,
        app.live.current().config.channels.max_text(msg.channel),
    ) {
        Some(capped) => Cow::Owned(capped),
        None => Cow::Borrowed(msg),
    }
}

/// Accepts `msg` (durably, or in-process when degraded); a new message of a conversation that
/// keeps live events wakes this replica's streams of it (Redis announces it to the others; this
/// covers degraded mode).
pub async fn accept(
    app: &AppState,
    msg: &InboundMessage,
) -> Result<(Acceptance, Origin), ApiError> {
    let (acceptance, origin) = app.ingress.accept(msg).await?;
    if acceptance != Acceptance::Duplicate && crate::events::keeps_events(msg) {
        app.events.wake(msg.conversation().as_str());
    }
    Ok((acceptance, origin))
}

/// Accepts `msg` and waits up to `wait` for its reply, whichever replica produces it. A
/// duplicate gets the reply already on record.
pub async fn accept_and_wait(
    app: &AppState,
    msg: &InboundMessage,
    wait: Duration,
) -> Result<Waited, ApiError> {
    let msg = within_limit(app, msg);
    // Register before accepting so a fast reply cannot slip past.
    let waiter = app.waiters.register(&msg.dedupe_id());
    let (acceptance, origin) = accept(app, &msg).await?;
    let duplicate = acceptance == Acceptance::Duplicate;
    Ok(wait_for_reply(app, waiter, origin, duplicate, wait).await)
}

/// Waits up to `wait` for the reply `waiter` was registered for, re-reading the store in case
/// the wake-up was missed; `on_record` says the message was accepted earlier (its reply may be
/// there already: look at once, and often).
pub async fn wait_for_reply(
    app: &AppState,
    mut waiter: Waiter<'_>,
    origin: Origin,
    on_record: bool,
    wait: Duration,
) -> Waited {
    let store = app.ingress.store(origin);
    let deadline = Instant::now() + wait;
    let poll = if on_record {
        POLL_DUPLICATE
    } else {
        POLL_FIRST_ACCEPT
    };
    let mut check_store = on_record;
    loop {
        if check_store {
            match store.reply(waiter.id()).await {
                Ok(Some(reply)) => return Waited::Replied(reply),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "reply lookup failed while waiting"),
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Waited::Pending;
        }
        tokio::select! {
            reply = waiter.wait(poll.min(remaining)) => match reply {
                Some(reply) => return Waited::Replied(reply),
                None => check_store = true,
            },
            _ = app.release_waiting.cancelled() => return Waited::Pending,
        }
    }
}
