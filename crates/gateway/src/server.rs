//! Wiring and lifecycle of one replica: build the parts from the config, serve, and on shutdown
//! drain in order (readiness fails, intake stops, running turns finish within the grace period,
//! held requests are answered, the server closes).

use crate::app::AppState;
use crate::audit::AuditLog;
use crate::background::Background;
use crate::config::Config;
use crate::event_stream::hub::EventHub;
use crate::http::connections;
use crate::http::router;
use crate::live::{ConfigFile, LiveConfig};
use crate::replies::ReplyWaiters;
use crate::skills::SkillLibrary;
use crate::state::link::RedisLink;
use crate::state::memory::MemoryStore;
use crate::state::redis::RedisStore;
use crate::state::{StateError, StoreLimits};
use crate::worker::WorkerPool;
use crate::worker::turn::TurnContext;
use crate::{http_client, ingress::Ingress, telemetry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The Redis URL could not be used.
    #[error("Redis: {0}")]
    Redis(#[from] StateError),
    /// The outbound HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs a replica on `listener` until `shutdown` is cancelled, then drains and returns. `file`
/// is where `config` was read from: it is re-read while the replica runs.
pub async fn run(
    listener: TcpListener,
    config: Config,
    file: Option<ConfigFile>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let started = Instant::now();
    let metrics = telemetry::install();
    let background = Background::new();
    let replica_id = config.gateway.replica_id.clone();

    let link = RedisLink::new(&config.redis)?;
    link.set_when_down(match config.redis.down_mode {
        crate::config::RedisDownMode::Degrade => format!(
            "answering from this replica's memory after {} ms without Redis (redis.downMode = degrade): conversations touched meanwhile lose context",
            config.redis.degrade_after.as_millis()
        ),
        crate::config::RedisDownMode::Reject => {
            "refusing messages with 503 until Redis is back (redis.downMode = reject)".to_string()
        }
    });
    background.spawn(link.clone().run_health(background.stopping()));
    let limits = StoreLimits::from_config(&config);
    let redis = Arc::new(RedisStore::new(link.clone(), limits.clone()));
    let (memory, memory_queue) = MemoryStore::new(limits, config.workers.memory_queue);
    let memory = Arc::new(memory);

    let skills = Arc::new(SkillLibrary::load(
        &config.skills.dir,
        config.skills.lookup_urls.clone(),
    ));
    background.spawn(
        skills
            .clone()
            .watch(config.skills.reload_interval, background.stopping()),
    );
    let http = http_client::build()?;
    let live = LiveConfig::start(
        config.clone(),
        file,
        http.clone(),
        link.clone(),
        skills.clone(),
        background.clone(),
    );
    background.spawn(live.clone().watch(background.stopping()));
    let skill_names: Vec<String> = skills
        .current()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let provider_names: Vec<String> = live
        .current()
        .chain
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();

    let waiters = Arc::new(ReplyWaiters::default());
    background.spawn(waiters.clone().listen(
        link.clone(),
        replica_id.clone(),
        background.stopping(),
    ));
    let events = Arc::new(EventHub::default());
    background.spawn(events.clone().listen(link.clone(), background.stopping()));
    let audit = AuditLog::start(&config.audit, &replica_id, link.clone(), &background);
    let ctx = Arc::new(TurnContext {
        replica_id: replica_id.clone(),
        skills: skills.clone(),
        live: live.clone(),
        order_wait: config.workers.order_wait,
        waiters: waiters.clone(),
        http: http.clone(),
        events: events.clone(),
        audit: audit.clone(),
        keys: link.keys().clone(),
    });
    let pool = WorkerPool::new(
        ctx,
        link.clone(),
        redis.clone(),
        memory.clone(),
        config.workers.clone(),
    );
    let feeding = pool.start(memory_queue, &background);

    let state = Arc::new(AppState {
        replica_id: replica_id.clone(),
        started,
        ingress: Ingress::new(
            link.clone(),
            redis,
            memory,
            config.redis.down_mode,
            config.redis.degrade_after,
            audit.clone(),
        ),
        waiters,
        events,
        link,
        redis_down_mode: config.redis.down_mode,
        live,
        pool: pool.clone(),
        skills,
        metrics,
        draining: AtomicBool::new(false),
        release_waiting: CancellationToken::new(),
        session_token_key: Default::default(),
        background: background.clone(),
        audit,
    });
    let http_stop = CancellationToken::new();
    let app =
        router(state.clone()).layer(RequestBodyTimeoutLayer::new(config.gateway.body_timeout));
    let server = connections::serve(
        listener,
        app,
        connections::Limits::from_config(&config.gateway),
        http_stop.clone(),
    );
    let mut server = background.spawn(server);
    tracing::info!(
        replica_id = %replica_id,
        listen = %config.gateway.listen,
        providers = ?provider_names,
        skills = ?skill_names,
        config = %config.source,
        "clawgate replica serving"
    );

    tokio::select! {
        _ = shutdown.cancelled() => {}
        ended = &mut server => {
            background.stop(BACKGROUND_STOP_GRACE).await;
            return flatten(ended);
        }
    }

    state.draining.store(true, Ordering::Release);
    state.ingress.drain();
    tracing::info!(
        running = pool.running(),
        "draining: readiness fails, intake stopped, finishing running turns"
    );
    pool.stop();
    feeding.wait().await;
    if pool.drain(config.gateway.shutdown_grace).await {
        tracing::info!("all turns finished");
    } else {
        tracing::warn!(
            running = pool.running(),
            "grace period over with turns still running; their inbox entries will be claimed by other replicas"
        );
    }
    state.release_waiting.cancel();
    http_stop.cancel();
    let closed = tokio::time::timeout(HTTP_CLOSE_GRACE, &mut server).await;
    if closed.is_err() {
        tracing::warn!("HTTP connections still open after the drain; closing anyway");
        server.abort();
    }
    if !background.stop(BACKGROUND_STOP_GRACE).await {
        tracing::warn!("background tasks still running after the drain; exiting anyway");
    }
    closed.map_or(Ok(()), flatten)
}

/// How long background tasks (health checks, reload watcher, guard loops) get to end once told.
const BACKGROUND_STOP_GRACE: Duration = Duration::from_secs(2);

/// How long held-open requests and the HTTP server get to close after the turns drained.
const HTTP_CLOSE_GRACE: Duration = Duration::from_secs(5);

fn flatten(ended: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ServeError> {
    match ended {
        Ok(result) => Ok(result?),
        Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
    }
}
