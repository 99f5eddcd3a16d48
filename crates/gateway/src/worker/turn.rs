//! One conversation turn: wait for the conversation's turn, load it, route to a skill, ask the
//! provider chain, commit atomically, wake whoever waits for the reply.
//!
//! The turn never acknowledges its inbox entry itself; it reports how it ended and the pool acks.
//! Its invariants: at most one reply per message id (the commit decides), turns of one
//! conversation in arrival order (the begin step decides), no permit held while waiting, and a
//! platform reply sent before the conversation's lease is released (so the next reply cannot
//! overtake it) and sent at most once by a living replica.

use crate::classify;
use crate::escalation::{self, Escalation};
use crate::event_stream::hub::EventHub;
use crate::event_stream::publisher;
use crate::events::{self, SessionEvent};
use crate::live::{Live, LiveConfig};
use crate::llm::chain::Completion;
use crate::llm::{ChatMessage, Prompt};
use crate::lookup;
use crate::message::{HistoryEntry, InboundMessage, Role, StoredReply, now_ms};
use crate::replies::ReplyWaiters;
use crate::skills::{Routing, Skill, SkillLibrary, SkillSet};
use crate::state::while_unavailable;
use crate::state::{
    CommitOutcome, ConversationSnapshot, HeldTurn, LaterMessage, StateError, StateStore, TurnBegin,
    TurnCommit, TurnStart, WaitReason,
};
use crate::telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::delivery::{Delivering, DeliveryPath, deliver, notify_local};
use super::{Job, LeaseRegistry};

