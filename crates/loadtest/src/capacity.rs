//! Capacity: how many concurrent customers a cluster holds ([`find`]: raise the load step by step
//! with the seed's traffic shape until the gateway's p99 overhead or the error rate crosses a
//! limit), and the seed's planning table computed from such a measurement ([`table`]): replicas,
//! concurrent users, requests/s, memory, CPU, and how many replicas a peak needs with one
//! replica's failure absorbed.

use crate::plan::Plan;
use crate::report::Report;
use crate::run::{RunError, Setup, run_with};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// How the search steps and what "held" means.
#[derive(Debug, Clone)]
pub struct Search {
    /// First level, customers.
    pub start: usize,
    /// Added per level.
    pub step: usize,
    /// Last level tried.
    pub max: usize,
    /// How long each level runs (after its ramp).
    pub step_duration: Duration,
    /// A level holds while the p99 of (end to end − model latency) stays at or under this.
    pub max_p99_overhead: Duration,
    /// … and lost plus refused messages stay at or under this share.
    pub max_error_rate: f64,
}

impl Default for Search {
    fn default() -> Search {
        Search {
            start: 500,
            step: 500,
            max: 10_000,
            step_duration: Duration::from_secs(30),
            max_p99_overhead: Duration::from_millis(50),
            max_error_rate: 0.001,
        }
    }
}

/// One level of the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Level {
    /// Customers at once.
    pub customers: usize,
    /// Whether it held.
    pub held: bool,
    /// Why not.
    pub why: Option<String>,
    /// Replies per second.
    pub throughput_per_s: f64,
    /// p99 of end to end minus the model's latency, ms.
    pub p99_overhead_ms: f64,
    /// p99 end to end, ms.
    pub p99_e2e_ms: f64,
    /// Lost and refused over sent.
    pub error_rate: f64,
    /// Largest replica RSS, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Mean replica CPU, percent of one core.
    pub replica_cpu_percent: Option<f64>,
    /// The load generator's CPU, percent of one core.
    pub loadgen_cpu_percent: f64,
}

/// What one replica carries at the highest level that held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PerReplica {
    /// Concurrent customers.
    pub customers: f64,
    /// Replies per second.
    pub requests_per_s: f64,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: u64,
    /// CPU, percent of one core.
    pub cpu_percent: f64,
}

/// The search's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityReport {
    /// Every level tried, in order.
    pub levels: Vec<Level>,
    /// The highest level that held.
    pub held_customers: Option<usize>,
    /// Replicas serving during the search.
    pub replicas: usize,
    /// One replica's share at that level.
    pub per_replica: Option<PerReplica>,
    /// The model's latency during the search, ms.
    pub llm_latency_ms: u64,
    /// The overhead limit, ms.
    pub max_p99_overhead_ms: f64,
    /// The error-rate limit.
    pub max_error_rate: f64,
    /// How the figures were made.
    pub note: String,
}

impl CapacityReport {
    /// The levels tried as a Markdown table, and the verdict, as `loadtest --find-capacity`
    /// prints them.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| customers | held | replies/s | p99 overhead | p99 e2e | errors | peak replica RSS | replica CPU | load generator CPU |\n\
             | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for l in &self.levels {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} ms | {:.0} ms | {:.2} % | {} | {} | {:.0} % |\n",
                l.customers,
                if l.held {
                    "yes".to_string()
                } else {
                    format!("no: {}", l.why.as_deref().unwrap_or(""))
                },
                l.throughput_per_s,
                l.p99_overhead_ms,
                l.p99_e2e_ms,
                l.error_rate * 100.0,
                l.peak_rss_bytes
                    .map(|b| format!("{:.0} MiB", b as f64 / 1_048_576.0))
                    .unwrap_or_else(|| "?".into()),
                l.replica_cpu_percent
                    .map(|c| format!("{c:.0} %"))
                    .unwrap_or_else(|| "?".into()),
                l.loadgen_cpu_percent,
            ));
        }
        match self.held_customers {
            Some(n) => out.push_str(&format!(
                "\nHighest level that held: {n} concurrent customers on {} replica(s).\n",
                self.replicas
            )),
            None => out.push_str("\nNo level held (start lower with --start).\n"),
        }
        out
    }
}

