//! Failures injected during a run, on a cluster started by `clawgate cluster up` (its state
//! file names the pids) and on the mock LLM (its `/control`):
//! `kill-replica[:N]@30s` (SIGKILL; the supervisor restarts it), `freeze-replica[:N]@30s-40s`
//! (SIGSTOP, then SIGCONT), `redis-restart@60s` (SIGTERM: a clean stop, AOF flushed, restarted),
//! `redis-kill@60s` (SIGKILL), `llm-hang@90s-120s` and `llm-error@90s-120s` (the mock model hangs
//! or answers 500 in that window). Every event is recorded with what it did, for the report.

use crate::options::{PlanError, parse_duration};
use clawgate_cluster::state::ClusterState;
use nix::sys::signal::Signal;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to break.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL replica number N (1-based; default 1).
    KillReplica(usize),
    /// SIGSTOP replica N, SIGCONT at the window's end.
    FreezeReplica(usize),
    /// SIGTERM the cluster's Redis (the supervisor restarts it).
    RedisRestart,
    /// SIGKILL the cluster's Redis.
    RedisKill,
    /// The mock model hangs for the window.
    LlmHang,
    /// The mock model answers HTTP 500 for the window.
    LlmError,
}

/// One fault at a time offset from the run's start (and its end, for windows).
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosEvent {
    /// The fault.
    pub fault: Fault,
    /// When it starts.
    pub at: Duration,
    /// When a window fault ends.
    pub until: Option<Duration>,
    /// As written.
    pub spec: String,
}

/// What an event did, for the report and the chart.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosRecord {
    /// As written.
    pub event: String,
    /// Seconds after the start it took effect.
    pub at_s: f64,
    /// Seconds after the start a window ended.
    pub until_s: Option<f64>,
    /// What happened (`killed replica-1 (pid 4242)`, or why it could not act).
    pub outcome: String,
}

/// `kill-replica@30s,redis-restart@60s,llm-hang@90s-120s`.
pub fn parse(text: &str) -> Result<Vec<ChaosEvent>, PlanError> {
    let mut events = Vec::new();
    for spec in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let error = |message: String| PlanError::new("--chaos", format!("{spec:?}: {message}"));
        let (what, when) = spec
            .split_once('@')
            .ok_or_else(|| error("expected FAULT@TIME, e.g. kill-replica@30s".into()))?;
        let (name, number) = match what.split_once(':') {
            Some((name, n)) => (
                name,
                Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| error(format!("expected a replica number, found {n:?}")))?,
                ),
            ),
            None => (what, None),
        };
        let (at, until) = match when.split_once('-') {
            Some((a, b)) => (
                parse_duration(a).map_err(error)?,
                Some(parse_duration(b).map_err(error)?),
            ),
            None => (parse_duration(when).map_err(error)?, None),
        };
        let fault = match name {
            "kill-replica" => Fault::KillReplica(number.unwrap_or(1)),
            "freeze-replica" => Fault::FreezeReplica(number.unwrap_or(1)),
            "redis-restart" => Fault::RedisRestart,
            "redis-kill" => Fault::RedisKill,
            "llm-hang" => Fault::LlmHang,
            "llm-error" => Fault::LlmError,
            other => {
                return Err(error(format!(
                    "unknown fault {other:?}; expected kill-replica[:N], freeze-replica[:N], redis-restart, redis-kill, llm-hang, llm-error"
                )));
            }
        };
        let windowed = matches!(
            fault,
            Fault::FreezeReplica(_) | Fault::LlmHang | Fault::LlmError
        );
        match (windowed, until) {
            (true, None) => return Err(error("expected a window, e.g. @90s-120s".into())),
            (false, Some(_)) => return Err(error("expected one time, e.g. @30s".into())),
            (true, Some(end)) if end <= at => {
                return Err(error("the window ends before it starts".into()));
            }
            _ => {}
        }
        events.push(ChaosEvent {
            fault,
            at,
            until,
            spec: spec.to_string(),
        });
    }
    Ok(events)
}

/// Acts on the cluster and the mock model.
#[derive(Clone)]
pub struct ChaosMonkey {
    state_dir: Option<PathBuf>,
    llm: Option<String>,
    http: reqwest::Client,
}

impl ChaosMonkey {
    /// Over the cluster in `state_dir` and the mock model at `llm`.
    pub fn new(state_dir: Option<PathBuf>, llm: Option<String>, http: reqwest::Client) -> Self {
        ChaosMonkey {
            state_dir,
            llm,
            http,
        }
    }

