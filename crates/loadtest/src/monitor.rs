//! What the replicas and the load generator itself use while the run goes: resident memory and
//! CPU time from `/proc` (replica pids from the cluster's state file, re-read every second, so a
//! replica restarted by chaos is followed), and the turns each replica handled (the counters
//! replicas publish in `oc:metrics:gateway:{id}`).

use clawgate_cluster::state::ClusterState;
use clawgate_gateway::state::observe;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One replica over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaUse {
    /// Replica id.
    pub id: String,
    /// Turns it finished during the run (from its published counter; restarts accounted for).
    pub answered: u64,
    /// Largest resident memory seen, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// CPU time used during the run over wall time, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Times its pid changed during the run (a restart).
    pub restarts: u32,
}

/// The load generator's own use, to show it was not the bottleneck.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadgenUse {
    /// CPU time over wall time, percent of one core.
    pub cpu_percent: f64,
    /// Largest resident memory, bytes.
    pub peak_rss_bytes: u64,
    /// Cores of this machine (the stack shares them).
    pub cores: usize,
}

#[derive(Default)]
struct Tracked {
    pid: Option<u32>,
    peak_rss: Option<u64>,
    /// CPU ticks of earlier pids, plus the current pid's at its first sample.
    cpu_ticks: u64,
    first_ticks: Option<u64>,
    last_ticks: u64,
    handled_total: u64,
    handled_last: Option<u64>,
    restarts: u32,
}

/// Samples every second until stopped.
pub struct Monitor {
    state_dir: Option<PathBuf>,
    replicas: Mutex<BTreeMap<String, Tracked>>,
    own: Mutex<(u64, Option<u64>, u64)>,
    started: Instant,
}

impl Monitor {
    /// Watches the cluster in `state_dir` (none: only the load generator).
    pub fn new(state_dir: Option<PathBuf>) -> Arc<Monitor> {
        Arc::new(Monitor {
            state_dir,
            replicas: Mutex::new(BTreeMap::new()),
            own: Mutex::new((0, None, 0)),
            started: Instant::now(),
        })
    }

    /// Samples now and then every second until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut redis: Option<redis::aio::MultiplexedConnection> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.sample(&mut redis).await;
        }
        self.sample(&mut redis).await;
    }

    async fn sample(&self, redis: &mut Option<redis::aio::MultiplexedConnection>) {
        self.sample_self();
        let Some(dir) = &self.state_dir else {
            return;
        };
        let Ok(state) = ClusterState::read(dir) else {
            return;
        };
        if redis.is_none() {
            *redis = connect(&state.redis.url).await;
        }
        let mut handled = BTreeMap::new();
        let mut broken = false;
        if let Some(conn) = redis.as_mut() {
            for replica in &state.replicas {
                let value = observe::turns_handled(conn, &replica.id).await;
                match value {
                    Ok(v) => {
                        handled.insert(replica.id.clone(), v);
                    }
                    Err(_) => {
                        // Reconnect at the next sample (Redis may be restarting).
                        broken = true;
                        break;
                    }
                }
            }
        }
        if broken {
            *redis = None;
        }
        let mut tracked = self
            .replicas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for replica in &state.replicas {
            let t = tracked.entry(replica.id.clone()).or_default();
            if let Some(pid) = replica.process.pid {
                if t.pid.is_some_and(|old| old != pid) {
                    t.restarts += 1;
                    t.cpu_ticks += t.last_ticks.saturating_sub(t.first_ticks.unwrap_or(0));
                    t.first_ticks = None;
                }
                t.pid = Some(pid);
                if let Some((rss, ticks)) = proc_usage(pid) {
                    t.peak_rss = Some(t.peak_rss.unwrap_or(0).max(rss));
                    t.first_ticks.get_or_insert(ticks);
                    t.last_ticks = ticks;
                }
            }
            if let Some(Some(now)) = handled.get(&replica.id) {
                match t.handled_last {
                    // A restarted replica counts from zero again.
                    Some(last) if *now >= last => t.handled_total += now - last,
                    Some(_) => t.handled_total += now,
                    None => {}
                }
                t.handled_last = Some(*now);
            }
        }
    }

    fn sample_self(&self) {
        if let Some((rss, ticks)) = proc_usage(std::process::id()) {
            let mut own = self
                .own
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            own.0 = own.0.max(rss);
            own.1.get_or_insert(ticks);
            own.2 = ticks;
        }
    }

    /// The replicas' figures so far.
    pub fn replicas(&self) -> Vec<ReplicaUse> {
        let wall = self.started.elapsed().as_secs_f64().max(0.001);
        let hz = clock_ticks();
        self.replicas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, t)| {
                let ticks = t.cpu_ticks + t.last_ticks.saturating_sub(t.first_ticks.unwrap_or(0));
                ReplicaUse {
                    id: id.clone(),
                    answered: t.handled_total,
                    peak_rss_bytes: t.peak_rss,
                    cpu_percent: t
                        .first_ticks
                        .map(|_| round1(100.0 * ticks as f64 / hz / wall)),
                    restarts: t.restarts,
                }
            })
            .collect()
    }

    /// The load generator's figures so far.
    pub fn loadgen(&self) -> LoadgenUse {
        let own = self
            .own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wall = self.started.elapsed().as_secs_f64().max(0.001);
        let ticks = own.2.saturating_sub(own.1.unwrap_or(own.2));
        LoadgenUse {
            cpu_percent: round1(100.0 * ticks as f64 / clock_ticks() / wall),
            peak_rss_bytes: own.0,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// The cluster's Redis primary (found through the sentinels of a Sentinel group).
async fn connect(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    clawgate_cluster::supervisor::redis_connection(url)
        .await
        .map(|(conn, _)| conn)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Clock ticks per second of `/proc/*/stat` CPU times.
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Resident memory (bytes) and user + system CPU ticks of `pid`, from `/proc`.
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss_kib * 1024, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_measured() {
        let (rss, _ticks) = proc_usage(std::process::id()).unwrap_or_default();
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(clock_ticks() > 0.0);
    }
}