/// Runs `plan` at rising customer counts until a level does not hold. The plan needs `llm` (the
/// mock model's URL): every level runs with the model at `llm_latency` (the seed's 1.5 s).
pub async fn find(plan: Plan, search: &Search) -> Result<CapacityReport, RunError> {
    let latency = plan.llm_latency.unwrap_or(Duration::from_millis(1500));
    if plan.llm.is_none() {
        return Err(crate::plan::PlanError::new(
            "--find-capacity",
            "needs the mock LLM's URL (--llm) to hold its latency at the seed's 1.5 s and to tell the gateway's overhead from the model's time",
        )
        .into());
    }
    let setup = Setup::new(&plan).await?;
    let mut levels = Vec::new();
    let mut best: Option<(usize, Report)> = None;
    let mut customers = search.start.max(1);
    while customers <= search.max {
        let mut level_plan = plan.clone();
        level_plan.customers = customers;
        level_plan.duration = Some(search.step_duration);
        level_plan.messages = None;
        level_plan.ramp = (search.step_duration / 3).min(Duration::from_secs(10));
        level_plan.llm_latency = Some(latency);
        level_plan.chaos.clear();
        tracing::info!(customers, "capacity search: next level");
        let report = run_with(level_plan, &setup).await?;
        let level = judge(customers, &report, search);
        let held = level.held;
        tracing::info!(customers, held, why = ?level.why, p99_overhead_ms = level.p99_overhead_ms, "capacity search: level done");
        levels.push(level);
        if !held {
            break;
        }
        best = Some((customers, report));
        customers += search.step.max(1);
        // Let the last level's turns finish before the next one starts.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let replicas = best.as_ref().map_or(1, |(_, r)| r.replicas.len().max(1));
    let per_replica = best.as_ref().map(|(customers, r)| PerReplica {
        customers: *customers as f64 / replicas as f64,
        requests_per_s: r.throughput_per_s / replicas as f64,
        peak_rss_bytes: r
            .replicas
            .iter()
            .filter_map(|x| x.peak_rss_bytes)
            .max()
            .unwrap_or(0),
        cpu_percent: mean(r.replicas.iter().filter_map(|x| x.cpu_percent)),
    });
    Ok(CapacityReport {
        levels,
        held_customers: best.map(|(c, _)| c),
        replicas,
        per_replica,
        llm_latency_ms: latency.as_millis() as u64,
        max_p99_overhead_ms: search.max_p99_overhead.as_secs_f64() * 1000.0,
        max_error_rate: search.max_error_rate,
        note: format!(
            "clawgate loadtest --find-capacity: {} s per level, model latency {} ms, think time {:?}..{:?}, {} messages per conversation",
            search.step_duration.as_secs(),
            latency.as_millis(),
            plan.think.0,
            plan.think.1,
            plan.turns
        ),
    })
}

fn judge(customers: usize, report: &Report, search: &Search) -> Level {
    let overhead = report.overhead_ms.map_or(report.e2e_ms.p99, |o| o.p99);
    let limit_ms = search.max_p99_overhead.as_secs_f64() * 1000.0;
    let why = if report.lost > 0 || report.duplicated > 0 || report.wrong_context > 0 {
        Some(format!(
            "{} lost, {} duplicated, {} without context",
            report.lost, report.duplicated, report.wrong_context
        ))
    } else if report.error_rate() > search.max_error_rate {
        Some(format!(
            "error rate {:.2} % over {:.2} %",
            report.error_rate() * 100.0,
            search.max_error_rate * 100.0
        ))
    } else if overhead > limit_ms {
        Some(format!(
            "p99 overhead {overhead:.1} ms over {limit_ms:.0} ms"
        ))
    } else {
        None
    };
    Level {
        customers,
        held: why.is_none(),
        why,
        throughput_per_s: report.throughput_per_s,
        p99_overhead_ms: overhead,
        p99_e2e_ms: report.e2e_ms.p99,
        error_rate: report.error_rate(),
        peak_rss_bytes: report
            .replicas
            .iter()
            .filter_map(|r| r.peak_rss_bytes)
            .max(),
        replica_cpu_percent: Some(mean(report.replicas.iter().filter_map(|r| r.cpu_percent)))
            .filter(|_| report.replicas.iter().any(|r| r.cpu_percent.is_some())),
        loadgen_cpu_percent: report.loadgen.cpu_percent,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / f64::from(n) }
}

/// Where per-replica figures come from.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The figures.
    pub per_replica: PerReplica,
    /// Where they come from.
    pub source: String,
}

