//! One simulated customer: conversation after conversation on one channel, each message sent
//! the way the platform sends it (retried on failure, as Meta and Telegram retry webhooks and a
//! widget resends), then waited for, then checked: one reply per message, and a reply that shows
//! the conversation's context (the mock model's `user_turns=N last="…"`, or the same hand-over
//! reference for a complaint). Then the customer thinks, and writes again.

use crate::collect::{Arrival, Mailboxes};
use crate::plan::{Channel, Inquiry, Plan, Weights};
use crate::scenario::{self, Ids, Language};
use crate::stats::Stats;
use crate::target::{Refused, Reply, Target, WebchatAnswer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Pause before retrying a refused attempt; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How often a pending web-chat reply is fetched.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// What every customer of a run shares.
pub struct World {
    /// The run's plan.
    pub plan: Plan,
    /// The gateway.
    pub target: Target,
    /// The counters.
    pub stats: Arc<Stats>,
    /// Platform replies by recipient.
    pub mailboxes: Arc<Mailboxes>,
    /// This run's ids.
    pub ids: Ids,
    /// Channel shares actually used.
    pub channels: Weights<Channel>,
    /// Cancelled when no new message may be sent (duration over, or the budget spent).
    pub stop: CancellationToken,
    /// Messages still allowed (`u64::MAX` without a budget).
    pub budget: AtomicU64,
    /// Telegram updates sent so far.
    pub updates: AtomicU64,
    /// Customers started so far.
    pub started_customers: AtomicU64,
    /// Conversations whose last checks run at the end of the run.
    pub finished: std::sync::Mutex<Vec<Finished>>,
}

/// A conversation whose late arrivals (platform) or stored history (web chat) are checked once
/// the run is over.
pub struct Finished {
    /// Its channel.
    pub channel: Channel,
    /// The customer's id on it.
    pub user: String,
    /// Its messages: text, and whether the customer got the reply.
    pub turns: Vec<(String, bool)>,
    /// Replies still to arrive (platform channels).
    pub mailbox: Option<mpsc::UnboundedReceiver<Arrival>>,
}

impl World {
    /// Takes one message from the budget; false once sending is over.
    fn take_message(&self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let taken = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !taken || self.budget.load(Ordering::Acquire) == 0 {
            self.stop.cancel();
        }
        taken
    }
}

/// Runs customer `slot` until sending is over.
pub async fn run(world: Arc<World>, slot: usize) {
    let plan = &world.plan;
    let offset = if plan.customers > 1 {
        plan.ramp.mul_f64(slot as f64 / plan.customers as f64)
    } else {
        Duration::ZERO
    };
    tokio::select! {
        _ = world.stop.cancelled() => return,
        _ = tokio::time::sleep(offset) => {}
    }
    while !world.stop.is_cancelled() {
        let n = world.started_customers.fetch_add(1, Ordering::Relaxed);
        let channel = world
            .channels
            .pick(rand::random())
            .unwrap_or(Channel::Webchat);
        let inquiry = plan.mix.pick(rand::random()).unwrap_or(Inquiry::Tracking);
        let language = Language::pick(rand::random());
        converse(&world, channel, inquiry, language, n).await;
    }
}

/// One conversation of `plan.turns` messages.
async fn converse(world: &World, channel: Channel, inquiry: Inquiry, language: Language, n: u64) {
    let plan = &world.plan;
    let user = world.ids.customer(channel, n);
    let mut mailbox = (channel != Channel::Webchat).then(|| world.mailboxes.open(channel, &user));
    let pick = rand::random::<u32>() as usize;
    let mut reference = None;
    let mut turns: Vec<(String, bool)> = Vec::new();
    for turn in 1..=plan.turns {
        if !world.take_message() {
            break;
        }
        let text = scenario::message(inquiry, language, turn, pick);
        let message_id = world.ids.message(channel, &user, turn);
        let sent_at = Instant::now();
        world.stats.on_sent(channel);
        let reply = match &mut mailbox {
            None => webchat_turn(world, &user, &message_id, &text, sent_at).await,
            Some(mailbox) => {
                let earlier: Vec<&str> = turns.iter().map(|(t, _)| t.as_str()).collect();
                platform_turn(
                    world,
                    channel,
                    &user,
                    &message_id,
                    &text,
                    language,
                    &earlier,
                    sent_at,
                    mailbox,
                )
                .await
            }
        };
        let answered = reply.is_some();
        match reply {
            Some((reply, at)) => {
                let e2e = at.saturating_duration_since(sent_at);
                world.stats.on_reply(channel, e2e, reply.replica.as_deref());
                match check(&reply.text, turn, &text, &mut reference) {
                    Verdict::Right { model } => {
                        if let (true, Some(latency)) = (model, plan.llm_latency) {
                            world.stats.overhead.record(e2e.saturating_sub(latency));
                        }
                    }
                    Verdict::Wrong(why) => {
                        world.stats.wrong_context.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(channel = channel.as_str(), customer = %user, turn, %why, "reply without the conversation's context");
                    }
                    Verdict::Unverified => {
                        world.stats.unverified.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => world.stats.on_given_up(),
        }
        turns.push((text, answered));
        if !answered {
            // The customer gives up on this conversation.
            break;
        }
        if turn < plan.turns {
            let (low, high) = plan.think;
            let think = low + (high.saturating_sub(low)).mul_f64(rand::random());
            tokio::select! {
                _ = world.stop.cancelled() => break,
                _ = tokio::time::sleep(think) => {}
            }
        }
    }
    if !turns.is_empty() {
        world
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Finished {
                channel,
                user,
                turns,
                mailbox,
            });
    }
}

/// Sends a web-chat message (resending on failure, as a widget does) and waits for its reply.
async fn webchat_turn(
    world: &World,
    session: &str,
    message_id: &str,
    text: &str,
    sent_at: Instant,
) -> Option<(Reply, Instant)> {
    let deadline = sent_at + world.plan.reply_timeout;
    let mut pause = RETRY_MIN;
    let pending = loop {
        match world.target.webchat(session, message_id, text).await {
            Ok(WebchatAnswer::Reply(reply)) => {
                let at = Instant::now();
                world.stats.on_ack(Channel::Webchat, at - sent_at);
                return Some((reply, at));
            }
            Ok(WebchatAnswer::Pending(path)) => {
                world.stats.on_ack(Channel::Webchat, sent_at.elapsed());
                break path;
            }
            Err(refused) => {
                if !retry(world, &refused, &mut pause, deadline).await {
                    return None;
                }
            }
        }
    };
    while Instant::now() < deadline {
        tokio::time::sleep(POLL_EVERY).await;
        match world.target.webchat_reply(&pending).await {
            Ok(Some(reply)) => return Some((reply, Instant::now())),
            Ok(None) => {}
            Err(_) => world.stats.on_error(),
        }
    }
    None
}

/// Posts a platform webhook until the gateway acknowledges it, then waits for the reply at the
/// fake platform.
#[allow(clippy::too_many_arguments)]
async fn platform_turn(
    world: &World,
    channel: Channel,
    user: &str,
    message_id: &str,
    text: &str,
    language: Language,
    earlier: &[&str],
    sent_at: Instant,
    mailbox: &mut mpsc::UnboundedReceiver<Arrival>,
) -> Option<(Reply, Instant)> {
    let deadline = sent_at + world.plan.reply_timeout;
    let update_id = world
        .ids
        .update_id(world.updates.fetch_add(1, Ordering::Relaxed) + 1);
    let mut pause = RETRY_MIN;
    loop {
        let attempt = match channel {
            Channel::Whatsapp => world.target.whatsapp(user, message_id, text).await,
            _ => {
                world
                    .target
                    .telegram(user, update_id, message_id, text, language.code())
                    .await
            }
        };
        match attempt {
            Ok(()) => {
                world.stats.on_ack(channel, sent_at.elapsed());
                break;
            }
            Err(refused) => {
                if !retry(world, &refused, &mut pause, deadline).await {
                    return None;
                }
            }
        }
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let arrival = tokio::time::timeout(left, mailbox.recv()).await.ok()??;
        if answers_earlier(&arrival.text, text, earlier) {
            // A second reply to a message answered before.
            world.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        return Some((
            Reply {
                text: arrival.text,
                replica: None,
            },
            arrival.at,
        ));
    }
}

/// Counts a refused attempt; waits and returns true when a platform would try again in time.
async fn retry(world: &World, refused: &Refused, pause: &mut Duration, deadline: Instant) -> bool {
    world.stats.on_error();
    if !refused.retryable || Instant::now() + *pause >= deadline {
        world.stats.unaccepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason = %refused.reason, "message not accepted");
        return false;
    }
    tokio::time::sleep(*pause).await;
    *pause = (*pause * 2).min(RETRY_MAX);
    true
}

/// What a reply says about the conversation's context.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It shows the right context; `model` when the mock model wrote it.
    Right {
        /// Written by the model (its latency is part of the reply's).
        model: bool,
    },
    /// It shows another context.
    Wrong(String),
    /// Nothing in it tells (a template answer).
    Unverified,
}

/// The mock model's `user_turns=N last="…"`, when the reply is its answer.
fn model_echo(text: &str) -> Option<(usize, &str)> {
    let rest = &text[text.find("user_turns=")? + "user_turns=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let turns = digits.parse().ok()?;
    let last = rest.split_once("last=\"")?.1;
    Some((turns, last.strip_suffix('"').unwrap_or(last)))
}

/// A hand-over reference (`ESC-` and 8 hex digits) in the reply.
fn reference(text: &str) -> Option<&str> {
    let at = text.find("ESC-")?;
    let candidate = text.get(at..at + 12)?;
    candidate[4..]
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then_some(candidate)
}

/// Checks the reply to the `turn`-th message `sent` of a conversation; `known` is the hand-over
/// reference seen earlier in it.
pub fn check(text: &str, turn: usize, sent: &str, known: &mut Option<String>) -> Verdict {
    if let Some((turns, last)) = model_echo(text) {
        return if turns == turn && last == sent {
            Verdict::Right { model: true }
        } else {
            Verdict::Wrong(format!(
                "expected user_turns={turn} last=\"{sent}\", got {text:?}"
            ))
        };
    }
    if let Some(found) = reference(text) {
        return match known {
            Some(known) if known != found => Verdict::Wrong(format!(
                "hand-over reference changed from {known} to {found}"
            )),
            _ => {
                *known = Some(found.to_string());
                Verdict::Right { model: false }
            }
        };
    }
    Verdict::Unverified
}

/// Whether `reply` is the model's answer to one of the `earlier` messages rather than to
/// `current` (it quotes the message it answers; a conversation's messages differ).
fn answers_earlier(reply: &str, current: &str, earlier: &[&str]) -> bool {
    model_echo(reply).is_some_and(|(_, last)| last != current && earlier.contains(&last))
}

/// Which of `sent` (a conversation's messages) a late platform reply answers, when it tells.
pub fn answered_message(reply: &str, sent: &[&str]) -> Option<usize> {
    let (_, last) = model_echo(reply)?;
    sent.iter().position(|s| *s == last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_against_the_conversation() {
        let mut known = None;
        let sent = "where is \"it\"?";
        assert_eq!(
            check(
                "[mock] user_turns=2 last=\"where is \"it\"?\"",
                2,
                sent,
                &mut known
            ),
            Verdict::Right { model: true }
        );
        assert!(matches!(
            check(
                "[mock] user_turns=1 last=\"where is \"it\"?\"",
                2,
                sent,
                &mut known
            ),
            Verdict::Wrong(_)
        ));
        assert_eq!(
            check("Ref ESC-3F9A12BC.", 1, "x", &mut known),
            Verdict::Right { model: false }
        );
        assert_eq!(
            check("(referentie ESC-3F9A12BC)", 2, "y", &mut known),
            Verdict::Right { model: false }
        );
        assert!(matches!(
            check("ESC-00000000", 3, "z", &mut known),
            Verdict::Wrong(_)
        ));
        assert_eq!(
            check("Thanks for your message.", 1, "a", &mut None),
            Verdict::Unverified
        );
        assert!(answers_earlier(
            "[mock] user_turns=1 last=\"a\"",
            "b",
            &["a"]
        ));
        // A reply to the current message without its context is not a duplicate.
        assert!(!answers_earlier(
            "[mock] user_turns=1 last=\"b\"",
            "b",
            &["a"]
        ));
        assert_eq!(
            answered_message("[mock] user_turns=9 last=\"b\"", &["a", "b"]),
            Some(1)
        );
    }
}
