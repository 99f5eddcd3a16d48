//! A provider's HTTP connections: which client carries the next call.
//!
//! A turn waiting for the model holds its call open for seconds. Over HTTP/1.1 each such call
//! holds a connection of its own, and hyper's HTTP/1.1 connection costs about 26 KiB (read and
//! write buffers, dispatch channel): most of what a waiting turn weighs. Over HTTP/2 calls share
//! a connection as streams for a few KiB each, but hyper keeps one HTTP/2 connection per host
//! and makes calls beyond the server's stream limit wait for a free stream. So HTTP/2 calls are
//! spread over lanes: each lane is a client with its own connection and carries at most
//! `streamsPerConnection` calls at once; when every lane is full a new one is opened. Lanes are
//! never closed (at most `workers.concurrency / streamsPerConnection` of them); an idle lane's
//! connection closes after the pool's idle timeout and reopens on the next call.

use crate::config::{HttpVersion, ProviderHttp};
use crate::http_client;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The clients that carry one provider's calls.
pub struct Connections {
    /// The replica's shared HTTP/1.1 client, for calls that go over HTTP/1.1 (its pool opens a
    /// connection per call in flight, so it needs no lanes).
    shared: reqwest::Client,
    /// `None` for HTTP/1.1; else whether HTTP/2 is spoken without negotiation (h2c).
    http2: Option<PriorKnowledge>,
    streams_per_connection: usize,
    lanes: Mutex<Vec<Arc<Lane>>>,
}

/// Whether an HTTP/2 lane starts speaking HTTP/2 at once or lets TLS (ALPN) decide.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PriorKnowledge {
    Yes,
    Negotiated,
}

/// One client, with its own connection, and the calls it carries now.
struct Lane {
    client: reqwest::Client,
    in_flight: AtomicUsize,
}

/// A call's place on a lane, given back when dropped.
pub struct Carried {
    lane: Option<Arc<Lane>>,
}

impl Drop for Carried {
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Connections {
    /// The connections for a provider at `endpoint` configured with `http`.
    pub fn new(http: &ProviderHttp, endpoint: &str, shared: &reqwest::Client) -> Connections {
        Connections {
            shared: shared.clone(),
            http2: http2(http, endpoint),
            streams_per_connection: http.streams_per_connection.max(1),
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// How calls to `endpoint` configured with `http` travel, in words (for `config check`).
    pub fn describe(http: &ProviderHttp, endpoint: &str) -> String {
        let per_connection = http.streams_per_connection;
        match http2(http, endpoint) {
            None => "HTTP/1.1".to_string(),
            Some(PriorKnowledge::Yes) => format!("HTTP/2, {per_connection} calls per connection"),
            Some(PriorKnowledge::Negotiated) => format!(
                "HTTP/2 if TLS negotiates it ({per_connection} calls per connection), else HTTP/1.1"
            ),
        }
    }

    /// The client for the next call, and its place on that client's lane (hold it until the
    /// answer is read).
    pub fn carry(&self) -> (reqwest::Client, Carried) {
        let Some(prior_knowledge) = self.http2 else {
            return (self.shared.clone(), Carried { lane: None });
        };
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let free = lanes
            .iter()
            .find(|lane| lane.in_flight.load(Ordering::Relaxed) < self.streams_per_connection)
            .cloned();
        let lane = match free {
            Some(lane) => lane,
            None => match http_client::build_http2(prior_knowledge == PriorKnowledge::Yes) {
                Ok(client) => {
                    let lane = Arc::new(Lane {
                        client,
                        in_flight: AtomicUsize::new(0),
                    });
                    lanes.push(lane.clone());
                    lane
                }
                Err(e) => {
                    // Cannot happen short of a broken TLS setup; the call still goes out.
                    tracing::warn!(error = %e, "cannot build an HTTP/2 client; using HTTP/1.1");
                    return (self.shared.clone(), Carried { lane: None });
                }
            },
        };
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        (lane.client.clone(), Carried { lane: Some(lane) })
    }

    /// Lanes opened so far (0 over HTTP/1.1).
    pub fn lanes(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Whether calls to `endpoint` go over HTTP/2, and how it is agreed on; `None` for HTTP/1.1.
fn http2(http: &ProviderHttp, endpoint: &str) -> Option<PriorKnowledge> {
    match http.version {
        HttpVersion::Http1 => None,
        HttpVersion::Http2 => Some(PriorKnowledge::Yes),
        // Only TLS can negotiate HTTP/2; a plain http:// endpoint gets HTTP/1.1.
        HttpVersion::Auto => reqwest::Url::parse(endpoint)
            .is_ok_and(|url| url.scheme() == "https")
            .then_some(PriorKnowledge::Negotiated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(version: HttpVersion, endpoint: &str) -> Connections {
        let http = ProviderHttp {
            version,
            streams_per_connection: 100,
        };
        let shared = http_client::build().unwrap_or_default();
        Connections::new(&http, endpoint, &shared)
    }

    #[test]
    fn http2_calls_fill_a_lane_before_the_next_opens_and_reuse_freed_places() {
        let connections = connections(HttpVersion::Http2, "http://127.0.0.1:1/v1");
        let mut held: Vec<Carried> = (0..250).map(|_| connections.carry().1).collect();
        assert_eq!(connections.lanes(), 3, "250 calls at 100 per connection");
        // Calls that finish free their places: the next ones go there, no new lane.
        held.truncate(100);
        held.extend((0..150).map(|_| connections.carry().1));
        assert_eq!(connections.lanes(), 3);
        held.extend((0..50).map(|_| connections.carry().1));
        assert_eq!(connections.lanes(), 3, "three full lanes");
        held.push(connections.carry().1);
        assert_eq!(
            connections.lanes(),
            4,
            "the 301st call at once opens a lane"
        );
    }

    #[test]
    fn http1_and_plain_http_auto_use_the_shared_client_without_lanes() {
        for (version, endpoint) in [
            (HttpVersion::Http1, "https://api.example.com/v1"),
            (HttpVersion::Auto, "http://ollama:11434"),
        ] {
            let connections = connections(version, endpoint);
            let _held: Vec<Carried> = (0..300).map(|_| connections.carry().1).collect();
            assert_eq!(connections.lanes(), 0, "{version:?} {endpoint}");
        }
        let negotiated = connections(HttpVersion::Auto, "HTTPS://api.example.com/v1");
        let _held = negotiated.carry();
        assert_eq!(negotiated.lanes(), 1, "https may negotiate HTTP/2");
    }
}