/// The per-replica figures measured for the README on the development machine (2-core VM; the
/// stack shares the cores), used when no report is given.
pub fn reference_measurement() -> Measured {
    Measured {
        per_replica: PerReplica {
            customers: REFERENCE.0,
            requests_per_s: REFERENCE.1,
            peak_rss_bytes: REFERENCE.2,
            cpu_percent: REFERENCE.3,
        },
        source: REFERENCE_SOURCE.into(),
    }
}

/// Customers, requests/s, peak RSS (bytes) and CPU (% of a core) per replica at the highest
/// level that held in the README's capacity search.
const REFERENCE: (f64, f64, u64, f64) = (5000.0, 1198.0, 140_926_976, 62.6);
const REFERENCE_SOURCE: &str = "bench/results/capacity-1-replicas.json: clawgate loadtest --find-capacity, 1 replica, model at 1500 ms, on a 2-core VM shared with Redis, nginx, the mock model and the load generator (a dedicated 2-vCPU replica carries more)";

/// Per-replica figures from a report file: a capacity search (`--find-capacity --report`), or a
/// plain run (its load divided by its replicas: a lower bound, since it did not search).
pub fn measured_from(json: &serde_json::Value, file: &str) -> Result<Measured, String> {
    if let Ok(search) = serde_json::from_value::<CapacityReport>(json.clone()) {
        return search
            .per_replica
            .map(|per_replica| Measured {
                per_replica,
                source: format!("{file}: {}", search.note),
            })
            .ok_or_else(|| format!("{file}: the capacity search found no level that held"));
    }
    let customers = json["customers"].as_f64().ok_or_else(|| {
        format!("{file}: expected a capacity search or a load-test report (no \"customers\")")
    })?;
    let replicas = json["replicas"].as_array().map_or(0, Vec::len).max(1) as f64;
    let max_rss = json["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["peak_rss_bytes"].as_u64())
        .max()
        .unwrap_or(0);
    let cpu = mean(
        json["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["cpu_percent"].as_f64()),
    );
    Ok(Measured {
        per_replica: PerReplica {
            customers: customers / replicas,
            requests_per_s: json["throughput_per_s"].as_f64().unwrap_or(0.0) / replicas,
            peak_rss_bytes: max_rss,
            cpu_percent: cpu,
        },
        source: format!(
            "{file}: a load-test run at {customers} customers on {replicas} replica(s), not a capacity search (a lower bound)"
        ),
    })
}

/// The seed's capacity table for clawgate and the replica count for `peak` concurrent customers
/// with one replica's failure absorbed.
pub fn table(peak: usize, measured: &Measured) -> String {
    let per = measured.per_replica;
    let per_customers = per.customers.max(1.0);
    let needed = (peak as f64 / per_customers).ceil().max(1.0) as usize;
    let recommended = (needed + 1).max(2);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Per replica (measured): {:.0} concurrent customers, {:.0} requests/s, {:.0} MiB peak RSS, {:.0} % of a core\n  from {}\n",
        per.customers,
        per.requests_per_s,
        per.peak_rss_bytes as f64 / 1_048_576.0,
        per.cpu_percent,
        measured.source
    );
    let _ = writeln!(
        out,
        "| replicas | concurrent users | requests/s | total memory | CPU per replica | with one replica down |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | --- |");
    for replicas in 1..=recommended.max(3) {
        let users = per.customers * replicas as f64;
        let degraded = per.customers * (replicas - 1) as f64;
        let note = if replicas == 1 {
            "no redundancy: a crash stops service until the restart".to_string()
        } else {
            format!(
                "{degraded:.0} users{}",
                if degraded >= peak as f64 {
                    ", carries the peak"
                } else {
                    ""
                }
            )
        };
        let _ = writeln!(
            out,
            "| {replicas} | {users:.0} | {:.0} | {:.0} MiB | {:.0} % | {note} |",
            per.requests_per_s * replicas as f64,
            per.peak_rss_bytes as f64 * replicas as f64 / 1_048_576.0,
            per.cpu_percent,
        );
    }
    let _ = writeln!(
        out,
        "\nFor a peak of {peak} concurrent customers: run {recommended} replicas ({needed} carry the peak; one more absorbs a replica's failure). nginx and the model come on top."
    );
    let _ = writeln!(out, "{}", redis_advice(per.requests_per_s * needed as f64));
    out
}

/// Redis CPU one turn costs on a primary that confirms each write on a replica
/// (`ackReplicas` 1), measured by `bench/redis-cluster` (bench/results/redis-cluster.json,
/// the Sentinel row's `redis_masters`).
const REDIS_CPU_MS_PER_TURN: f64 = 0.42;
/// Redis CPU one turn costs on the masters of a Redis Cluster together (`ackReplicas` 1), from
/// the same run (the cluster row): more than on one primary, since each master batches fewer
/// commands per wake-up and streams its own replication.
const CLUSTER_CPU_MS_PER_TURN: f64 = 0.64;
/// How much more than an even share (1 / masters) of the Redis CPU the busiest master spends,
/// from the same run (the median over its cluster rounds): the shards spread over the masters
/// only as evenly as they divide (16 over 3: 6 / 5 / 5).
const BUSIEST_MASTER_FACTOR: f64 = 1.06;
/// The share of one Redis core a deployment should plan to use (Redis runs commands on one
/// thread; the rest is headroom for bursts, persistence and replication).
const REDIS_CORE_HEADROOM: f64 = 0.7;

/// One Redis (with Sentinel) or a Redis Cluster, and how many masters, for `turns_per_s` at
/// the peak: the fewest masters whose busiest one stays within [`REDIS_CORE_HEADROOM`] of a
/// core at the cluster's measured cost per turn (and at least 3, the smallest cluster that
/// keeps a majority when a master fails).
fn redis_advice(turns_per_s: f64) -> String {
    let core_ms = REDIS_CORE_HEADROOM * 1000.0;
    let per_core = core_ms / REDIS_CPU_MS_PER_TURN;
    if turns_per_s <= per_core {
        return format!(
            "Redis: one primary with Sentinel carries it ({turns_per_s:.0} turns/s at the peak; one Redis core carries about {per_core:.0} at {REDIS_CPU_MS_PER_TURN} ms of Redis CPU per confirmed turn, measured)."
        );
    }
    let busiest_ms = CLUSTER_CPU_MS_PER_TURN * BUSIEST_MASTER_FACTOR;
    let masters = ((turns_per_s * busiest_ms / core_ms).ceil() as usize).max(3);
    let carried = masters as f64 * core_ms / busiest_ms;
    format!(
        "Redis: {turns_per_s:.0} turns/s at the peak is more than one Redis core carries (about {per_core:.0} at {REDIS_CPU_MS_PER_TURN} ms of Redis CPU per confirmed turn, measured): run a Redis Cluster of {masters} masters with a replica each, on separate hosts (about {carried:.0} turns/s at {CLUSTER_CPU_MS_PER_TURN} ms of master CPU per turn and the busiest master doing ×{BUSIEST_MASTER_FACTOR} an even share, measured; README, \"Beyond one Redis\")."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_adds_one_replica_for_failure_and_reads_either_report_kind() {
        let measured = Measured {
            per_replica: PerReplica {
                customers: 3000.0,
                requests_per_s: 700.0,
                peak_rss_bytes: 150 * 1_048_576,
                cpu_percent: 60.0,
            },
            source: "test".into(),
        };
        let text = table(7000, &measured);
        assert!(text.contains("run 4 replicas (3 carry the peak"), "{text}");
        // 3 replicas × 700 requests/s is more than one Redis core carries.
        assert!(text.contains("run a Redis Cluster of 3 masters"), "{text}");
        assert!(table(1000, &measured).contains("one primary with Sentinel carries it"));
        assert!(
            redis_advice(10_000.0).contains("Cluster of 10 masters"),
            "{}",
            redis_advice(10_000.0)
        );
        assert!(
            text.contains("| 3 | 9000 | 2100 | 450 MiB | 60 % | 6000 users |"),
            "{text}"
        );
        assert!(text.contains("| 4 | 12000 |"), "{text}");
        let small = table(100, &measured);
        assert!(small.contains("run 2 replicas"), "{small}");

        let plain = serde_json::json!({"customers": 600, "throughput_per_s": 120.0,
            "replicas": [{"peak_rss_bytes": 50, "cpu_percent": 10.0}, {"peak_rss_bytes": 70, "cpu_percent": 20.0}]});
        let from_run = measured_from(&plain, "r.json").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_run.per_replica.customers, 300.0);
        assert_eq!(from_run.per_replica.peak_rss_bytes, 70);
        assert!(from_run.source.contains("lower bound"));
        assert!(measured_from(&serde_json::json!({"x": 1}), "bad.json").is_err());
    }
}