/// First and longest pause between two attempts to start a turn that must wait.
const WAIT_MIN: Duration = Duration::from_millis(5);
const WAIT_MAX: Duration = Duration::from_millis(100);
/// Longest single pause of a turn held back by flood control (it rechecks, and notices shutdown).
const FLOOD_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What every turn of this replica shares.
pub struct TurnContext {
    /// This replica's id: lease holder prefix and reply-channel owner.
    pub replica_id: String,
    /// The skills to route to, reloaded while the replica runs.
    pub skills: Arc<SkillLibrary>,
    /// The configuration and what is built from it (provider chain, senders, dispatcher),
    /// reloaded while the replica runs; a turn takes one snapshot when it starts.
    pub live: Arc<LiveConfig>,
    /// How long a message waits for an unprocessed predecessor before going ahead anyway.
    pub order_wait: Duration,
    /// Web-chat requests held open on this replica.
    pub waiters: Arc<ReplyWaiters>,
    /// The outbound HTTP client, for skills' lookups.
    pub http: reqwest::Client,
    /// Web-chat event streams open on this replica, woken when a turn writes events.
    pub events: Arc<EventHub>,
    /// Where replies handed to customers are recorded.
    pub audit: crate::audit::AuditLog,
    /// How Redis keys and channels are named (reply channels are per shard when sharded).
    pub keys: crate::state::keys::KeyLayout,
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEnd {
    /// This turn's reply was committed (and sent, on a platform channel).
    Replied {
        /// The reply.
        reply: StoredReply,
        /// The turn settled its entry itself, with the commit ([`TurnCommit::acknowledges`]) or
        /// a platform reply's delivered marker: acknowledged it, or found that its id no longer
        /// names this message. Else the caller acknowledges it.
        acknowledged: bool,
    },
    /// The message had been answered earlier (the entry came back after a crash); its reply is
    /// now delivered: acknowledge the entry.
    AlreadyAnswered(StoredReply),
    /// Another worker committed this message's reply while this turn ran (the entry was claimed
    /// twice); that worker delivers and acknowledges, so this one must do neither.
    Discarded,
    /// The entry is not in the inbox of the Redis answering now ([`TurnStart::NotQueued`]):
    /// nothing to answer or acknowledge there.
    NotQueued,
}

/// Why a turn stopped without an answer; its entry stays pending and will be claimed again.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The state store failed and retries did not help.
    #[error(transparent)]
    State(#[from] StateError),
    /// The replica is shutting down; another replica will take the entry.
    #[error("stopped while waiting for the conversation's earlier turn")]
    Stopped,
}

/// Runs the turn of `job`. `permit` is a worker slot; it is given back while the turn waits for
/// its conversation and taken again before it proceeds. `stop` lets a waiting turn give up at
/// shutdown (its entry is then claimed by another replica).
pub async fn run(
    ctx: &TurnContext,
    store: &dyn StateStore,
    leases: &LeaseRegistry,
    job: &Job,
    slots: &Arc<Semaphore>,
    permit: OwnedSemaphorePermit,
    stop: Option<&CancellationToken>,
) -> Result<TurnEnd, TurnError> {
    let (msg, seq) = (&job.msg, job.seq);
    // One version of the configuration for the whole turn, whatever a reload does meanwhile.
    let live = ctx.live.current();
    let holder = format!("{}/{:016x}", ctx.replica_id, rand::random::<u64>());
    let mut permit = Some(permit);
    let mut delay = WAIT_MIN;
    let mut waited_for_order = Duration::ZERO;
    // A turn that had to wait (the customer's previous turn ran, or flood control held it back)
    // answers what the customer sent meanwhile together with its own message.
    let mut waited = false;
    // The customer sees the agent typing from the moment the turn starts (a message it cannot
    // read gets a notice at once instead).
    let typing = events::keeps_events(msg) && msg.unsupported.is_none();
    let held = HeldTurn {
        seq,
        holder: &holder,
        entry: job.entry.as_ref(),
    };
    let snapshot = loop {
        let begin = TurnBegin {
            msg,
            held,
            skip_order_check: waited_for_order >= ctx.order_wait,
            take_later: waited && msg.unsupported.is_none(),
            typing,
        };
        let start = while_unavailable(|| store.begin_turn(&begin)).await?;
        match start {
            TurnStart::Ready(snapshot) => {
                if typing {
                    ctx.events.wake(msg.conversation().as_str());
                }
                if begin.skip_order_check {
                    tracing::warn!(conversation = %msg.conversation(), seq, "an earlier message of the conversation was never processed; answering this one without it");
                }
                // With the commit's line below, the order a conversation's turns ran in, for
                // telling a lost ordering from a slow one after a failover.
                tracing::debug!(conversation = %msg.conversation(), message_id = %msg.message_id, seq, "turn begins");
                break snapshot;
            }
            TurnStart::Replied(reply) => {
                deliver(ctx, &live, store, msg, &reply, Delivering::OnRecord).await?;
                return Ok(TurnEnd::AlreadyAnswered(reply));
            }
            TurnStart::NotQueued => {
                tracing::warn!(conversation = %msg.conversation(), message_id = %msg.message_id, seq, "the message's entry is not in the inbox of the Redis primary now in charge: written to a primary failed over before a replica had it (never acknowledged, so it is sent again and that is answered), dead-lettered meanwhile, or lost with Redis's data; not answered here, where it could overtake the messages before it");
                return Ok(TurnEnd::NotQueued);
            }
            TurnStart::Wait(reason) => {
                if stop.is_some_and(CancellationToken::is_cancelled) {
                    return Err(TurnError::Stopped);
                }
                drop(permit.take());
                waited = true;
                match reason {
                    WaitReason::Flood(room_in) => {
                        tokio::time::sleep(room_in.min(FLOOD_PAUSE_MAX)).await;
                    }
                    WaitReason::Order | WaitReason::Gap | WaitReason::Lease => {
                        tokio::time::sleep(delay).await;
                        // Only a predecessor that is nowhere counts toward the valve: one that
                        // merely waits (flood control drains a burst slowly) keeps the order.
                        if reason == WaitReason::Gap {
                            waited_for_order += delay;
                        }
                        delay = (delay * 2).min(WAIT_MAX);
                    }
                }
                permit = Some(
                    slots
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| TurnError::Stopped)?,
                );
            }
        }
    };
    let _slot = permit;
    let conversation = msg.conversation();
    // Renewed by the heartbeat while this turn lives; the guard stops that when the turn ends,
    // also by a panic, so a dead turn's lease expires instead of locking the conversation.
    let renewed = leases.hold(&holder, conversation.clone());
    // Whether sending the reply ended the turn (a platform reply's marker released the lease
    // and acknowledged the entry).
    let mut ended_by_delivery = false;
    let result = match answer(ctx, &live, store, job, &holder, snapshot).await {
        Ok(TurnEnd::Replied {
            reply,
            acknowledged,
        }) => match deliver(ctx, &live, store, msg, &reply, Delivering::Committed(held)).await {
            Ok(ended) => {
                ended_by_delivery = ended;
                Ok(TurnEnd::Replied {
                    reply,
                    acknowledged: acknowledged || ended,
                })
            }
            Err(e) => Err(TurnError::from(e)),
        },
        other => other,
    };
    drop(renewed);
    // A web-chat commit released the lease; a platform reply's marker did once it was sent.
    // Otherwise (a failed turn, a platform reply another message's turn sends): released here,
    // best effort, since a lease left behind expires by itself.
    let released = ended_by_delivery
        || (result.is_ok() && DeliveryPath::of(msg.channel).releases_lease_at_commit());
    if !released {
        let _ = store.release_lease(&conversation, &holder).await;
    }
    result
}

