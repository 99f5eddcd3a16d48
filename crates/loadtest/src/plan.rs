//! What a load-test run does: how many customers, for how long, on which channels, with which
//! inquiries, and what it injects. Parsed from the command line's strings here, so the CLI stays
//! a thin layer and errors name the option and what was expected.

use crate::chaos::ChaosEvent;
pub use crate::options::{PlanError, parse_duration};
use std::path::PathBuf;
use std::time::Duration;

/// A customer channel of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// `POST /v1/webchat/messages`; the reply is in the response (or fetched after a 202).
    Webchat,
    /// Signed Cloud API webhooks; replies arrive at the load test's fake Graph API.
    Whatsapp,
    /// Bot API webhooks with the secret token; replies arrive at its fake Bot API.
    Telegram,
}

impl Channel {
    /// All channels, in report order.
    pub const ALL: [Channel; 3] = [Channel::Webchat, Channel::Whatsapp, Channel::Telegram];

    /// Its name in options and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webchat => "webchat",
            Channel::Whatsapp => "whatsapp",
            Channel::Telegram => "telegram",
        }
    }
}

/// What a conversation is about, in VeloCity's traffic mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Inquiry {
    /// "Where is my parcel?" with a tracking number (55 % in the seed).
    Tracking,
    /// Delivery windows and weekend delivery for a postal code (30 %).
    Estimates,
    /// A damaged or lost parcel: handed to a dispatcher (15 %).
    Complaints,
}

impl Inquiry {
    /// All kinds, in report order.
    pub const ALL: [Inquiry; 3] = [Inquiry::Tracking, Inquiry::Estimates, Inquiry::Complaints];

    /// Its name in options and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Inquiry::Tracking => "tracking",
            Inquiry::Estimates => "estimates",
            Inquiry::Complaints => "complaints",
        }
    }
}

/// Weights of a random choice among `T`s (need not sum to 100).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights<T>(pub Vec<(T, u32)>);

impl<T: Copy> Weights<T> {
    /// One choice, by weight, from `roll` in `0.0..1.0`.
    pub fn pick(&self, roll: f64) -> Option<T> {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut point = roll * f64::from(total);
        for (item, weight) in &self.0 {
            point -= f64::from(*weight);
            if point < 0.0 {
                return Some(*item);
            }
        }
        self.0.iter().rev().find(|(_, w)| *w > 0).map(|(t, _)| *t)
    }

    /// The share of `item` in percent.
    pub fn percent(&self, item: T) -> f64
    where
        T: PartialEq,
    {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let weight: u32 = self
            .0
            .iter()
            .filter(|(t, _)| *t == item)
            .map(|(_, w)| w)
            .sum();
        if total == 0 {
            0.0
        } else {
            100.0 * f64::from(weight) / f64::from(total)
        }
    }
}

/// Faults the load test's own fake platform injects, to prove its checks catch them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlatformFaults {
    /// Replies accepted with 200 but thrown away (reported as lost).
    pub swallow: u64,
    /// Replies recorded twice (reported as duplicated).
    pub duplicate: u64,
}

/// One run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Base URL of the gateway (nginx in front of a cluster, or one replica).
    pub target: String,
    /// Customers writing at the same time once the ramp is done.
    pub customers: usize,
    /// How long customers keep starting messages (`None`: until `messages` are sent).
    pub duration: Option<Duration>,
    /// Stop after this many messages (`None`: until `duration` is over).
    pub messages: Option<u64>,
    /// Customers start evenly over this time.
    pub ramp: Duration,
    /// Messages a customer sends in one conversation (each answered: twice as many in all).
    pub turns: usize,
    /// Pause between a reply and the customer's next message, uniformly in this range.
    pub think: (Duration, Duration),
    /// Channel shares; `None` = every channel the gateway's config enables.
    pub channels: Option<Weights<Channel>>,
    /// Inquiry mix (default VeloCity's: 55 % tracking, 30 % estimates, 15 % complaints).
    pub mix: Weights<Inquiry>,
    /// How long a customer waits for a reply before the message counts as lost.
    pub reply_timeout: Duration,
    /// Failures to inject during the run (needs a cluster started by `clawgate cluster up`).
    pub chaos: Vec<ChaosEvent>,
    /// The mock LLM's base URL (for `llm-*` chaos and `llm_latency`).
    pub llm: Option<String>,
    /// Model latency to set on the mock LLM for the run (the seed's shape: 1,500 ms).
    pub llm_latency: Option<Duration>,
    /// The cluster's state directory (replica pids and ports, Redis, the config file).
    pub state_dir: Option<PathBuf>,
    /// The gateway's config file (channel credentials), when not found in the state directory.
    pub config: Option<PathBuf>,
    /// Faults for the fake platform.
    pub faults: PlatformFaults,
    /// Draws a live progress line on stderr.
    pub progress: bool,
}

