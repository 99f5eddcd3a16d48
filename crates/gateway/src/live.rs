//! The live configuration: the config a replica runs with and the parts built from it (provider
//! chain, dispatcher, platform senders, language detector), swapped whole when the config file
//! changes, with no restart.
//!
//! The file is re-read every `gateway.configReloadIntervalMs` and on SIGHUP; a reload happens
//! only when its bytes changed. A new version is parsed and validated completely before anything
//! is swapped: one that fails keeps the last good version running, logs every error and shows
//! them in `/healthz`. A turn takes one snapshot when it starts, so it never sees half of a
//! reload. Nothing is ever written next to the file, so a read-only mount works.
//!
//! What a reload changes: `llm`, `agent`, `channels`, `escalation`, `webchat` and
//! `skills.lookupUrls`. What it cannot change (the listener, the replica's identity, Redis, the
//! worker pool, conversation limits, the skills folder) is reported as needing a restart and
//! keeps its value from start-up.

use crate::background::Background;
use crate::config::{Config, Overrides};
use crate::egress::Egress;
use crate::escalation::Dispatcher;
use crate::language::LanguageDetector;
use crate::llm::chain::ProviderChain;
use crate::message::now_ms;
use crate::skills::SkillLibrary;
use crate::state::link::RedisLink;
use crate::telemetry;
use arc_swap::ArcSwap;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// One version of the configuration and what was built from it.
pub struct Live {
    /// The configuration (start-up values for the parts a reload cannot change).
    pub config: Config,
    /// The providers to ask.
    pub chain: ProviderChain,
    /// Tells which served language a customer writes in.
    pub languages: LanguageDetector,
    /// Where escalated conversations are announced.
    pub dispatcher: Dispatcher,
    /// Senders for WhatsApp and Telegram replies.
    pub egress: Egress,
    /// Stops this version's breaker and budget loop when a newer version replaces it.
    guards: CancellationToken,
}

/// What the last reload attempts found, for `/healthz`.
#[derive(Default)]
struct ReloadStatus {
    /// The file's bytes at the last attempt; an unchanged file is not parsed again.
    last_bytes: Option<Vec<u8>>,
    /// When the running version was loaded (ms since the epoch).
    loaded_at: u64,
    /// Versions applied since start-up.
    reloads: u64,
    /// Errors of the last attempt, when it was refused (the previous version runs).
    errors: Vec<String>,
    /// Changed settings that only a restart applies.
    restart_needed: Vec<String>,
}

/// How a reload attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
    /// The file did not change.
    Unchanged,
    /// The new version runs; these changed settings need a restart to apply.
    Applied {
        /// Setting names.
        restart_needed: Vec<String>,
    },
    /// The new version is invalid; the previous one keeps running.
    Rejected(Vec<String>),
}

/// Where a replica's config came from, so it can be read again.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The JSON file.
    pub path: PathBuf,
    /// Command-line and environment values that take precedence over it.
    pub overrides: Overrides,
}

/// The current configuration of a replica and how to reload it.
pub struct LiveConfig {
    /// The file to re-read; `None` runs on built-in defaults, which never change.
    file: Option<ConfigFile>,
    /// The version the replica started with: the reference for settings a reload cannot change.
    startup: Config,
    /// The shared outbound HTTP client (timeouts are per request).
    http: reqwest::Client,
    /// Redis, for the provider chain's shared breakers and budgets.
    link: Arc<RedisLink>,
    /// Skills get the new lookup URLs.
    skills: Arc<SkillLibrary>,
    /// Runs every version's guard loop; stopped at shutdown.
    background: Background,
    /// What turns and handlers read.
    current: ArcSwap<Live>,
    /// Reload bookkeeping.
    status: Mutex<ReloadStatus>,
}

impl LiveConfig {
    /// The live configuration of a replica that loaded `config` from `path` (with `overrides`);
    /// starts the provider chain's guard loop.
    pub fn start(
        config: Config,
        file: Option<ConfigFile>,
        http: reqwest::Client,
        link: Arc<RedisLink>,
        skills: Arc<SkillLibrary>,
        background: Background,
    ) -> Arc<LiveConfig> {
        let first = Arc::new(build(&config, &http, &link, &background, config.clone()));
        spawn_guards(&background, &first);
        let last_bytes = file.as_ref().and_then(|f| std::fs::read(&f.path).ok());
        Arc::new(LiveConfig {
            file,
            startup: config,
            http,
            link,
            skills,
            background,
            current: ArcSwap::new(first),
            status: Mutex::new(ReloadStatus {
                last_bytes,
                loaded_at: now_ms(),
                ..ReloadStatus::default()
            }),
        })
    }

