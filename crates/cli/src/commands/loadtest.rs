//! `clawgate loadtest` and `clawgate capacity`: simulated customers against a running
//! deployment, and the replica count a peak needs (see the load-test library).

use super::raise_open_files_limit;
use anyhow::Context;
use clawgate_loadtest::{capacity as planning, plan};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `clawgate loadtest`'s flags.
#[derive(clap::Args)]
pub struct LoadtestArgs {
    /// The gateway: nginx in front of a cluster, or one replica.
    #[arg(long)]
    target: String,
    /// Customers writing at the same time.
    #[arg(long, default_value_t = 100)]
    customers: usize,
    /// How long customers keep sending (20s, 2m); default 20s unless --messages is given.
    #[arg(long, value_parser = plan::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Stop after this many messages.
    #[arg(long)]
    messages: Option<u64>,
    /// Customers start evenly over this time.
    #[arg(long, default_value = "5s", value_parser = plan::parse_duration)]
    ramp: std::time::Duration,
    /// Messages a customer sends per conversation (each answered).
    #[arg(long, default_value_t = 3)]
    turns: usize,
    /// Pause between a reply and the customer's next message (2s..5s, or one duration).
    #[arg(long, default_value = "2s..5s", value_parser = plan::parse_range)]
    think: (std::time::Duration, std::time::Duration),
    /// Channel shares, e.g. whatsapp=40,telegram=30,webchat=30 (default: every channel the
    /// gateway's config enables, in those shares).
    #[arg(long)]
    channels: Option<String>,
    /// Inquiry mix.
    #[arg(long, default_value = "tracking=55,estimates=30,complaints=15")]
    mix: String,
    /// How long a customer waits for a reply before the message counts as lost.
    #[arg(long, default_value = "60s", value_parser = plan::parse_duration)]
    reply_timeout: std::time::Duration,
    /// Failures during the run, e.g. "kill-replica@30s,redis-restart@60s,llm-hang@90s-120s".
    #[arg(long)]
    chaos: Option<String>,
    /// The mock LLM's base URL (for llm-* chaos, --llm-latency and the overhead figures).
    #[arg(long)]
    llm: Option<String>,
    /// Set the mock LLM's latency for the run (the seed's shape: 1500ms).
    #[arg(long, value_parser = plan::parse_duration)]
    llm_latency: Option<std::time::Duration>,
    /// The cluster's state directory (replica pids for memory and CPU, Redis, the config).
    #[arg(long, default_value = "clawgate-cluster")]
    state_dir: PathBuf,
    /// The gateway's config file (channel credentials), if not the cluster's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the JSON report here (and FILE.md and FILE.svg beside it).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Make the load test's fake platform swallow this many replies (proves the loss check).
    #[arg(long, default_value_t = 0)]
    platform_swallow: u64,
    /// Make it record this many replies twice (proves the duplicate check).
    #[arg(long, default_value_t = 0)]
    platform_duplicate: u64,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Raise the customers level by level (seed's shape: model at --llm-latency, 1500ms by
    /// default) until the p99 overhead or the error rate crosses its limit.
    #[arg(long)]
    find_capacity: bool,
    /// Capacity search: first level.
    #[arg(long, default_value_t = 500)]
    start: usize,
    /// Capacity search: customers added per level.
    #[arg(long, default_value_t = 500)]
    step: usize,
    /// Capacity search: last level tried.
    #[arg(long, default_value_t = 10_000)]
    max: usize,
    /// Capacity search: time per level.
    #[arg(long, default_value = "30s", value_parser = plan::parse_duration)]
    step_duration: std::time::Duration,
    /// Capacity search: p99 overhead limit.
    #[arg(long, default_value = "50ms", value_parser = plan::parse_duration)]
    max_p99_overhead: std::time::Duration,
    /// Capacity search: error-rate limit (lost + refused over sent).
    #[arg(long, default_value_t = 0.001)]
    max_error_rate: f64,
}

/// Runs the load test (or, with `--find-capacity`, the capacity search) and prints its report.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    raise_open_files_limit();
    let mut plan = plan::Plan::new(&args.target);
    plan.customers = args.customers;
    plan.messages = args.messages;
    plan.duration = match (args.duration, args.messages) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(std::time::Duration::from_secs(20)),
    };
    plan.ramp = args.ramp;
    plan.turns = args.turns.max(1);
    plan.think = args.think;
    plan.channels = args
        .channels
        .as_deref()
        .map(plan::parse_channels)
        .transpose()?;
    plan.mix = plan::parse_mix(&args.mix)?;
    plan.reply_timeout = args.reply_timeout;
    plan.chaos = args
        .chaos
        .as_deref()
        .map(clawgate_loadtest::chaos::parse)
        .transpose()?
        .unwrap_or_default();
    plan.llm = args.llm;
    plan.llm_latency = args.llm_latency;
    plan.state_dir = Some(args.state_dir);
    plan.config = args.config;
    plan.faults = plan::PlatformFaults {
        swallow: args.platform_swallow,
        duplicate: args.platform_duplicate,
    };
    plan.progress = !args.quiet;
    let mut out = std::io::stdout().lock();
    if args.find_capacity {
        let search = planning::Search {
            start: args.start,
            step: args.step,
            max: args.max,
            step_duration: args.step_duration,
            max_p99_overhead: args.max_p99_overhead,
            max_error_rate: args.max_error_rate,
        };
        let found = planning::find(plan, &search).await?;
        write!(out, "{}", found.markdown())?;
        if let Some(path) = &args.report {
            std::fs::write(path, serde_json::to_string_pretty(&found)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(if found.held_customers.is_some() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let report = clawgate_loadtest::run::run(plan).await?;
    let chart = args.report.as_ref().map(|p| p.with_extension("svg"));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let chart_path = path.with_extension("svg");
        std::fs::write(&chart_path, report.svg())
            .with_context(|| format!("writing {}", chart_path.display()))?;
        let chart_name = chart
            .as_ref()
            .and_then(|c| c.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        let md_path = path.with_extension("md");
        std::fs::write(&md_path, report.markdown(chart_name.as_deref()))
            .with_context(|| format!("writing {}", md_path.display()))?;
    }
    write!(out, "{}", report.markdown(None))?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the capacity table for `peak` concurrent customers.
pub fn capacity(peak: usize, measured: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let measured = match measured {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            planning::measured_from(&json, &path.display().to_string())
                .map_err(|e| anyhow::anyhow!(e))?
        }
        None => planning::reference_measurement(),
    };
    write!(
        std::io::stdout().lock(),
        "{}",
        planning::table(peak, &measured)
    )?;
    Ok(ExitCode::SUCCESS)
}
