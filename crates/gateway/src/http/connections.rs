//! Accepting client connections, with the limits a replica facing the internet needs: a cap on
//! open connections, and hyper's timeouts for connections that send nothing or send slowly.
//!
//! `axum::serve` has no such settings, so the replica serves connections with hyper-util's
//! builder itself. What each setting does:
//! - `gateway.maxConnections`: a connection beyond the cap is closed as soon as it is accepted,
//!   so a flood of idle connections cannot use up the descriptors that held requests, provider
//!   calls and Redis need (it is refused in microseconds, not queued until they run out).
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
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after an accept error (e.g. out of descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(telemetry::CONNECTIONS_REFUSED).increment(1);
            drop(tcp);
            continue;
        };
        // Replies are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let (builder, app, stop) = (builder.clone(), app.clone(), stop.clone());
        let idle_timeout = limits.idle_timeout;
        open.spawn(async move {
            metrics::gauge!(telemetry::CONNECTIONS_OPEN).increment(1.0);
            serve_connection(&builder, TokioIo::new(tcp), app, idle_timeout, &stop).await;
            metrics::gauge!(telemetry::CONNECTIONS_OPEN).decrement(1.0);
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

async fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<tokio::net::TcpStream>,
    app: Router,
    idle_timeout: Duration,
    stop: &CancellationToken,
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
            _ = stop.cancelled(), if !closing => {
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