impl Plan {
    /// A plan with the defaults for everything but the target.
    pub fn new(target: &str) -> Plan {
        Plan {
            target: target.trim_end_matches('/').to_string(),
            customers: 100,
            duration: Some(Duration::from_secs(20)),
            messages: None,
            ramp: Duration::from_secs(5),
            turns: 3,
            think: (Duration::from_secs(2), Duration::from_secs(5)),
            channels: None,
            mix: Weights(vec![
                (Inquiry::Tracking, 55),
                (Inquiry::Estimates, 30),
                (Inquiry::Complaints, 15),
            ]),
            reply_timeout: Duration::from_secs(60),
            chaos: Vec::new(),
            llm: None,
            llm_latency: None,
            state_dir: None,
            config: None,
            faults: PlatformFaults::default(),
            progress: false,
        }
    }
}

/// `2s..5s` or a single duration (no spread).
pub fn parse_range(text: &str) -> Result<(Duration, Duration), String> {
    match text.split_once("..") {
        Some((low, high)) => {
            let (low, high) = (parse_duration(low)?, parse_duration(high)?);
            if low > high {
                return Err(format!("the range {text:?} ends before it starts"));
            }
            Ok((low, high))
        }
        None => {
            let d = parse_duration(text)?;
            Ok((d, d))
        }
    }
}

/// `webchat=30,whatsapp=40,telegram=30` (weights, any scale).
pub fn parse_channels(text: &str) -> Result<Weights<Channel>, PlanError> {
    parse_weights(text, "--channels", &Channel::ALL, Channel::as_str)
}

/// `tracking=55,estimates=30,complaints=15`.
pub fn parse_mix(text: &str) -> Result<Weights<Inquiry>, PlanError> {
    parse_weights(text, "--mix", &Inquiry::ALL, Inquiry::as_str)
}

fn parse_weights<T: Copy>(
    text: &str,
    option: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Weights<T>, PlanError> {
    let names: Vec<&str> = all.iter().map(|t| name(*t)).collect();
    let mut weights = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, "1"));
        let item = all
            .iter()
            .copied()
            .find(|t| name(*t) == key.trim())
            .ok_or_else(|| {
                PlanError::new(
                    option,
                    format!("unknown name {key:?}; expected one of {}", names.join(", ")),
                )
            })?;
        let weight: u32 = value.trim().parse().map_err(|_| {
            PlanError::new(
                option,
                format!("expected {key}=<whole number>, found {part:?}"),
            )
        })?;
        weights.push((item, weight));
    }
    if weights.iter().all(|(_, w)| *w == 0) {
        return Err(PlanError::new(
            option,
            format!(
                "expected at least one of {} with a weight above 0",
                names.join(", ")
            ),
        ));
    }
    Ok(Weights(weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_ranges_and_weights_parse_with_clear_errors() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_range("2s..5s"),
            Ok((Duration::from_secs(2), Duration::from_secs(5)))
        );
        assert!(parse_range("5s..2s").is_err());
        let shares = parse_channels("webchat=1,whatsapp=3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shares.pick(0.1), Some(Channel::Webchat));
        assert_eq!(shares.pick(0.5), Some(Channel::Whatsapp));
        assert_eq!(shares.percent(Channel::Whatsapp), 75.0);
        let error = parse_channels("sms=1").map(|_| ()).unwrap_err().to_string();
        assert!(
            error.contains("--channels") && error.contains("webchat"),
            "{error}"
        );
        assert!(parse_mix("tracking=0").is_err());
    }
}
