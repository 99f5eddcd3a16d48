//! One run from start to report: find out what the gateway offers (its config's channels), start
//! the reply collector, the monitor, the chaos schedule and the customers, stop sending when the
//! duration or the message budget is spent, wait for the last replies, run the final checks
//! (late platform replies, stored web-chat histories) and build the report.

use crate::chaos::{ChaosMonkey, ChaosRecord};
use crate::collect::{CollectError, Collector};
use crate::customer::{self, Finished, World};
use crate::monitor::Monitor;
use crate::plan::{Channel, Inquiry, Plan, PlanError, Weights};
use crate::report::Report;
use crate::scenario::Ids;
use crate::stats::Stats;
use crate::target::Target;
use clawgate_cluster::state::ClusterState;
use clawgate_gateway::config::Config;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long after the last reply the run keeps listening for duplicates.
const LATE_GRACE: Duration = Duration::from_millis(1500);
/// Web-chat histories fetched at once in the final check.
const HISTORY_CONCURRENCY: usize = 32;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An option is wrong.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The gateway's config cannot be read.
    #[error("the gateway's config: {0}")]
    Config(String),
    /// Replies cannot be collected.
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// The gateway does not answer.
    #[error("the target {0} does not answer GET /healthz: is the cluster up?")]
    Unreachable(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// What runs against one gateway share: its channels and the reply collector (one per process:
/// the gateway keeps its connections to the collector's port open between runs).
pub struct Setup {
    target: Target,
    channels: Weights<Channel>,
    collector: Collector,
}

impl Setup {
    /// Reads the gateway's config, starts the reply collector and checks that the gateway
    /// answers.
    pub async fn new(plan: &Plan) -> Result<Setup, RunError> {
        let config = gateway_config(plan)?;
        let target = Target::new(&plan.target, config.as_ref())?;
        let channels = channel_shares(plan, &target)?;
        let platform_bases: Vec<(Channel, String)> = channels
            .0
            .iter()
            .filter(|(c, w)| *c != Channel::Webchat && *w > 0)
            .filter_map(|(c, _)| Some((*c, target.api_base(*c)?.to_string())))
            .collect();
        let collector = Collector::start(&platform_bases, plan.faults).await?;
        if !reachable(&target).await {
            return Err(RunError::Unreachable(plan.target.clone()));
        }
        Ok(Setup {
            target,
            channels,
            collector,
        })
    }
}

/// Runs `plan` and returns its report.
pub async fn run(plan: Plan) -> Result<Report, RunError> {
    let setup = Setup::new(&plan).await?;
    run_with(plan, &setup).await
}

/// Runs `plan` on an existing setup (the capacity search runs many plans on one).
pub async fn run_with(plan: Plan, setup: &Setup) -> Result<Report, RunError> {
    if plan.duration.is_none() && plan.messages.is_none() {
        return Err(PlanError::new(
            "--duration",
            "give a duration or a message count (--messages), or both",
        )
        .into());
    }
    let (target, channels, collector) = (&setup.target, &setup.channels, &setup.collector);
    let chaos = ChaosMonkey::new(
        plan.state_dir.clone(),
        plan.llm.clone(),
        target.http().clone(),
    );
    chaos.check(&plan.chaos)?;
    let llm_latency = llm_latency(&plan, target.http()).await;
    let mut plan = plan;
    plan.llm_latency = llm_latency;

    let stats = Arc::new(Stats::new());
    let monitor = Monitor::new(plan.state_dir.clone());
    let monitor_stop = CancellationToken::new();
    let monitoring = tokio::spawn(monitor.clone().run(monitor_stop.clone()));
    let world = Arc::new(World {
        target: target.clone(),
        stats: stats.clone(),
        mailboxes: collector.mailboxes.clone(),
        ids: Ids::new(rand::random()),
        channels: channels.clone(),
        stop: CancellationToken::new(),
        budget: AtomicU64::new(plan.messages.unwrap_or(u64::MAX)),
        updates: AtomicU64::new(0),
        started_customers: AtomicU64::new(0),
        finished: std::sync::Mutex::new(Vec::new()),
        plan: plan.clone(),
    });
    let started = Instant::now();
    let progress = crate::progress::start(plan.progress, stats.clone(), world.stop.clone());
    let chaos_records = Arc::new(std::sync::Mutex::new(Vec::new()));
    let chaos_done = CancellationToken::new();
    let chaos_task = tokio::spawn(schedule_chaos(
        chaos,
        plan.chaos.clone(),
        started,
        chaos_records.clone(),
        chaos_done.clone(),
    ));
    let mut customers = JoinSet::new();
    for slot in 0..plan.customers {
        customers.spawn(customer::run(world.clone(), slot));
    }
    if let Some(duration) = plan.duration {
        let stop = world.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    world.stop.cancelled().await;
    let sending = started.elapsed();
    while customers.join_next().await.is_some() {}
    progress.finish();
    chaos_done.cancel();
    let _ = chaos_task.await;

    tokio::time::sleep(LATE_GRACE).await;
    let finished = std::mem::take(
        &mut *world
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let late = final_checks(&world, finished).await;
    let strays = collector.strays.swap(0, Ordering::Relaxed);
    stats.duplicated.fetch_add(strays, Ordering::Relaxed);
    monitor_stop.cancel();
    let _ = monitoring.await;

    let sent = Stats::get(&stats.sent);
    let answered = Stats::get(&stats.answered);
    let lost = sent.saturating_sub(answered);
    let duplicated = Stats::get(&stats.duplicated);
    let wrong_context = Stats::get(&stats.wrong_context);
    let records = chaos_records
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Report {
        sent,
        answered,
        lost,
        duplicated,
        wrong_context,
        errors: Stats::get(&stats.errors),
        throughput_per_s: round1(answered as f64 / sending.as_secs_f64().max(0.001)),
        e2e_ms: stats.e2e.percentiles(),
        ack_ms: stats.ack.percentiles().into(),
        replicas: replicas(&monitor, &stats),
        passed: lost == 0 && duplicated == 0 && wrong_context == 0,
        target: plan.target.clone(),
        customers: plan.customers,
        duration_s: round1(sending.as_secs_f64()),
        turns: plan.turns,
        channels: percents(channels, &Channel::ALL, Channel::as_str),
        mix: percents(&plan.mix, &Inquiry::ALL, Inquiry::as_str),
        unaccepted: Stats::get(&stats.unaccepted),
        unverified: Stats::get(&stats.unverified),
        late,
        overhead_ms: llm_latency.map(|_| stats.overhead.percentiles()),
        llm_latency_ms: llm_latency.map(|l| l.as_millis() as u64),
        by_channel: stats.by_channel(),
        webchat_by_replica: stats.by_replica(),
        loadgen: monitor.loadgen(),
        chaos: records,
        timeline: stats.timeline(),
    })
}

/// Each replica's figures: from the cluster's state and counters when there is a cluster to
/// watch, else the replicas the web-chat replies named (turns only: no pid to measure).
fn replicas(monitor: &Monitor, stats: &Stats) -> Vec<crate::monitor::ReplicaUse> {
    let watched = monitor.replicas();
    if !watched.is_empty() {
        return watched;
    }
    stats
        .by_replica()
        .into_iter()
        .map(|(id, answered)| crate::monitor::ReplicaUse {
            id,
            answered,
            ..Default::default()
        })
        .collect()
}

/// The gateway's config: `--config`, else the one the cluster's state names. Without either,
/// the run uses web chat only.
fn gateway_config(plan: &Plan) -> Result<Option<Config>, RunError> {
    let from_state =
        || -> Option<PathBuf> { ClusterState::read(plan.state_dir.as_deref()?).ok()?.config };
    let Some(path) = plan.config.clone().or_else(from_state) else {
        return Ok(None);
    };
    Config::load(&path)
        .map(Some)
        .map_err(|errors| RunError::Config(errors.to_string()))
}

/// The shares asked for (each channel must be enabled), or every enabled channel:
/// WhatsApp 40, Telegram 30, web chat 30.
fn channel_shares(plan: &Plan, target: &Target) -> Result<Weights<Channel>, PlanError> {
    match &plan.channels {
        Some(asked) => {
            for (channel, weight) in &asked.0 {
                if *weight > 0 && !target.enables(*channel) {
                    return Err(PlanError::new(
                        "--channels",
                        format!(
                            "the gateway's config does not enable {} (channels.{} in its config; give --config or --state-dir)",
                            channel.as_str(),
                            channel.as_str()
                        ),
                    ));
                }
            }
            Ok(asked.clone())
        }
        None => Ok(Weights(
            [
                (Channel::Whatsapp, 40),
                (Channel::Telegram, 30),
                (Channel::Webchat, 30),
            ]
            .into_iter()
            .filter(|(c, _)| target.enables(*c))
            .collect(),
        )),
    }
}

async fn reachable(target: &Target) -> bool {
    for _ in 0..10 {
        let answered = target
            .http()
            .get(target.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// Sets the mock model's latency when the plan asks; reads it otherwise, so the report can say
/// how much of the latency is the gateway's.
async fn llm_latency(plan: &Plan, http: &reqwest::Client) -> Option<Duration> {
    let url = format!("{}/control", plan.llm.as_deref()?.trim_end_matches('/'));
    let response = match plan.llm_latency {
        Some(latency) => {
            http.post(&url)
                .json(&serde_json::json!({"mode": "ok", "latency_ms": latency.as_millis() as u64, "jitter_ms": 0}))
                .send()
                .await
        }
        None => http.get(&url).send().await,
    };
    let body: serde_json::Value = response.ok()?.json().await.ok()?;
    body["latency_ms"].as_u64().map(Duration::from_millis)
}

async fn schedule_chaos(
    monkey: ChaosMonkey,
    events: Vec<crate::chaos::ChaosEvent>,
    started: Instant,
    records: Arc<std::sync::Mutex<Vec<ChaosRecord>>>,
    done: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    for event in events {
        let (monkey, records, done) = (monkey.clone(), records.clone(), done.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep_until((started + event.at).into()) => {}
            }
            let outcome = monkey.start(&event).await;
            let at_s = round1(started.elapsed().as_secs_f64());
            tracing::info!(event = %event.spec, %outcome, "chaos");
            let mut until_s = None;
            let mut outcome = outcome;
            if let Some(until) = event.until {
                // A window always closes, also when the run ends first.
                tokio::select! {
                    _ = done.cancelled() => {}
                    _ = tokio::time::sleep_until((started + until).into()) => {}
                }
                let ended = monkey.end(&event).await;
                until_s = Some(round1(started.elapsed().as_secs_f64()));
                outcome = format!("{outcome}; then {ended}");
            }
            records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(ChaosRecord {
                    event: event.spec.clone(),
                    at_s,
                    until_s,
                    outcome,
                });
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Late platform replies (a second reply, or one after the customer gave up) and the stored
/// history of every web-chat conversation (each message and its answer once, in order).
/// Returns how many replies came late.
async fn final_checks(world: &Arc<World>, finished: Vec<Finished>) -> u64 {
    let stats = &world.stats;
    let mut late = 0;
    let mut sessions = Vec::new();
    for mut conversation in finished {
        match conversation.mailbox.take() {
            Some(mut mailbox) => {
                world
                    .mailboxes
                    .close(conversation.channel, &conversation.user);
                let sent: Vec<&str> = conversation.turns.iter().map(|(t, _)| t.as_str()).collect();
                while let Ok(arrival) = mailbox.try_recv() {
                    let unanswered = customer::answered_message(&arrival.text, &sent)
                        .and_then(|i| conversation.turns.get(i))
                        .is_some_and(|(_, answered)| !answered);
                    if unanswered {
                        late += 1;
                    } else {
                        stats.duplicated.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => sessions.push(conversation),
        }
    }
    let mut checks = JoinSet::new();
    let mut sessions = sessions.into_iter();
    loop {
        while checks.len() < HISTORY_CONCURRENCY {
            let Some(conversation) = sessions.next() else {
                break;
            };
            let world = world.clone();
            checks.spawn(async move { stored_twice(&world, &conversation).await });
        }
        match checks.join_next().await {
            Some(Ok(twice)) => {
                stats.duplicated.fetch_add(twice, Ordering::Relaxed);
            }
            Some(Err(_)) => {}
            None => break,
        }
    }
    late
}

/// Messages or answers a web-chat session's stored history holds more than once.
async fn stored_twice(world: &World, conversation: &Finished) -> u64 {
    let Ok(history) = world.target.webchat_history(&conversation.user).await else {
        world.stats.on_error();
        return 0;
    };
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for entry in &history {
        let key = (
            entry["role"].as_str().unwrap_or_default().to_string(),
            entry["message_id"].as_str().unwrap_or_default().to_string(),
        );
        *seen.entry(key).or_default() += 1;
    }
    seen.values().map(|n| n.saturating_sub(1)).sum()
}

fn percents<T: Copy + PartialEq>(
    weights: &Weights<T>,
    all: &[T],
    name: fn(T) -> &'static str,
) -> BTreeMap<String, f64> {
    all.iter()
        .filter(|t| weights.0.iter().any(|(w, n)| w == *t && *n > 0))
        .map(|t| (name(*t).to_string(), round1(weights.percent(*t))))
        .collect()
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