    /// The version to use now; hold it for the length of one turn or request.
    pub fn current(&self) -> Arc<Live> {
        self.current.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `/healthz`'s view: where the config came from, when it was loaded, and what the last
    /// reload found.
    pub fn health(&self) -> Value {
        let status = self.lock();
        json!({
            "source": self.current().config.source,
            "loaded_at_ms": status.loaded_at,
            "reloads": status.reloads,
            "errors": status.errors,
            "restart_needed": status.restart_needed,
        })
    }

    /// Re-reads the file; applies it when it changed (or `force`) and is valid. Blocking file
    /// reads: call it from a blocking context.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        let Some(ConfigFile { path, overrides }) = &self.file else {
            return ReloadOutcome::Unchanged;
        };
        let bytes = std::fs::read(path).ok();
        {
            let mut status = self.lock();
            if !force && bytes.is_some() && status.last_bytes == bytes {
                return ReloadOutcome::Unchanged;
            }
            status.last_bytes = bytes;
        }
        let loaded = Config::load(path).and_then(|c| c.with_overrides(overrides.clone()));
        let config = match loaded {
            Ok(config) => config,
            Err(errors) => {
                let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                for error in &errors {
                    tracing::warn!(%error, "config reload refused; the last good version keeps running");
                }
                metrics::counter!(telemetry::CONFIG_RELOADS, "outcome" => "rejected").increment(1);
                self.lock().errors = errors.clone();
                return ReloadOutcome::Rejected(errors);
            }
        };
        let restart_needed = self.restart_needed(&config);
        if !restart_needed.is_empty() {
            tracing::warn!(settings = ?restart_needed, "config changed settings that apply only after a restart; they keep their start-up values");
        }
        self.skills
            .set_lookup_urls(config.skills.lookup_urls.clone());
        let live = Arc::new(build(
            &self.startup,
            &self.http,
            &self.link,
            &self.background,
            config,
        ));
        spawn_guards(&self.background, &live);
        self.current.swap(live).guards.cancel();
        {
            let mut status = self.lock();
            status.loaded_at = now_ms();
            status.reloads += 1;
            status.errors.clear();
            status.restart_needed = restart_needed.clone();
        }
        metrics::counter!(telemetry::CONFIG_RELOADS, "outcome" => "applied").increment(1);
        tracing::info!(config = %path.display(), "config reloaded");
        ReloadOutcome::Applied { restart_needed }
    }

    /// Re-reads the file every `gateway.configReloadIntervalMs` (of the running version) and
    /// at once on SIGHUP, until `cancel`.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        if self.file.is_none() {
            return;
        }
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let interval = self.current().config.gateway.config_reload_interval;
            let tick = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await;
                } else {
                    tokio::time::sleep(interval).await;
                }
            };
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let force = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick => false,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading the config");
                    true
                }
            };
            let live = self.clone();
            let _ = tokio::task::spawn_blocking(move || live.reload(force)).await;
        }
    }

    /// Settings of `config` that differ from start-up and that only a restart applies.
    fn restart_needed(&self, config: &Config) -> Vec<String> {
        let was = &self.startup;
        // The sections hold no secrets; their debug forms compare every field.
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        [
            (
                "gateway.listen",
                differs(&was.gateway.listen, &config.gateway.listen),
            ),
            (
                "gateway.replicaId",
                was.gateway.replica_id != config.gateway.replica_id,
            ),
            (
                "gateway.shutdownGraceMs",
                was.gateway.shutdown_grace != config.gateway.shutdown_grace,
            ),
            ("redis", differs(&was.redis, &config.redis)),
            (
                "conversations",
                differs(&was.conversations, &config.conversations),
            ),
            ("workers", differs(&was.workers, &config.workers)),
            ("skills.dir", was.skills.dir != config.skills.dir),
            (
                "skills.reloadIntervalMs",
                was.skills.reload_interval != config.skills.reload_interval,
            ),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name.to_string())
        .collect()
    }
}

/// Builds the parts of a version of `config` (no I/O). Settings a reload cannot change keep
/// their values from `startup`, so what `/healthz` and the turns see is what actually runs.
fn build(
    startup: &Config,
    http: &reqwest::Client,
    link: &Arc<RedisLink>,
    background: &Background,
    mut config: Config,
) -> Live {
    config.gateway.listen = startup.gateway.listen;
    config.gateway.replica_id = startup.gateway.replica_id.clone();
    config.gateway.shutdown_grace = startup.gateway.shutdown_grace;
    config.redis = startup.redis.clone();
    config.conversations = startup.conversations.clone();
    config.workers = startup.workers.clone();
    config.skills.dir = startup.skills.dir.clone();
    config.skills.reload_interval = startup.skills.reload_interval;
    let chain = ProviderChain::from_config(
        &config.llm,
        http,
        Some(link.clone()),
        &config.gateway.replica_id,
    );
    Live {
        chain,
        languages: LanguageDetector::new(&config.agent.languages),
        dispatcher: Dispatcher::new(&config.escalation, http),
        egress: Egress::from_config(&config.channels, http),
        guards: background.stopping().child_token(),
        config,
    }
}

/// Runs `live`'s breaker and budget loop until it is replaced or the replica stops.
fn spawn_guards(background: &Background, live: &Arc<Live>) {
    let running = live.clone();
    let stop = live.guards.clone();
    background.spawn(async move { running.chain.run_guards(stop).await });
}
