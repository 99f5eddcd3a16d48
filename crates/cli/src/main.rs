//! The `clawgate` command line. It parses arguments and calls the library; nothing else lives
//! here.

mod commands;

use clap::{Parser, Subcommand, ValueEnum};
use clawgate_gateway::{env_vars, logging};
use commands::audit::AuditCommand;
use commands::cluster::{ClusterCommand, NginxConfigArgs};
use commands::config::ConfigCommand;
use commands::deadletter::DeadletterCommand;
use commands::escalations::EscalationsCommand;
use commands::forget::ForgetArgs;
use commands::loadtest::LoadtestArgs;
use commands::mock::MockCommand;
use commands::redis::RedisCommand;
use commands::serve::ServeArgs;
use std::path::PathBuf;
use std::process::ExitCode;

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

/// The commands.
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
    /// The audit trail of messages and replies.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Erase a customer on request: their conversation, session, replies, hand-over, events and
    /// pending work in Redis, and (by deleting their key) the texts of their audit records.
    Forget(ForgetArgs),
    /// Maintain the Redis the state lives in: move it to a Redis Cluster or another key layout.
    Redis {
        #[command(subcommand)]
        command: RedisCommand,
    },
    /// Run the reference deployment on this host: Redis, replicas and nginx, supervised.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Print the nginx config for a static deployment of replicas on consecutive ports.
    NginxConfig(NginxConfigArgs),
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
            Command::Serve(args) => commands::serve::run(args).await,
            Command::Config { command } => Ok(commands::config::run(command)),
            Command::Deadletter { command } => commands::deadletter::run(command).await,
            Command::Escalations { command } => commands::escalations::run(command).await,
            Command::Audit { command } => commands::audit::run(command).await,
            Command::Forget(args) => commands::forget::run(args).await,
            Command::Redis { command } => commands::redis::run(command).await,
            Command::Cluster { command } => commands::cluster::run(command).await,
            Command::NginxConfig(args) => commands::cluster::nginx_config(args),
            Command::Loadtest(args) => commands::loadtest::run(*args).await,
            Command::Capacity {
                peak_concurrent,
                measured,
            } => commands::loadtest::capacity(peak_concurrent, measured.as_deref()),
            Command::Mock { command } => commands::mock::run(command).await,
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
