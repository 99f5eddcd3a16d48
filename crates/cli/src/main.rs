//! The `clawgate` command line. It parses arguments and calls the library; nothing else lives
//! here.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use clawgate_cluster::supervisor::{self, ClusterSpec};
use clawgate_cluster::{render, status};
use clawgate_fakes::{mock_dispatcher, mock_llm, mock_platforms, mock_tracking};
use clawgate_gateway::config::redis::redact;
use clawgate_gateway::config::{Config, ConfigErrors, Overrides, ProviderKind};
use clawgate_gateway::deadletter::{DeadLetters, Redriven};
use clawgate_gateway::egress::Egress;
use clawgate_gateway::env_vars;
use clawgate_gateway::escalation::Dispatcher;
use clawgate_gateway::http_client;
use clawgate_gateway::live::ConfigFile;
use clawgate_gateway::llm::connections::Connections;
use clawgate_gateway::logging;
use clawgate_gateway::skills::SkillSet;
use clawgate_gateway::state::StoreLimits;
use clawgate_gateway::state::link::RedisLink;
use clawgate_gateway::state::redis::RedisStore;
use clawgate_gateway::state::{Resolution, StateStore};
use clawgate_loadtest::{capacity as planning, plan};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's allocator: after a burst (10,000 held web-chat requests) glibc
/// kept the replica at its peak resident memory for good (the freed memory stays in its
/// per-thread arenas); jemalloc with its background thread gives it back within seconds
/// (figures in the README).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background thread, which returns freed pages to the system after its decay
/// time (10 s) even while the replica is idle; without it pages are only returned when the
/// thread that freed them allocates again.
fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background thread could not start; memory freed after a burst is returned only as the replica works");
    }
}

/// A message for the operator on stderr that cannot panic (`eprintln!` does when stderr is
/// full or closed).
macro_rules! say {
    ($($arg:tt)*) => {
        logging::say(format_args!($($arg)*))
    };
}

