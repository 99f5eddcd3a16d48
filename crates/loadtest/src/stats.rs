//! What a run counts while it runs: messages by outcome, latency histograms (HDR, so the tail is
//! exact at any rate), a per-second timeline for the chart, and per-channel figures. Shared by
//! every customer task; each update is an atomic add or a short lock.

use crate::plan::Channel;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Highest latency recorded, milliseconds (longer ones are clamped): ten minutes.
const MAX_MS: u64 = 600_000;

/// Microseconds from 1 µs to ten minutes, three significant figures.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    // Creation fails only for invalid bounds (low < 1, high < 2 × low, sigfig > 5); these
    // constants are valid.
    Histogram::new_with_bounds(1, MAX_MS * 1000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: u64,
}

/// A latency histogram kept in microseconds.
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Latency {
        Latency(Mutex::new(histogram()))
    }
}

impl Latency {
    /// Records one sample.
    pub fn record(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MS * 1000);
        let mut h = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = h.record(micros);
    }

    /// Its percentiles in milliseconds.
    pub fn percentiles(&self) -> Percentiles {
        let h = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        percentiles(&h)
    }

    /// The 99th percentile so far, milliseconds (for the progress line).
    pub fn p99(&self) -> f64 {
        self.percentiles().p99
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |micros: u64| (micros as f64 / 1000.0 * 100.0).round() / 100.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        count: h.len(),
    }
}

/// One second of the run.
#[derive(Default)]
struct Second {
    sent: u64,
    answered: u64,
    errors: u64,
    e2e: Option<Histogram<u64>>,
}

/// One second of the run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    /// Seconds since the start.
    pub t: u64,
    /// Messages sent in that second.
    pub sent: u64,
    /// Replies received in that second.
    pub answered: u64,
    /// Failed attempts in that second.
    pub errors: u64,
    /// Median end-to-end latency of those replies, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of those replies, milliseconds.
    pub p99_ms: f64,
}

/// Per-channel counts.
#[derive(Default)]
struct ChannelStats {
    sent: AtomicU64,
    answered: AtomicU64,
    e2e: Latency,
    ack: Latency,
}

/// Per-channel figures, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelReport {
    /// Messages sent.
    pub sent: u64,
    /// Replies received.
    pub answered: u64,
    /// End-to-end latency.
    pub e2e_ms: Percentiles,
    /// Acknowledgement latency: webhooks answer once the message is durable; web chat answers
    /// with the reply (or a 202 after its wait).
    pub ack_ms: Percentiles,
}

/// Everything a run counts.
pub struct Stats {
    started: Instant,
    /// Messages sent (first attempt).
    pub sent: AtomicU64,
    /// Messages that got their reply.
    pub answered: AtomicU64,
    /// Failed HTTP attempts (each retry that failed counts).
    pub errors: AtomicU64,
    /// Messages the gateway never acknowledged, whatever the retries.
    pub unaccepted: AtomicU64,
    /// Replies received more than once, or with no message waiting for them.
    pub duplicated: AtomicU64,
    /// Replies that did not show the conversation's context.
    pub wrong_context: AtomicU64,
    /// Replies whose context could not be checked (no model and no hand-over in them).
    pub unverified: AtomicU64,
    /// Messages sent and not yet answered.
    pub in_flight: AtomicU64,
    /// From sending a message to its reply.
    pub e2e: Latency,
    /// From sending a message to the gateway's acknowledgement (webhook 200; web-chat response).
    pub ack: Latency,
    /// End-to-end minus the mock model's latency, for replies the model wrote.
    pub overhead: Latency,
    timeline: Mutex<Vec<Second>>,
    channels: BTreeMap<Channel, ChannelStats>,
    /// Replies per replica, as the web-chat answers name them.
    by_replica: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// Counting from now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unaccepted: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            wrong_context: AtomicU64::new(0),
            unverified: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            e2e: Latency::default(),
            ack: Latency::default(),
            overhead: Latency::default(),
            timeline: Mutex::new(Vec::new()),
            channels: Channel::ALL
                .into_iter()
                .map(|c| (c, ChannelStats::default()))
                .collect(),
            by_replica: Mutex::new(BTreeMap::new()),
        }
    }

    fn second(&self, at: Instant, update: impl FnOnce(&mut Second)) {
        let index = at.saturating_duration_since(self.started).as_secs() as usize;
        let mut timeline = self
            .timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if timeline.len() <= index {
            timeline.resize_with(index + 1, Second::default);
        }
        update(&mut timeline[index]);
    }

    /// A message was sent (its first attempt).
    pub fn on_sent(&self, channel: Channel) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.channels.get(&channel) {
            c.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.second(Instant::now(), |s| s.sent += 1);
    }

    /// An attempt failed.
    pub fn on_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.second(Instant::now(), |s| s.errors += 1);
    }

    /// The gateway acknowledged a message after `latency`.
    pub fn on_ack(&self, channel: Channel, latency: Duration) {
        self.ack.record(latency);
        if let Some(c) = self.channels.get(&channel) {
            c.ack.record(latency);
        }
    }

    /// A message's wait ended without a reply.
    pub fn on_given_up(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A message got its reply after `e2e`.
    pub fn on_reply(&self, channel: Channel, e2e: Duration, replica: Option<&str>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.e2e.record(e2e);
        if let Some(c) = self.channels.get(&channel) {
            c.answered.fetch_add(1, Ordering::Relaxed);
            c.e2e.record(e2e);
        }
        if let Some(replica) = replica {
            *self
                .by_replica
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(replica.to_string())
                .or_default() += 1;
        }
        let micros = (e2e.as_micros() as u64).clamp(1, MAX_MS * 1000);
        self.second(Instant::now(), |s| {
            s.answered += 1;
            let _ = s.e2e.get_or_insert_with(histogram).record(micros);
        });
    }

    /// The per-second timeline.
    pub fn timeline(&self) -> Vec<SecondReport> {
        let timeline = self
            .timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        timeline
            .iter()
            .enumerate()
            .map(|(t, s)| {
                let p = s.e2e.as_ref().map(percentiles).unwrap_or_default();
                SecondReport {
                    t: t as u64,
                    sent: s.sent,
                    answered: s.answered,
                    errors: s.errors,
                    p50_ms: p.p50,
                    p99_ms: p.p99,
                }
            })
            .collect()
    }

    /// Per-channel figures, for channels that carried traffic.
    pub fn by_channel(&self) -> BTreeMap<String, ChannelReport> {
        self.channels
            .iter()
            .filter(|(_, c)| c.sent.load(Ordering::Relaxed) > 0)
            .map(|(channel, c)| {
                (
                    channel.as_str().to_string(),
                    ChannelReport {
                        sent: c.sent.load(Ordering::Relaxed),
                        answered: c.answered.load(Ordering::Relaxed),
                        e2e_ms: c.e2e.percentiles(),
                        ack_ms: c.ack.percentiles(),
                    },
                )
            })
            .collect()
    }

    /// Web-chat replies by the replica that produced them.
    pub fn by_replica(&self) -> BTreeMap<String, u64> {
        self.by_replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}
