//! Where WhatsApp and Telegram replies arrive: the load test serves the platforms' send APIs
//! itself (the `apiBase` of the gateway's config, on loopback) with the project's platform fake,
//! and hands each reply to the customer it was sent to. A reply nobody waits for is counted as a
//! duplicate by the customer's final check.

use crate::plan::{Channel, PlatformFaults};
use clawgate_fakes::mock_platforms::{MockPlatforms, Sent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// A reply as it arrived at the fake platform.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it arrived.
    pub at: Instant,
    /// Its text.
    pub text: String,
}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The `apiBase` is not a loopback `http://host:port` the load test can serve.
    #[error(
        "{channel}: replies go to apiBase {base}; the load test must receive them, so point it at a free http://127.0.0.1:PORT"
    )]
    NotLocal {
        /// The channel.
        channel: &'static str,
        /// Its `apiBase`.
        base: String,
    },
    /// The port is taken (a `clawgate mock platforms` still running?).
    #[error(
        "{channel}: cannot listen on {addr} (apiBase) to collect replies: {source}; stop what listens there (a `clawgate mock platforms`?)"
    )]
    Bind {
        /// The channel.
        channel: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Mailboxes of the customers waiting for platform replies, by channel and recipient.
#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<(Channel, String), mpsc::UnboundedSender<Arrival>>>,
}

impl Mailboxes {
    /// Opens the mailbox of `to` on `channel`.
    pub fn open(&self, channel: Channel, to: &str) -> mpsc::UnboundedReceiver<Arrival> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert((channel, to.to_string()), tx);
        rx
    }

    /// Closes it (replies to `to` then count as strays).
    pub fn close(&self, channel: Channel, to: &str) {
        self.lock().remove(&(channel, to.to_string()));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(Channel, String), mpsc::UnboundedSender<Arrival>>> {
        self.boxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delivers `sent`; false when nobody's mailbox takes it.
    fn deliver(&self, sent: Sent) -> bool {
        let channel = match sent.channel.as_str() {
            "whatsapp" => Channel::Whatsapp,
            "telegram" => Channel::Telegram,
            _ => return false,
        };
        let arrival = Arrival {
            at: Instant::now(),
            text: sent.text,
        };
        self.lock()
            .get(&(channel, sent.to))
            .is_some_and(|tx| tx.send(arrival).is_ok())
    }
}

/// The running fake platforms.
pub struct Collector {
    /// The customers' mailboxes.
    pub mailboxes: Arc<Mailboxes>,
    /// Replies addressed to nobody waiting (counted as duplicates).
    pub strays: Arc<std::sync::atomic::AtomicU64>,
    /// The fake platforms; they serve until the collector is dropped.
    _platforms: Vec<MockPlatforms>,
}

impl Collector {
    /// Serves the `apiBase` of each channel in `bases` (several channels may share one), with
    /// `faults` injected into the first.
    pub async fn start(
        bases: &[(Channel, String)],
        faults: PlatformFaults,
    ) -> Result<Collector, CollectError> {
        let mailboxes = Arc::new(Mailboxes::default());
        let strays = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut served: Vec<SocketAddr> = Vec::new();
        let mut platforms = Vec::new();
        for (channel, base) in bases {
            let addr = local_addr(base).ok_or_else(|| CollectError::NotLocal {
                channel: channel.as_str(),
                base: base.clone(),
            })?;
            if served.contains(&addr) {
                continue;
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| CollectError::Bind {
                    channel: channel.as_str(),
                    addr,
                    source,
                })?;
            let (platform, mut arrivals) =
                MockPlatforms::spawn_on(listener, false).map_err(|source| CollectError::Bind {
                    channel: channel.as_str(),
                    addr,
                    source,
                })?;
            let (boxes, strays) = (mailboxes.clone(), strays.clone());
            tokio::spawn(async move {
                while let Some(sent) = arrivals.recv().await {
                    if !boxes.deliver(sent) {
                        strays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            served.push(addr);
            platforms.push(platform);
        }
        if let Some(first) = platforms.first() {
            first.swallow_next(faults.swallow);
            first.duplicate_next(faults.duplicate);
        }
        Ok(Collector {
            mailboxes,
            strays,
            _platforms: platforms,
        })
    }
}

/// `http://127.0.0.1:PORT[/…]` (or `localhost`, `[::1]`) as a socket address.
fn local_addr(base: &str) -> Option<SocketAddr> {
    let rest = base.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.replacen("localhost", "127.0.0.1", 1);
    let addr: SocketAddr = authority.parse().ok()?;
    addr.ip().is_loopback().then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_bases_can_be_served() {
        assert_eq!(
            local_addr("http://127.0.0.1:18790"),
            "127.0.0.1:18790".parse().ok()
        );
        assert_eq!(
            local_addr("http://localhost:9/x"),
            "127.0.0.1:9".parse().ok()
        );
        assert_eq!(local_addr("https://graph.facebook.com"), None);
        assert_eq!(local_addr("http://10.0.0.1:80"), None);
    }
}