/// Fault injection for tests of what a panicking turn leaves behind: with
/// `CLAWGATE_FAILPOINT_TURN_PANIC` set, a turn whose message contains its value panics (once the
/// conversation's lease is held, where a panic can do the most harm). Unset in production.
fn failpoint_turn_panic(msg: &InboundMessage) {
    static MARKER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let marker = MARKER.get_or_init(|| {
        std::env::var(crate::env_vars::FAILPOINT_TURN_PANIC)
            .ok()
            .filter(|m| !m.is_empty())
    });
    if let Some(marker) = marker
        && msg.text.contains(marker.as_str())
    {
        #[allow(clippy::panic)] // the point of a failpoint
        {
            panic!(
                "failpoint {}: the message asks for it",
                crate::env_vars::FAILPOINT_TURN_PANIC
            );
        }
    }
}

/// The messages one turn answers and what it knows of their conversation.
struct TurnInput<'m> {
    msg: &'m InboundMessage,
    /// Messages of the customer that arrived while the turn waited, answered together with it.
    later: Vec<(u64, InboundMessage)>,
    /// `msg` and the later messages' texts, one per line: what routing and the model read.
    text: String,
    snapshot_history: Vec<HistoryEntry>,
    session: crate::state::Session,
}

impl<'m> TurnInput<'m> {
    fn new(msg: &'m InboundMessage, snapshot: ConversationSnapshot) -> TurnInput<'m> {
        let later = snapshot.later;
        let text = if later.is_empty() {
            msg.text.clone()
        } else {
            std::iter::once(msg.text.as_str())
                .chain(later.iter().map(|(_, m)| m.text.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        TurnInput {
            msg,
            later,
            text,
            snapshot_history: snapshot.history,
            session: snapshot.session,
        }
    }

    fn messages(&self) -> impl Iterator<Item = &InboundMessage> {
        std::iter::once(self.msg).chain(self.later.iter().map(|(_, m)| m))
    }
}

/// What routing decided: the skill that answers and the language it answers in.
struct Route<'s> {
    skill: &'s Skill,
    /// The conversation's language once known (kept in the session); `None` while only the
    /// configured default applies.
    known_language: Option<String>,
    /// The language of the answer.
    language: String,
    /// The reference of the hand-over under way, if a person has the conversation.
    pending_escalation: Option<String>,
    /// Why this message hands the conversation to a person, if it does.
    escalate: Option<String>,
}

/// The answer a turn commits, and the hand-over it starts, if any.
struct Response {
    completion: Completion,
    escalation: Option<Escalation>,
    /// Live events of the answer not written yet (see [`publisher::EventWriter::run`]): the
    /// commit writes them ahead of the answer.
    unwritten_events: Vec<SessionEvent>,
}

impl Response {
    /// An answer the model did not stream (a notice, a hand-over): nothing live is pending.
    fn not_streamed(completion: Completion, escalation: Option<Escalation>) -> Response {
        Response {
            completion,
            escalation,
            unwritten_events: Vec::new(),
        }
    }
}

/// A turn after its conversation is ready: route, respond (compose and ask, or a fixed notice),
/// then commit. Delivery follows in [`run`].
async fn answer(
    ctx: &TurnContext,
    live: &Live,
    store: &dyn StateStore,
    job: &Job,
    holder: &str,
    snapshot: ConversationSnapshot,
) -> Result<TurnEnd, TurnError> {
    let msg = &job.msg;
    failpoint_turn_panic(msg);
    // One snapshot of the skills for the whole turn, whatever a reload does meanwhile.
    let skills = ctx.skills.current();
    let mut input = TurnInput::new(msg, snapshot);
    let route = route(live, &skills, &input).await;
    let response = respond(ctx, live, store, &skills, &route, &mut input).await;
    commit(ctx, store, job, holder, &route, &input, response).await
}

/// Picks the skill and the language. While a person has the conversation it stays with the
/// skill that handed it over; otherwise the skills' triggers decide, and the model classifies
/// what they cannot (when enabled).
async fn route<'s>(live: &Live, skills: &'s SkillSet, input: &TurnInput<'_>) -> Route<'s> {
    let (msg, session) = (input.msg, &input.session);
    let pending_escalation = session.escalation_pending.clone();
    let handed_over_by = pending_escalation
        .as_ref()
        .and_then(|_| skills.get(session.escalation_skill.as_deref()?));
    let skill = match handed_over_by {
        Some(skill) => skill,
        None => match skills.routing(&input.text, session.active_skill.as_deref()) {
            Routing::Decided(skill) => skill,
            Routing::Undecided {
                fallback,
                candidates,
            } => match (&live.config.skills.classify, &msg.unsupported) {
                (Some(classify), None) => classify::classify(
                    &live.chain,
                    &candidates,
                    &input.text,
                    &msg.rate_key(),
                    classify.timeout,
                )
                .await
                .unwrap_or(fallback),
                _ => fallback,
            },
        },
    };
    // Once known, a conversation keeps its language; until then, what the customer writes says
    // most, the platform's locale next; the default is used but not remembered.
    let known_language = session
        .language
        .clone()
        .or_else(|| live.languages.detect(&input.text))
        .or_else(|| msg.language.clone());
    let language = known_language
        .clone()
        .unwrap_or_else(|| live.config.agent.default_language.clone());
    let escalate = match (&pending_escalation, &msg.unsupported, &skill.escalate) {
        (None, None, Some(rule)) => rule.reason(&input.text),
        _ => None,
    };
    Route {
        skill,
        known_language,
        language,
        pending_escalation,
        escalate,
    }
}

/// The answer: the hand-over notices when a person has (or takes) the conversation, the
/// text-only notice for what the agent cannot read, else the model's answer to the composed
/// prompt.
async fn respond(
    ctx: &TurnContext,
    live: &Live,
    store: &dyn StateStore,
    skills: &SkillSet,
    route: &Route<'_>,
    input: &mut TurnInput<'_>,
) -> Response {
    let (msg, skill, language) = (input.msg, route.skill, &route.language);
    let fixed = |text: String| Completion {
        text,
        provider: escalation::PROVIDER.into(),
    };
    match (&route.pending_escalation, &route.escalate, &msg.unsupported) {
        // A person has the conversation: the bot does not answer for them. The dispatcher gets
        // each message; the customer hears that it reached them.
        (Some(reference), _, _) => {
            for m in input.messages() {
                let key = format!("{reference}:{}", m.dedupe_id().as_str());
                let event = escalation::message_event(reference, m);
                notify_dispatcher(&live.dispatcher, store, reference, &event, &key).await;
            }
            Response::not_streamed(
                fixed(escalation::customer_text(
                    skill.escalate.as_ref().map(|e| &e.pending),
                    &escalation::DEFAULT_PENDING,
                    language,
                    reference,
                )),
                None,
            )
        }
        // This message hands the conversation to a person. The dispatcher hears of it before the
        // commit, so a replica that dies in between sends it again, with the same reference and
        // idempotency key, when another replica retries the turn.
        (None, Some(reason), _) => {
            let later_msgs: Vec<&InboundMessage> = input.later.iter().map(|(_, m)| m).collect();
            let mut handover = Escalation::new(
                msg,
                &later_msgs,
                &input.snapshot_history,
                &skill.name,
                language,
                reason.clone(),
                now_ms(),
            );
            tracing::info!(conversation = %msg.conversation(), reference = %handover.reference, skill = %skill.name, "conversation handed over to a person");
            let event = handover.created_event();
            handover.notified = notify_dispatcher(
                &live.dispatcher,
                store,
                &handover.reference,
                &event,
                &handover.reference,
            )
            .await;
            let text = escalation::customer_text(
                skill.escalate.as_ref().map(|e| &e.answer),
                &escalation::DEFAULT_ANSWER,
                language,
                &handover.reference,
            );
            Response::not_streamed(fixed(text), Some(handover))
        }
        // An image or voice note: the agent cannot read it, so it says so instead of guessing;
        // a text over the channel's limit gets its own notice.
        (None, None, Some(kind)) => {
            let (notices, provider) = if kind == crate::message::TOO_LONG {
                (&live.config.channels.too_long_reply, "too-long-notice")
            } else {
                (&live.config.channels.unsupported_reply, "text-only-notice")
            };
            let notice = Completion {
                text: notices
                    .get(language)
                    .or_else(|| notices.get("en"))
                    .cloned()
                    .unwrap_or_else(|| skills.general_template(language).to_string()),
                provider: provider.into(),
            };
            Response::not_streamed(notice, None)
        }
        (None, None, None) => {
            let prompt = compose(ctx, live, skills, route, input).await;
            let (completion, unwritten_events) = ask_model(ctx, live, store, msg, &prompt).await;
            Response {
                completion,
                escalation: None,
                unwritten_events,
            }
        }
    }
}

/// The prompt: system prompt (agent, language, skill, and what the skill's lookup found), the
/// conversation so far, then the new message(s). The lookup's own answer becomes the template
/// answer for when every model fails.
async fn compose(
    ctx: &TurnContext,
    live: &Live,
    skills: &SkillSet,
    route: &Route<'_>,
    input: &mut TurnInput<'_>,
) -> Prompt {
    let (msg, skill) = (input.msg, route.skill);
    let lookup = match &skill.lookup {
        Some(lookup) => {
            let outcome = lookup.run(&ctx.http, &input.text).await;
            if let lookup::Outcome::Unavailable(_, reason) = &outcome {
                tracing::warn!(skill = %skill.name, %reason, "skill lookup unavailable; the answer says so");
            }
            Some((lookup, outcome))
        }
        None => None,
    };
    // The history moves into the prompt: it is not kept twice while the model thinks. A
    // stateless client's own account of the conversation replaces it.
    let history = match &msg.context {
        Some(turns) => turns
            .iter()
            .map(|turn| HistoryEntry {
                role: turn.role,
                text: turn.text.clone(),
                ts: msg.received_at_ms,
                message_id: String::new(),
                skill: None,
                provider: None,
                by: None,
            })
            .collect(),
        None => std::mem::take(&mut input.snapshot_history),
    };
    let mut prompt = build_prompt(
        live,
        skills,
        skill,
        &route.language,
        history,
        msg,
        &input.later,
    );
    if let Some((lookup, outcome)) = &lookup {
        if let (Some(context), Some(system)) =
            (lookup::context(outcome), prompt.messages.first_mut())
        {
            system.content.push_str("\n\n");
            system.content.push_str(&context);
        }
        if let Some(answer) = lookup.answer(outcome, &route.language) {
            prompt.template_answer = answer;
        }
    }
    prompt
}

/// Commits the answer atomically (history, reply, session, events, the later messages it
/// covers); exactly one turn per message gets to, and a turn that lost the race discards its
/// answer.
async fn commit(
    ctx: &TurnContext,
    store: &dyn StateStore,
    job: &Job,
    holder: &str,
    route: &Route<'_>,
    input: &TurnInput<'_>,
    response: Response,
) -> Result<TurnEnd, TurnError> {
    let (msg, seq, skill, later) = (input.msg, job.seq, route.skill, &input.later);
    let Response {
        completion,
        escalation,
        unwritten_events,
    } = response;
    let path = DeliveryPath::of(msg.channel);
    let now = now_ms();
    let entry = |role, text: &str, provider: Option<String>| HistoryEntry {
        role,
        text: text.to_string(),
        ts: if role == Role::User {
            msg.received_at_ms
        } else {
            now
        },
        message_id: msg.message_id.clone(),
        skill: Some(skill.name.clone()),
        provider,
        by: None,
    };
    let reply = StoredReply {
        message_id: msg.message_id.clone(),
        text: completion.text.clone(),
        skill: skill.name.clone(),
        provider: completion.provider.clone(),
        ts: now,
        covered_by: None,
        replica: Some(ctx.replica_id.clone()),
    };
    let later_commits: Vec<LaterMessage> = later
        .iter()
        .map(|(later_seq, m)| LaterMessage {
            seq: *later_seq,
            id: m.dedupe_id(),
            user: HistoryEntry {
                role: Role::User,
                text: m.text.clone(),
                ts: m.received_at_ms,
                message_id: m.message_id.clone(),
                skill: Some(skill.name.clone()),
                provider: None,
                by: None,
            },
            reply: StoredReply {
                message_id: m.message_id.clone(),
                covered_by: Some(msg.message_id.clone()),
                ..reply.clone()
            },
            notify_channel: DeliveryPath::of(m.channel).notify_channel(
                m,
                &ctx.replica_id,
                &ctx.keys,
            ),
        })
        .collect();
    let commit = TurnCommit {
        msg,
        seq,
        holder,
        user: entry(Role::User, &msg.text, None),
        assistant: entry(
            Role::Assistant,
            &completion.text,
            Some(completion.provider.clone()),
        ),
        reply: reply.clone(),
        session: [
            Some(("active_skill", skill.name.clone())),
            route.known_language.clone().map(|l| ("language", l)),
            Some(("last_message_at", now.to_string())),
            escalation
                .as_ref()
                .map(|e| ("escalation_pending", e.reference.clone())),
            escalation
                .as_ref()
                .map(|_| ("escalation_skill", skill.name.clone())),
        ]
        .into_iter()
        .flatten()
        .collect(),
        notify_channel: path.notify_channel(msg, &ctx.replica_id, &ctx.keys),
        release_lease: path.releases_lease_at_commit(),
        later: later_commits,
        events: unwritten_events
            .into_iter()
            .chain(answer_events(msg, &reply, later, escalation.as_ref()))
            .collect(),
        escalation,
        acknowledges: job
            .entry
            .as_ref()
            .filter(|_| path.releases_lease_at_commit()),
    };
    let outcome = while_unavailable(|| store.commit_turn(&commit)).await?;
    match outcome {
        CommitOutcome::Committed => {
            tracing::debug!(message_id = %msg.message_id, seq, "turn committed");
            if !commit.events.is_empty() {
                ctx.events.wake(msg.conversation().as_str());
            }
            let channel = msg.channel.as_str();
            metrics::counter!(telemetry::MESSAGES_REPLIED, "channel" => channel, "provider" => completion.provider)
                .increment(1);
            metrics::histogram!(telemetry::TURN_DURATION)
                .record(now.saturating_sub(msg.received_at_ms) as f64 / 1000.0);
            if !commit.later.is_empty() {
                metrics::counter!(telemetry::MESSAGES_COALESCED, "channel" => channel)
                    .increment(commit.later.len() as u64);
                tracing::debug!(conversation = %msg.conversation(), answered_together = commit.later.len() + 1, "later messages of the customer answered in this turn");
            }
            // Web-chat requests for the later messages held on this replica get the same reply
            // (the commit published it to the other replicas).
            for ((_, m), later_commit) in later.iter().zip(&commit.later) {
                notify_local(ctx, m, &later_commit.reply);
            }
            Ok(TurnEnd::Replied {
                reply,
                acknowledged: commit.acknowledges.is_some(),
            })
        }
        CommitOutcome::AlreadyReplied(existing) => {
            metrics::counter!(telemetry::TURNS_DISCARDED).increment(1);
            tracing::info!(message_id = %msg.message_id, "message was answered by another worker meanwhile; this turn's answer is discarded");
            if path == DeliveryPath::HeldRequest {
                notify_local(ctx, msg, &existing);
            }
            Ok(TurnEnd::Discarded)
        }
    }
}

/// Asks the provider chain; on channels with live events and `webchat.streaming`, the customer
/// sees the answer as the model writes it. Returns the answer and the live events not written by
/// the time it was complete, for the commit to write. (The typing event was written when the
/// turn began.)
async fn ask_model(
    ctx: &TurnContext,
    live: &Live,
    store: &dyn StateStore,
    msg: &InboundMessage,
    prompt: &Prompt,
) -> (Completion, Vec<SessionEvent>) {
    let rate_key = msg.rate_key();
    if !(events::keeps_events(msg) && live.config.webchat.streaming) {
        return (live.chain.complete(prompt, &rate_key).await, Vec::new());
    }
    let (turn_events, writer) =
        publisher::channel(store, &ctx.events, msg.conversation(), &msg.message_id);
    let asked = async move {
        let completion = live
            .chain
            .complete_streaming(prompt, &rate_key, &turn_events)
            .await;
        // Ends the writer: what it has not written yet, the commit writes with the answer.
        drop(turn_events);
        completion
    };
    tokio::join!(asked, writer.run())
}

/// The session events a committed turn writes: its answer (covering the later messages it
/// answered too) and, when it hands the conversation over, the notice.
fn answer_events(
    msg: &InboundMessage,
    reply: &StoredReply,
    later: &[(u64, InboundMessage)],
    escalation: Option<&Escalation>,
) -> Vec<SessionEvent> {
    if !events::keeps_events(msg) {
        return Vec::new();
    }
    let covers = later.iter().map(|(_, m)| m.message_id.clone()).collect();
    let mut written = vec![SessionEvent::answer(reply, covers)];
    if let Some(handover) = escalation {
        written.push(SessionEvent::Handover {
            message_id: msg.message_id.clone(),
            reference: handover.reference.clone(),
        });
    }
    written
}

/// System prompt (agent + language + skill), history, then the new message.
fn build_prompt(
    live: &Live,
    skills: &SkillSet,
    skill: &Skill,
    language: &str,
    history: Vec<HistoryEntry>,
    msg: &InboundMessage,
    later: &[(u64, InboundMessage)],
) -> Prompt {
    let mut system = format!(
        "{}\n\nThe customer's language: {language}. Answer in that language.",
        live.config.agent.system_prompt
    );
    if !skill.instructions.is_empty() {
        system.push_str(&format!(
            "\n\n## Skill: {}\n{}",
            skill.name, skill.instructions
        ));
    }
    let mut messages = Vec::with_capacity(history.len() + 2);
    messages.push(ChatMessage {
        role: "system",
        content: system,
    });
    messages.extend(history.into_iter().map(|e| match e.role {
        Role::User => ChatMessage {
            role: "user",
            content: e.text,
        },
        Role::Assistant => ChatMessage {
            role: "assistant",
            content: e.text,
        },
        // The model speaks for the team after a person did: it must know what they promised.
        Role::Agent => ChatMessage {
            role: "assistant",
            content: format!(
                "[{}, a person of our team, wrote to the customer:] {}",
                e.by.as_deref().unwrap_or("a colleague"),
                e.text
            ),
        },
    }));
    messages.push(ChatMessage {
        role: "user",
        content: msg.text.clone(),
    });
    messages.extend(later.iter().map(|(_, m)| ChatMessage {
        role: "user",
        content: m.text.clone(),
    }));
    let template_answer = skill
        .template(language)
        .unwrap_or_else(|| skills.general_template(language))
        .to_string();
    Prompt {
        messages,
        template_answer,
    }
}

/// Sends `event` and, when every attempt failed, keeps it in the dead-letter stream for
/// `clawgate deadletter retry`. Returns whether the dispatcher took it. Never fails the turn:
/// the customer is answered and the escalation recorded whatever the webhook does.
async fn notify_dispatcher(
    dispatcher: &crate::escalation::Dispatcher,
    store: &dyn StateStore,
    reference: &str,
    event: &serde_json::Value,
    key: &str,
) -> bool {
    let kind = event["event"].as_str().unwrap_or("escalation");
    let outcome = match dispatcher.send(event, key).await {
        Ok(()) => "sent",
        Err(crate::escalation::NotDelivered::NotConfigured) => "not_configured",
        Err(crate::escalation::NotDelivered::Failed(reason)) => {
            tracing::error!(reference, %reason, event = kind, "dispatcher webhook failed; the event goes to the dead-letter stream");
            if let Err(e) =
                while_unavailable(|| store.dead_letter_escalation(reference, key, event, &reason))
                    .await
            {
                tracing::error!(reference, error = %e, "could not dead-letter the dispatcher event");
            }
            "dead_letter"
        }
    };
    metrics::counter!(crate::telemetry::ESCALATION_EVENTS, "event" => kind.to_string(), "outcome" => outcome)
        .increment(1);
    outcome == "sent"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::background::Background;
    use crate::config::Config;
    use crate::state::Session;
    use crate::state::link::RedisLink;
    use crate::worker::delivery::tests::whatsapp;
    use std::path::PathBuf;

    fn velocity_skills() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/velocity/skills")
    }

    /// The built-in configuration (template answers only) with VeloCity's skills and languages.
    fn live() -> Arc<Live> {
        let mut config = Config::builtin();
        config.agent.languages = vec!["nl".into(), "de".into(), "en".into()];
        config.skills.dir = velocity_skills();
        let link = RedisLink::new(&config.redis).expect("link");
        let http = crate::http_client::build().expect("client");
        let skills = Arc::new(SkillLibrary::load(&config.skills.dir, Default::default()));
        LiveConfig::start(config, None, http, link, skills, Background::new()).current()
    }

    fn skills() -> SkillSet {
        let (skills, errors) = SkillSet::load(&velocity_skills());
        assert!(errors.is_empty(), "{errors:?}");
        skills
    }

    fn input(msg: &InboundMessage, session: Session) -> TurnInput<'_> {
        TurnInput::new(
            msg,
            ConversationSnapshot {
                history: Vec::new(),
                session,
                later: Vec::new(),
            },
        )
    }

    #[tokio::test]
    async fn a_complaint_goes_to_the_complaints_skill_in_the_customer_s_language_and_hands_over() {
        let (live, skills) = (live(), skills());
        let msg = whatsapp("Mijn pakket is beschadigd aangekomen");
        let route = route(&live, &skills, &input(&msg, Session::default())).await;
        assert_eq!(route.skill.name, "complaints");
        assert_eq!(route.known_language.as_deref(), Some("nl"));
        assert!(route.escalate.is_some());
        assert_eq!(route.pending_escalation, None);
    }

    #[tokio::test]
    async fn while_a_person_has_the_conversation_it_stays_with_their_skill_and_never_hands_over_twice()
     {
        let (live, skills) = (live(), skills());
        let session = Session {
            escalation_pending: Some("ESC-1".into()),
            escalation_skill: Some("complaints".into()),
            language: Some("en".into()),
            ..Session::default()
        };
        // A tracking question, and a word that would start a hand-over on its own.
        let msg = whatsapp("Where is VC123456789NL? It is damaged");
        let route = route(&live, &skills, &input(&msg, session)).await;
        assert_eq!(route.skill.name, "complaints");
        assert_eq!(route.pending_escalation.as_deref(), Some("ESC-1"));
        assert_eq!(route.escalate, None);
        assert_eq!(route.language, "en");
    }

    #[tokio::test]
    async fn a_media_message_never_hands_over_whatever_its_caption_says() {
        let (live, skills) = (live(), skills());
        let mut msg = whatsapp("damaged");
        msg.unsupported = Some("image".into());
        let route = route(&live, &skills, &input(&msg, Session::default())).await;
        assert_eq!(route.escalate, None);
    }
}
