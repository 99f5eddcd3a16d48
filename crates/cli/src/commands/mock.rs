//! `clawgate mock llm | platforms | dispatcher | tracking`: the fakes of outside services, run
//! as processes for tests, load tests and demos (see the fakes library).

use super::shutdown_signal;
use anyhow::Context;
use clawgate_fakes::{mock_dispatcher, mock_llm, mock_platforms, mock_tracking};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;

/// `clawgate mock …`.
#[derive(clap::Subcommand)]
pub enum MockCommand {
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

/// The mock LLM's behaviour at start.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MockMode {
    Ok,
    Error,
    RateLimited,
    Hang,
    Slow,
}

/// Runs a fake until SIGTERM or SIGINT.
pub async fn run(command: MockCommand) -> anyhow::Result<ExitCode> {
    match command {
        MockCommand::Llm {
            port,
            host,
            latency_ms,
            jitter_ms,
            mode,
        } => {
            let options = mock_llm::Options {
                mode: match mode {
                    MockMode::Ok => mock_llm::Mode::Ok,
                    MockMode::Error => mock_llm::Mode::Error,
                    MockMode::RateLimited => mock_llm::Mode::RateLimited,
                    MockMode::Hang => mock_llm::Mode::Hang,
                    MockMode::Slow => mock_llm::Mode::Slow,
                },
                latency_ms,
                jitter_ms,
            };
            let listener = bind(SocketAddr::new(host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, latency_ms, jitter_ms, "mock LLM listening (OpenAI: /v1/chat/completions, Ollama: /api/chat, control: /control)");
            until_stopped("mock LLM", mock_llm::serve(listener, options)).await
        }
        MockCommand::Platforms { port, host } => {
            let listener = bind(SocketAddr::new(host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, "mock platforms listening (WhatsApp: /{{version}}/{{phone}}/messages, Telegram: /bot{{token}}/sendMessage, sent: /sent, control: /control)");
            until_stopped("mock platforms", mock_platforms::serve(listener)).await
        }
        MockCommand::Dispatcher { port, host } => {
            let listener = bind(SocketAddr::new(host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, "mock dispatcher listening (webhook: POST /events, received: GET /events, control: /control)");
            until_stopped("mock dispatcher", mock_dispatcher::serve(listener)).await
        }
        MockCommand::Tracking { port, host, data } => {
            let packages = mock_tracking::load_packages(&data)?;
            let listener = bind(SocketAddr::new(host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, packages = packages.len(), "mock tracking API listening (GET /packages/{{tracking_number}}, control: /control)");
            until_stopped("mock tracking", mock_tracking::serve(listener, packages)).await
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until the server fails or a signal stops it.
async fn until_stopped(
    what: &str,
    server: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    tokio::select! {
        served = server => served.with_context(|| format!("{what} server failed"))?,
        _ = shutdown.cancelled() => {}
    }
    Ok(ExitCode::SUCCESS)
}