#[derive(Parser)]
#[command(
    name = "clawgate",
    version,
    about = "A highly available gateway for AI customer-messaging agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, env = env_vars::LOG_FORMAT, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway replica.
    Serve(ServeArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect and re-drive messages and replies that could not be processed or sent.
    Deadletter {
        #[command(subcommand)]
        command: DeadletterCommand,
    },
    /// The dispatcher's side of conversations handed over to a person.
    Escalations {
        #[command(subcommand)]
        command: EscalationsCommand,
    },
    /// Run the reference deployment on this host: Redis, replicas and nginx, supervised.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Print the nginx config for a static deployment of replicas on consecutive ports.
    NginxConfig {
        /// Number of replicas.
        #[arg(long, default_value_t = 3)]
        replicas: u16,
        /// What nginx listens on (`listen` directive).
        #[arg(long, default_value = "80")]
        listen: String,
        /// Host the replicas run on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port of the first replica; the others follow.
        #[arg(long, default_value_t = clawgate_gateway::config::DEFAULT_PORT)]
        first_port: u16,
        /// Explicit replica addresses (`host:port`, repeatable), instead of `--replicas` ports
        /// on `--host`: e.g. one per container in a compose file.
        #[arg(long = "server")]
        servers: Vec<String>,
    },
    /// Simulated customers over WhatsApp, Telegram and web chat, each message checked for exactly
    /// one reply with the right context; report with throughput, latency, per-replica figures.
    Loadtest(Box<LoadtestArgs>),
    /// The seed's capacity table for clawgate, from measured per-replica figures, and the replica
    /// count for a peak with one replica's failure absorbed.
    Capacity {
        /// Concurrent customers at the peak.
        #[arg(long)]
        peak_concurrent: usize,
        /// A report of `clawgate loadtest --find-capacity` (or of a plain run: a lower bound).
        /// Without it, the figures measured for the README on a 2-core machine.
        #[arg(long)]
        measured: Option<PathBuf>,
    },
    /// Run fakes of outside services, for tests and load tests.
    Mock {
        #[command(subcommand)]
        command: MockCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (JSON). Without one, built-in defaults: template answers only.
    #[arg(long, env = env_vars::CONFIG)]
    config: Option<PathBuf>,
    /// Listen address, overriding `gateway.listen`.
    #[arg(long, env = env_vars::LISTEN)]
    listen: Option<SocketAddr>,
    /// Replica id, overriding `gateway.replicaId`.
    #[arg(long, env = env_vars::REPLICA_ID)]
    replica_id: Option<String>,
    /// Redis URL, overriding `redis.url` (also `redis+sentinel://host:port,…/masterName`).
    #[arg(long, env = env_vars::REDIS_URL)]
    redis_url: Option<String>,
    /// Replicas that must hold a message before it is acknowledged, overriding
    /// `redis.ackReplicas`.
    #[arg(long, env = env_vars::REDIS_ACK_REPLICAS)]
    redis_ack_replicas: Option<u32>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file: print every error with its JSON path, exit 1 if there is one.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeadletterCommand {
    /// List the dead-letter stream, oldest first.
    List {
        #[command(flatten)]
        target: StateArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retry entries: re-send replies, re-queue messages. Removes each entry that succeeds.
    Retry {
        #[command(flatten)]
        target: StateArgs,
        /// Entry ids (as `list` shows them).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Retry every entry.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum EscalationsCommand {
    /// List the conversations waiting for a person, oldest first.
    List {
        #[command(flatten)]
        target: StateArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a conversation's latest escalation with its summary and transcript.
    Show {
        #[command(flatten)]
        target: StateArgs,
        /// The conversation (`whatsapp:31612345678`) or the escalation's reference (`ESC-…`).
        conversation: String,
    },
    /// End a hand-over: the bot answers the conversation again.
    Resolve {
        #[command(flatten)]
        target: StateArgs,
        /// The conversation (`whatsapp:31612345678`) or the escalation's reference (`ESC-…`).
        conversation: String,
        /// Who resolved it (recorded on the escalation).
        #[arg(long, default_value = "dispatcher")]
        by: String,
        /// What was done (recorded on the escalation).
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// Which deployment a maintenance command acts on: its config (platform credentials, Redis URL)
/// and an optional Redis URL override.
#[derive(clap::Args)]
struct StateArgs {
    /// The gateway's config file.
    #[arg(long, env = env_vars::CONFIG)]
    config: Option<PathBuf>,
    /// Redis URL, overriding the config's.
    #[arg(long, env = env_vars::REDIS_URL)]
    redis_url: Option<String>,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start Redis (AOF), the replicas and nginx in front of them; restart what exits, take
    /// unhealthy replicas out of nginx; Ctrl-C or SIGTERM stops everything in reverse order.
    Up(UpArgs),
    /// Add or drain replicas of a running cluster without dropping a message: new ones join
    /// nginx's upstream once ready; leaving ones are taken out of it first, then drained.
    Scale {
        /// The replica count wanted (at least 1).
        replicas: u16,
        /// The cluster's state directory.
        #[arg(long, default_value = "clawgate-cluster")]
        state_dir: PathBuf,
    },
    /// Show what runs: replicas (pid, port, health, uptime, turns handled), Redis, nginx.
    Status {
        /// The cluster's state directory.
        #[arg(long, default_value = "clawgate-cluster")]
        state_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// The replicas' config file.
    #[arg(long)]
    config: PathBuf,
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    replicas: u16,
    /// Where nginx listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Pids, logs, generated configs and Redis's data.
    #[arg(long, default_value = "clawgate-cluster")]
    state_dir: PathBuf,
    /// Use this Redis instead of starting one (`redis://…`, or `redis+sentinel://…/name`).
    #[arg(long)]
    redis_url: Option<String>,
    /// The Redis to start: `single` (one server) or `sentinel` (a primary, 2 replicas and 3
    /// sentinels; replicas acknowledge a message once a Redis replica holds it).
    #[arg(long, default_value = "single")]
    redis: clawgate_cluster::redis_group::RedisMode,
    /// Port of the first replica; the others follow.
    #[arg(long, default_value_t = clawgate_gateway::config::DEFAULT_PORT)]
    first_port: u16,
    /// Port of the Redis it starts (0 = any free port); with `--redis sentinel` the servers take
    /// it and the next two.
    #[arg(long, default_value_t = 0)]
    redis_port: u16,
    /// Port of the first sentinel with `--redis sentinel` (0 = any free port); the others follow.
    #[arg(long, default_value_t = 0)]
    sentinel_port: u16,
    /// Redis `maxmemory` (it refuses writes beyond it rather than evicting).
    #[arg(long, default_value = "512mb")]
    redis_maxmemory: String,
}

#[derive(clap::Args)]
struct LoadtestArgs {
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

#[derive(Subcommand)]
enum MockCommand {
    /// A fake LLM speaking the OpenAI chat-completions and Ollama /api/chat formats.
    Llm {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Delay before each answer, milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Random extra delay up to this many milliseconds.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Initial behaviour (changeable at run time with POST /control).
        #[arg(long, value_enum, default_value = "ok")]
        mode: MockMode,
    },
    /// A fake of the WhatsApp Graph API and Telegram Bot API send endpoints that records what
    /// it is sent (GET /sent, DELETE /sent) and fails on request (POST /control).
    Platforms {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// A fake dispatcher webhook: records the escalation events it receives (GET /events) and
    /// fails on request (POST /control).
    Dispatcher {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// A fake parcel-tracking API: `GET /packages/{tracking_number}` answers the package from
    /// the data file, or 404 (`POST /control {"hang": true}` makes it hang).
    Tracking {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Packages: a JSON array of `{tracking_number, status, eta_window, postal_code,
        /// weekend_delivery}`.
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MockMode {
    Ok,
    Error,
    RateLimited,
    Hang,
    Slow,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_flush = init_logging(cli.log_format);
    return_freed_memory();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            say!("clawgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Config {
                command: ConfigCommand::Check { file },
            } => Ok(check_config(&file)),
            Command::Mock {
                command:
                    MockCommand::Llm {
                        port,
                        host,
                        latency_ms,
                        jitter_ms,
                        mode,
                    },
            } => mock_llm(SocketAddr::new(host, port), latency_ms, jitter_ms, mode).await,
            Command::Deadletter {
                command: DeadletterCommand::List { target, json },
            } => deadletter_list(target, json).await,
            Command::Deadletter {
                command: DeadletterCommand::Retry { target, ids, all },
            } => deadletter_retry(target, ids, all).await,
            Command::Escalations { command } => escalations(command).await,
            Command::Loadtest(args) => loadtest(*args).await,
            Command::Capacity {
                peak_concurrent,
                measured,
            } => capacity(peak_concurrent, measured.as_deref()),
            Command::Mock {
                command: MockCommand::Platforms { port, host },
            } => mock_platforms(SocketAddr::new(host, port)).await,
            Command::Mock {
                command: MockCommand::Dispatcher { port, host },
            } => mock_dispatcher(SocketAddr::new(host, port)).await,
            Command::Mock {
                command: MockCommand::Tracking { port, host, data },
            } => mock_tracking(SocketAddr::new(host, port), &data).await,
            Command::Cluster {
                command: ClusterCommand::Up(args),
            } => {
                cluster_up(ClusterSpec {
                    config: args.config,
                    replicas: args.replicas,
                    listen: args.listen,
                    state_dir: args.state_dir,
                    redis_url: args.redis_url,
                    redis_mode: args.redis,
                    first_port: args.first_port,
                    redis_port: args.redis_port,
                    sentinel_port: args.sentinel_port,
                    redis_maxmemory: args.redis_maxmemory,
                    clawgate: std::env::current_exe().context("locating the clawgate binary")?,
                    replica_grace: std::time::Duration::from_secs(30),
                })
                .await
            }
            Command::Cluster {
                command: ClusterCommand::Status { state_dir, json },
            } => cluster_status(&state_dir, json).await,
            Command::Cluster {
                command:
                    ClusterCommand::Scale {
                        replicas,
                        state_dir,
                    },
            } => cluster_scale(&state_dir, replicas).await,
            Command::NginxConfig {
                replicas,
                listen,
                host,
                first_port,
                servers,
            } => {
                let servers = if servers.is_empty() {
                    (0..replicas)
                        .map(|i| format!("{host}:{}", first_port.saturating_add(i)))
                        .collect()
                } else {
                    servers
                };
                let conf = render::static_nginx(&listen, &servers)?;
                let _ = std::io::stdout().write_all(conf.as_bytes());
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("clawgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs logging; the guard flushes queued lines when `main` returns.
fn init_logging(format: LogFormat) -> logging::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_vars::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    logging::init(
        match format {
            LogFormat::Json => logging::LogFormat::Json,
            LogFormat::Text => logging::LogFormat::Text,
        },
        filter,
    )
}

/// Cancelled on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        // The drain starts before anything else happens, logging included.
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        cancel.cancel();
        tracing::info!("{signal} received");
    });
    Ok(token)
}

async fn cluster_up(mut spec: ClusterSpec) -> anyhow::Result<ExitCode> {
    // The replicas run from the state directory's point of view: make the config path absolute.
    spec.config = spec
        .config
        .canonicalize()
        .with_context(|| format!("config file {}", spec.config.display()))?;
    if let Err(errors) = Config::load(&spec.config) {
        say!("{errors}");
        say!("clawgate: the configuration has errors; not starting the cluster");
        return Ok(ExitCode::FAILURE);
    }
    let shutdown = shutdown_signal()?;
    supervisor::up(spec, shutdown, |state| {
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "clawgate cluster up: http://{} → {} replicas ({}), Redis {}",
            state.listen,
            state.replicas.len(),
            state
                .replicas
                .iter()
                .map(|r| format!("{} on :{}", r.id, r.port))
                .collect::<Vec<_>>()
                .join(", "),
            redact(&state.redis.url),
        );
        let _ = out.flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn cluster_scale(state_dir: &std::path::Path, replicas: u16) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(replicas >= 1, "a cluster needs at least one replica");
    status::report(state_dir)
        .await
        .with_context(|| format!("no running cluster in {}", state_dir.display()))?;
    let file = state_dir.join(supervisor::DESIRED_REPLICAS);
    std::fs::write(&file, replicas.to_string())
        .with_context(|| format!("writing {}", file.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let report = status::report(state_dir).await?;
        let listed = report["replicas"].as_array().cloned().unwrap_or_default();
        let healthy = listed.iter().filter(|r| r["healthy"] == true).count();
        if listed.len() == usize::from(replicas) && healthy == listed.len() {
            let _ = writeln!(std::io::stdout(), "{replicas} replicas, all healthy");
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() > deadline {
            say!(
                "clawgate: asked for {replicas} replicas; after 60 s there are {} ({healthy} healthy)",
                listed.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn cluster_status(state_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = status::report(state_dir).await.with_context(|| {
        format!(
            "no cluster state in {} (is `clawgate cluster up --state-dir {}` running?)",
            state_dir.display(),
            state_dir.display()
        )
    })?;
    let mut out = std::io::stdout();
    if json {
        let _ = writeln!(out, "{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let yes_no = |v: &serde_json::Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    let _ = writeln!(
        out,
        "nginx      pid {}  listening on {}  balancer /healthz {}",
        report["nginx"]["pid"],
        report["listen"],
        yes_no(&report["nginx"]["balancer_healthz"])
    );
    let _ = writeln!(
        out,
        "redis      up {}  {}  used memory {} bytes  inbox lag {}  pending {}",
        yes_no(&report["redis"]["up"]),
        report["redis"]["url"]
            .as_str()
            .map(redact)
            .unwrap_or_default(),
        report["redis"]["used_memory_bytes"],
        report["redis"]["inbox_lag"],
        report["redis"]["inbox_pending"],
    );
    if let Some(primary) = report["redis"]["primary"].as_str() {
        let _ = writeln!(out, "           replicas write to the primary at {primary}");
    }
    for node in report["redis"]["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<8} {}  {}  lag {} bytes  pid {}",
            node["name"].as_str().unwrap_or("redis"),
            node["addr"].as_str().unwrap_or_default(),
            node["role"].as_str().unwrap_or_default(),
            node["lag"],
            node["pid"],
        );
    }
    for sentinel in report["redis"]["sentinels"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  {:<8} {}  up {}  pid {}",
            sentinel["name"].as_str().unwrap_or_default(),
            sentinel["addr"].as_str().unwrap_or_default(),
            yes_no(&sentinel["up"]),
            sentinel["pid"],
        );
    }
    for r in report["replicas"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<10} pid {}  port {}  healthy {}  uptime {} s  restarts {}  turns handled {}",
            r["id"].as_str().unwrap_or_default(),
            r["pid"],
            r["port"],
            yes_no(&r["healthy"]),
            r["uptime_s"],
            r["restarts"],
            r["handled"],
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The config file (or the built-in defaults without one), with command-line overrides applied.
fn load_config(
    path: Option<&std::path::Path>,
    overrides: Overrides,
) -> Result<Config, ConfigErrors> {
    path.map_or_else(|| Ok(Config::builtin()), Config::load)?
        .with_overrides(overrides)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        replica_id: args.replica_id,
        redis_url: args.redis_url,
        redis_ack_replicas: args.redis_ack_replicas,
    };
    let file = args.config.clone().map(|path| ConfigFile {
        path,
        overrides: overrides.clone(),
    });
    let config = match load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(errors) => {
            say!("{errors}");
            say!("clawgate: the configuration has errors; not starting");
            return Ok(ExitCode::FAILURE);
        }
    };
    raise_open_files_limit();
    let listener = listen(config.gateway.listen)
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let shutdown = shutdown_signal()?;
    clawgate_gateway::run(listener, config, file, shutdown).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Pending connections the kernel queues for us: a morning surge opens connections in bursts, and
/// the default of 1024 would push the excess into SYN retries (seconds of added latency). The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Every held-open web-chat request and every provider call is a file descriptor; the usual soft
/// limit of 1024 would cap a replica far below its memory and CPU capacity.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open-files limit"),
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(errors) => {
            say!("{errors}");
            say!("{}: {} error(s)", file.display(), errors.0.len());
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut lines = vec![
        format!("{}: ok", file.display()),
        format!("  listen:      {}", config.gateway.listen),
        format!("  replica id:  {}", config.gateway.replica_id),
        format!("  redis:       {}", config.redis.describe()),
    ];
    for (i, p) in config.llm.providers.iter().enumerate() {
        let what = match &p.kind {
            ProviderKind::OpenAiCompatible {
                endpoint,
                model,
                http,
                ..
            } => format!(
                "openai-compatible {endpoint} model {model}, {}",
                Connections::describe(http, endpoint)
            ),
            ProviderKind::Ollama {
                endpoint,
                model,
                http,
            } => format!(
                "ollama {endpoint} model {model}, {}",
                Connections::describe(http, endpoint)
            ),
            ProviderKind::Template => "template".to_string(),
        };
        let budget = match &p.rate_limit {
            Some(rl) => format!(
                ", budget {}/min for the cluster{}{}",
                rl.requests_per_minute,
                rl.burst_allowed
                    .map(|b| format!(" + burst {b}"))
                    .unwrap_or_default(),
                rl.requests_per_key
                    .map(|k| format!(", {k}/min per key"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        lines.push(format!(
            "  provider {}:  {} ({what}, timeout {} ms, {} {}{budget})",
            i + 1,
            p.name,
            p.timeout.as_millis(),
            p.max_retries,
            if p.max_retries == 1 {
                "retry"
            } else {
                "retries"
            }
        ));
    }
    let breaker = &config.llm.circuit_breaker;
    lines.push(format!(
        "  chain:       deadline {} ms; breaker opens after {} failures in a row or {:.0}% of {}+ attempts in {} s, probe every {} ms; hedging {}",
        config.llm.deadline.as_millis(),
        breaker.consecutive_failures,
        breaker.failure_ratio * 100.0,
        breaker.min_calls,
        breaker.window.as_secs(),
        breaker.probe_interval.as_millis(),
        if config.llm.hedging.enabled { "on" } else { "off" }
    ));
    let escalation = &config.escalation;
    lines.push(format!(
        "  escalation:  {}; API {}",
        match &escalation.webhook_url {
            // Only scheme and host: a webhook URL's path or query may hold a token.
            Some(url) => format!(
                "dispatcher webhook {}/… ({} attempts, {} ms each{})",
                url.split('/').take(3).collect::<Vec<_>>().join("/"),
                escalation.max_attempts,
                escalation.timeout.as_millis(),
                if escalation.webhook_secret.is_some() {
                    ", signed"
                } else {
                    ""
                }
            ),
            None => "no dispatcher webhook (escalations are recorded only)".into(),
        },
        if escalation.api_token.is_some() {
            "on (/v1/escalations)"
        } else {
            "off"
        }
    ));
    lines.extend(
        clawgate_gateway::channels::describe(&config)
            .into_iter()
            .map(|(channel, what)| format!("  {:<13}{what}", format!("{channel}:"))),
    );
    let (skills, skill_errors) = SkillSet::load(&config.skills.dir);
    lines.push(format!(
        "  skills:      {} from {}",
        skills.names().join(", "),
        config.skills.dir.display()
    ));
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    for error in skill_errors {
        say!("warning: skill not loaded: {error}");
    }
    ExitCode::SUCCESS
}

/// The deployment a maintenance command names: its config and a connected store.
async fn deployment(
    target: StateArgs,
) -> anyhow::Result<(Config, std::sync::Arc<RedisLink>, RedisStore)> {
    let overrides = Overrides {
        redis_url: target.redis_url,
        ..Overrides::default()
    };
    let config = load_config(target.config.as_deref(), overrides)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let link = RedisLink::connect(&config.redis).await?;
    let store = RedisStore::new(link.clone(), StoreLimits::from_config(&config));
    Ok((config, link, store))
}

/// Connects to the deployment a maintenance command names.
async fn dead_letters(target: StateArgs) -> anyhow::Result<DeadLetters> {
    let (config, link, store) = deployment(target).await?;
    let http = http_client::build()?;
    let egress = Egress::from_config(&config.channels, &http);
    let dispatcher = Dispatcher::new(&config.escalation, &http);
    Ok(DeadLetters::new(link, store, egress, dispatcher))
}

async fn escalations(command: EscalationsCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        EscalationsCommand::List { target, json } => {
            let (_, _, store) = deployment(target).await?;
            let pending = store.escalations().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&pending)?)?;
            } else if pending.is_empty() {
                writeln!(out, "no conversation is waiting for a person")?;
            } else {
                writeln!(
                    out,
                    "{:<13} {:<28} {:<11} {:>6}  {:<9} reason",
                    "reference", "conversation", "skill", "age", "notified"
                )?;
                let now = clawgate_gateway::message::now_ms();
                for e in &pending {
                    writeln!(
                        out,
                        "{:<13} {:<28} {:<11} {:>6}  {:<9} {}",
                        e.reference,
                        e.conversation,
                        e.skill,
                        age(now.saturating_sub(e.created_at)),
                        if e.notified { "yes" } else { "no" },
                        e.reason
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EscalationsCommand::Show {
            target,
            conversation,
        } => {
            let (_, _, store) = deployment(target).await?;
            let found =
                match clawgate_gateway::state::conversation_named(&store, &conversation).await? {
                    Some(key) => store.escalation(&key).await?,
                    None => None,
                };
            match found {
                Some(e) => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    say!("clawgate: no escalation for {conversation}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        EscalationsCommand::Resolve {
            target,
            conversation,
            by,
            note,
        } => {
            let (_, _, store) = deployment(target).await?;
            let Some(key) =
                clawgate_gateway::state::conversation_named(&store, &conversation).await?
            else {
                say!(
                    "clawgate: no pending escalation for {conversation} (give channel:user or an ESC- reference)"
                );
                return Ok(ExitCode::FAILURE);
            };
            match store.resolve_escalation(&key, &by, &note).await? {
                Resolution::Resolved(e) => {
                    writeln!(
                        out,
                        "{} ({}): resolved; the bot answers this conversation again",
                        e.reference, e.conversation
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Resolution::AlreadyResolved(e) => {
                    writeln!(
                        out,
                        "{} ({}): already resolved by {}",
                        e.reference,
                        e.conversation,
                        e.resolved_by.as_deref().unwrap_or("?")
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Resolution::Unknown => {
                    say!("clawgate: {key} has no escalation");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

async fn deadletter_list(target: StateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let letters = dead_letters(target).await?.list().await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&letters)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        writeln!(out, "the dead-letter stream is empty")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<18} {:<10} {:<9} {:<26} {:>9}  reason",
        "id", "kind", "channel", "to / conversation", "age"
    )?;
    let now = clawgate_gateway::message::now_ms();
    for letter in &letters {
        let since_ms = letter
            .id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(now);
        writeln!(
            out,
            "{:<18} {:<10} {:<9} {:<26} {:>9}  {}",
            letter.id,
            letter.kind,
            letter.channel(),
            letter.subject(),
            age(now.saturating_sub(since_ms)),
            letter.reason
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn deadletter_retry(
    target: StateArgs,
    ids: Vec<String>,
    all: bool,
) -> anyhow::Result<ExitCode> {
    let dead = dead_letters(target).await?;
    let letters = dead.list().await?;
    let chosen: Vec<_> = letters
        .iter()
        .filter(|l| all || ids.contains(&l.id))
        .collect();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !letters.iter().any(|l| &l.id == *id))
        .collect();
    let mut out = std::io::stdout().lock();
    let mut failed = missing.len();
    for id in missing {
        writeln!(out, "{id}: no such entry")?;
    }
    for letter in chosen {
        match dead.retry(letter).await {
            Ok(Redriven::Sent) => {
                writeln!(out, "{}: reply sent to {}", letter.id, letter.subject())?
            }
            Ok(Redriven::Requeued) => writeln!(out, "{}: message queued again", letter.id)?,
            Ok(Redriven::Dispatched) => writeln!(
                out,
                "{}: escalation event delivered to the dispatcher",
                letter.id
            )?,
            Err(reason) => {
                failed += 1;
                writeln!(out, "{}: still failing: {reason}", letter.id)?;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `42s`, `5m`, `3h`, `2d`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

async fn mock_llm(
    addr: SocketAddr,
    latency_ms: u64,
    jitter_ms: u64,
    mode: MockMode,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mode = match mode {
        MockMode::Ok => mock_llm::Mode::Ok,
        MockMode::Error => mock_llm::Mode::Error,
        MockMode::RateLimited => mock_llm::Mode::RateLimited,
        MockMode::Hang => mock_llm::Mode::Hang,
        MockMode::Slow => mock_llm::Mode::Slow,
    };
    let options = mock_llm::Options {
        mode,
        latency_ms,
        jitter_ms,
    };
    tracing::info!(%addr, latency_ms, jitter_ms, "mock LLM listening (OpenAI: /v1/chat/completions, Ollama: /api/chat, control: /control)");
    let shutdown = shutdown_signal()?;
    tokio::select! {
        served = mock_llm::serve(listener, options) => served.context("mock LLM server failed")?,
        _ = shutdown.cancelled() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn mock_tracking(addr: SocketAddr, data: &std::path::Path) -> anyhow::Result<ExitCode> {
    let packages = mock_tracking::load_packages(data)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, packages = packages.len(), "mock tracking API listening (GET /packages/{{tracking_number}}, control: /control)");
    let shutdown = shutdown_signal()?;
    tokio::select! {
        served = mock_tracking::serve(listener, packages) => served.context("mock tracking server failed")?,
        _ = shutdown.cancelled() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn mock_platforms(addr: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "mock platforms listening (WhatsApp: /{{version}}/{{phone}}/messages, Telegram: /bot{{token}}/sendMessage, sent: /sent, control: /control)");
    let shutdown = shutdown_signal()?;
    tokio::select! {
        served = mock_platforms::serve(listener) => served.context("mock platforms server failed")?,
        _ = shutdown.cancelled() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn mock_dispatcher(addr: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "mock dispatcher listening (webhook: POST /events, received: GET /events, control: /control)");
    let shutdown = shutdown_signal()?;
    tokio::select! {
        served = mock_dispatcher::serve(listener) => served.context("mock dispatcher server failed")?,
        _ = shutdown.cancelled() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn loadtest(args: LoadtestArgs) -> anyhow::Result<ExitCode> {
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
        writeln!(
            out,
            "| customers | held | replies/s | p99 overhead | p99 e2e | errors | peak replica RSS | replica CPU | load generator CPU |"
        )?;
        writeln!(
            out,
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for l in &found.levels {
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.1} ms | {:.0} ms | {:.2} % | {} | {} | {:.0} % |",
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
            )?;
        }
        match found.held_customers {
            Some(n) => writeln!(
                out,
                "\nHighest level that held: {n} concurrent customers on {} replica(s).",
                found.replicas
            )?,
            None => writeln!(out, "\nNo level held (start lower with --start).")?,
        }
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

fn capacity(peak: usize, measured: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
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
