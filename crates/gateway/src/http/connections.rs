//! Accepting client connections, with the limits a replica facing the internet needs: a cap on
//! open connections, and hyper's timeouts for connections that send nothing or send slowly.
//!
//! `axum::serve` has no such settings, so the replica serves connections with hyper-util's
//! builder itself. What each setting does:
//! - `gateway.maxConnections`: at the cap, the oldest connections are asked to close (a graceful
//!   shutdown: an idle one closes at once, one with a request in flight after its answer), and
//!   the new connection takes the first slot freed; if none frees within 100 ms it is closed.
//!   So a flood of idle connections can neither use up the descriptors that held requests,
//!   provider calls and Redis need, nor lock out the clients that send requests.
//! - `gateway.headerTimeoutMs` and `gateway.idleTimeoutMs`: hyper times the wait for a request
//!   head (HTTP/1) from the moment a connection is ready for one, whether nothing arrives (an
//!   idle keep-alive or a fresh connection) or the head trickles in (slowloris); it is armed with
//!   the smaller of the two. A connection with no request started for `idleTimeoutMs` is also
//!   shut down gracefully (HTTP/2 included: a request in flight still finishes).
//! - `gateway.bodyTimeoutMs`: a body must arrive within it once the head is in (tower-http).

use crate::config::GatewayConfig;
use crate::telemetry;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after an accept error (e.g. out of descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Connections asked to close when a new one arrives at the cap.
const EVICT_AT_ONCE: usize = 8;
/// How long a new connection at the cap waits for a slot to free.
const SLOT_WAIT: Duration = Duration::from_millis(100);

/// Open connections in the order they were accepted, each with the token that asks it to close.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    by_age: std::sync::Mutex<std::collections::BTreeMap<u64, CancellationToken>>,
}

impl OpenConnections {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, CancellationToken>> {
        self.by_age.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection: its id and the token that asks it to close.
    fn add(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock().insert(id, token.clone());
        (id, token)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the oldest connections not yet asked to close.
    fn evict_oldest(&self, count: usize) {
        let open = self.lock();
        for token in open.values().filter(|t| !t.is_cancelled()).take(count) {
            token.cancel();
        }
    }
}

/// The connection limits, from `gateway.*`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// A connection without a request started for this long is shut down.
    pub idle_timeout: Duration,
    /// A request head must arrive within this.
    pub header_timeout: Duration,
}

impl Limits {
    /// The limits a configuration asks for.
    pub fn from_config(gateway: &GatewayConfig) -> Limits {
        Limits {
            max_connections: gateway.max_connections,
            idle_timeout: gateway.idle_timeout,
            header_timeout: gateway.header_timeout,
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets open connections finish their
/// requests (each is shut down gracefully) and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(OpenConnections::default());
    let open = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.min(limits.idle_timeout));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                registry.evict_oldest(EVICT_AT_ONCE);
                metrics::counter!(telemetry::CONNECTIONS_EVICTED).increment(EVICT_AT_ONCE as u64);
                match tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        metrics::counter!(telemetry::CONNECTIONS_REFUSED).increment(1);
                        drop(tcp);
                        continue;
                    }
                }
            }
        };
        // Replies are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let (builder, app, stop) = (builder.clone(), app.clone(), stop.clone());
        let idle_timeout = limits.idle_timeout;
        let registry = registry.clone();
        open.spawn(async move {
            let (id, evict) = registry.add();
            metrics::gauge!(telemetry::CONNECTIONS_OPEN).increment(1.0);
            let close = Close {
                stop: &stop,
                evict: &evict,
            };
            serve_connection(&builder, TokioIo::new(tcp), app, idle_timeout, close).await;
            metrics::gauge!(telemetry::CONNECTIONS_OPEN).decrement(1.0);
            registry.remove(id);
            drop(slot);
        });
    }
    drop(listener);
    open.close();
    open.wait().await;
    Ok(())
}

/// When a connection last started a request, in milliseconds since it was accepted.
struct Activity {
    since: Instant,
    last_request_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_request_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection may still idle before it is shut down (zero: now).
    fn idle_left(&self, idle_timeout: Duration) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        (last + idle_timeout).saturating_sub(self.since.elapsed())
    }
}

/// What asks a connection to close: the server stopping, or the cap making room.
struct Close<'a> {
    stop: &'a CancellationToken,
    evict: &'a CancellationToken,
}

async fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<tokio::net::TcpStream>,
    app: Router,
    idle_timeout: Duration,
    close: Close<'_>,
) {
    let activity = Arc::new(Activity {
        since: Instant::now(),
        last_request_ms: AtomicU64::new(0),
    });
    let touched = activity.clone();
    let service = tower::ServiceExt::map_request(app, move |request| {
        touched.touch();
        request
    });
    let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    let mut connection = pin!(connection);
    let mut closing = false;
    loop {
        let idle_left = activity.idle_left(idle_timeout);
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = close.stop.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = close.evict.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(idle_left), if !closing => {
                if activity.idle_left(idle_timeout).is_zero() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