    /// What a plan's events need that is missing, as an error to show before the run starts.
    pub fn check(&self, events: &[ChaosEvent]) -> Result<(), PlanError> {
        for event in events {
            let needs_cluster = !matches!(event.fault, Fault::LlmHang | Fault::LlmError);
            if needs_cluster
                && self
                    .state_dir
                    .as_deref()
                    .is_none_or(|d| ClusterState::read(d).is_err())
            {
                return Err(PlanError::new(
                    "--chaos",
                    format!(
                        "{} needs a cluster started by `clawgate cluster up` (its --state-dir)",
                        event.spec
                    ),
                ));
            }
            if !needs_cluster && self.llm.is_none() {
                return Err(PlanError::new(
                    "--chaos",
                    format!("{} needs the mock LLM's URL (--llm)", event.spec),
                ));
            }
        }
        Ok(())
    }

    /// Starts `event`; returns what it did.
    pub async fn start(&self, event: &ChaosEvent) -> String {
        match &event.fault {
            Fault::KillReplica(n) => self.signal_replica(*n, Signal::SIGKILL, "killed"),
            Fault::FreezeReplica(n) => self.signal_replica(*n, Signal::SIGSTOP, "froze"),
            Fault::RedisRestart => {
                self.signal_redis(Signal::SIGTERM, "stopped (SIGTERM)")
                    .await
            }
            Fault::RedisKill => self.signal_redis(Signal::SIGKILL, "killed").await,
            Fault::LlmHang => self.llm_mode("hang").await,
            Fault::LlmError => self.llm_mode("error").await,
        }
    }

    /// Ends a window `event`; returns what it did.
    pub async fn end(&self, event: &ChaosEvent) -> String {
        match &event.fault {
            Fault::FreezeReplica(n) => self.signal_replica(*n, Signal::SIGCONT, "thawed"),
            Fault::LlmHang | Fault::LlmError => self.llm_mode("ok").await,
            _ => String::new(),
        }
    }

    fn state(&self) -> Result<ClusterState, String> {
        let dir = self.state_dir.as_deref().unwrap_or(Path::new("."));
        ClusterState::read(dir).map_err(|e| format!("cannot read the cluster state: {e}"))
    }

    fn signal_replica(&self, n: usize, signal: Signal, verb: &str) -> String {
        let state = match self.state() {
            Ok(state) => state,
            Err(e) => return e,
        };
        let Some(replica) = state.replicas.get(n - 1) else {
            return format!("no replica {n} (the cluster has {})", state.replicas.len());
        };
        match replica.process.pid {
            Some(pid) => match send(pid, signal) {
                Ok(()) => format!("{verb} {} (pid {pid})", replica.id),
                Err(e) => format!("could not signal {} (pid {pid}): {e}", replica.id),
            },
            None => format!("{} is not running", replica.id),
        }
    }

    /// Signals the Redis the replicas write to: the lone server, or a Sentinel group's primary
    /// (whose loss the sentinels answer with a failover).
    async fn signal_redis(&self, signal: Signal, verb: &str) -> String {
        let state = match self.state() {
            Ok(state) => state,
            Err(e) => return e,
        };
        match clawgate_cluster::redis_group::primary_process(&state.redis).await {
            Some((name, pid)) => match send(pid, signal) {
                Ok(()) => format!("Redis {name} {verb} (pid {pid}); the supervisor restarts it"),
                Err(e) => format!("could not signal Redis {name} (pid {pid}): {e}"),
            },
            None => "the cluster does not run its own Redis (or no primary answers)".into(),
        }
    }

    async fn llm_mode(&self, mode: &str) -> String {
        let Some(base) = &self.llm else {
            return "no --llm given".into();
        };
        let url = format!("{}/control", base.trim_end_matches('/'));
        match self
            .http
            .post(&url)
            .json(&serde_json::json!({"mode": mode}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => format!("mock LLM mode {mode}"),
            Ok(r) => format!("mock LLM refused mode {mode}: HTTP {}", r.status().as_u16()),
            Err(_) => format!("cannot reach the mock LLM at {url}"),
        }
    }
}

fn send(pid: u32, signal: Signal) -> Result<(), nix::Error> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_specs_parse_and_bad_ones_say_why() {
        let events = parse("kill-replica@30s,redis-restart@60s,llm-hang@90s-120s")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].fault, Fault::KillReplica(1));
        assert_eq!(events[2].until, Some(Duration::from_secs(120)));
        assert_eq!(
            parse("kill-replica:2@5s").unwrap_or_default()[0].fault,
            Fault::KillReplica(2)
        );
        for bad in [
            "kill-replica",
            "llm-hang@10s",
            "melt@1s",
            "kill-replica:0@1s",
            "llm-error@9s-3s",
        ] {
            let error = parse(bad).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains("--chaos"), "{bad}: {error}");
        }
    }
}
