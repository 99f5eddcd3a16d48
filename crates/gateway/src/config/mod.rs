//! The configuration: one JSON file (`clawgate.json`), its schema, defaults, `${VAR}`
//! interpolation and validation.
//!
//! Loading never stops at the first problem: every error is reported with the file, the JSON path
//! and what was expected, so an operator fixes a config in one round. A file that holds only the
//! seed's `llm` block is complete; every other key has a default.

mod interpolate;
mod reader;
pub mod redis;

use crate::message::Channel;
use reader::{Object, Reader, join};
pub use redis::{RedisConfig, RedisDownMode, RedisTarget, RedisTls, SentinelConfig};
use secrecy::SecretString;
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration of one replica.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration came from (named in errors and in `/healthz`).
    pub source: String,
    /// Listening address and identity.
    pub gateway: GatewayConfig,
    /// Where state lives and what to do when it is unreachable.
    pub redis: RedisConfig,
    /// How long conversations live and how much history a turn sees.
    pub conversations: ConversationsConfig,
    /// The worker pool that runs turns.
    pub workers: WorkersConfig,
    /// The web-chat channel.
    pub webchat: WebchatConfig,
    /// Where skills are read from.
    pub skills: SkillsConfig,
    /// What the agent is told about itself.
    pub agent: AgentConfig,
    /// The provider chain (the seed's `llm` block).
    pub llm: LlmConfig,
    /// Messaging platforms and the OpenAI-compatible API.
    pub channels: ChannelsConfig,
    /// Handing conversations to a person: the dispatcher webhook and the escalations API.
    pub escalation: EscalationConfig,
}

/// Where escalated conversations go and who may resolve them.
#[derive(Debug, Clone)]
pub struct EscalationConfig {
    /// The dispatcher's webhook; none = escalations are only recorded (listed by
    /// `clawgate escalations list` and the API).
    pub webhook_url: Option<String>,
    /// Key of the `X-Clawgate-Signature-256` HMAC over each webhook body, so the dispatcher can
    /// tell the call came from this gateway.
    pub webhook_secret: Option<SecretString>,
    /// Bound on one webhook call.
    pub timeout: Duration,
    /// Webhook calls per event before it goes to the dead-letter stream.
    pub max_attempts: u32,
    /// Bearer token of `/v1/escalations`; none = the endpoint is off.
    pub api_token: Option<SecretString>,
    /// How long a pending escalation keeps the conversation's session (and so the hand-over)
    /// alive without messages; also how long resolved escalations stay readable.
    pub retention: Duration,
}

/// Messaging channels; each is off unless configured.
#[derive(Debug, Clone, Default)]
pub struct ChannelsConfig {
    /// WhatsApp Cloud API.
    pub whatsapp: Option<WhatsappConfig>,
    /// Telegram Bot API.
    pub telegram: Option<TelegramConfig>,
    /// The OpenAI-compatible chat-completions endpoint.
    pub api: Option<ApiConfig>,
    /// Answer to images, voice notes and other non-text messages, by language code.
    pub unsupported_reply: std::collections::BTreeMap<String, String>,
    /// Longest customer text answered by the model, in UTF-16 units, per channel (`whatsapp`,
    /// `telegram`, `webchat`, `api`); a longer one gets [`ChannelsConfig::too_long_reply`].
    pub max_text: std::collections::BTreeMap<Channel, usize>,
    /// Answer to a text over its channel's limit, by language code.
    pub too_long_reply: std::collections::BTreeMap<String, String>,
    /// Most messages one reply is sent as on WhatsApp and Telegram; a longer reply is cut.
    pub max_reply_parts: usize,
    /// Platform messages sent longer ago than this are not answered (a signed webhook replayed
    /// after dedupe forgot it); `None`: no limit (the default: the platforms' own example
    /// payloads, which developers paste to test, carry old timestamps).
    pub max_message_age: Option<Duration>,
}

impl ChannelsConfig {
    /// The longest text answered on `channel`.
    pub fn max_text(&self, channel: Channel) -> usize {
        self.max_text
            .get(&channel)
            .copied()
            .unwrap_or(DEFAULT_MAX_TEXT)
    }
}

/// Longest customer text answered by default: what WhatsApp and Telegram allow in one message.
pub const DEFAULT_MAX_TEXT: usize = 4096;
/// Longest text answered on the API channel by default: OpenAI clients send whole documents.
pub const DEFAULT_MAX_API_TEXT: usize = 32_768;

/// WhatsApp Cloud API credentials and endpoint.
#[derive(Debug, Clone)]
pub struct WhatsappConfig {
    /// Token Meta echoes in the webhook verification handshake.
    pub verify_token: SecretString,
    /// App secret: key of the `X-Hub-Signature-256` HMAC.
    pub app_secret: SecretString,
    /// Bearer token for the Graph API send endpoint.
    pub access_token: SecretString,
    /// Business phone number id replies are sent from (when the webhook does not name one).
    pub phone_number_id: String,
    /// Graph API base URL (`https://graph.facebook.com`; a mock in tests).
    pub api_base: String,
    /// Graph API version path segment, e.g. `v21.0`.
    pub api_version: String,
}

/// Telegram Bot API credentials and endpoint.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// The bot token (`123456:ABC…`), part of every API URL.
    pub bot_token: SecretString,
    /// Value Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (set with `setWebhook`).
    pub secret_token: SecretString,
    /// Bot API base URL (`https://api.telegram.org`; a mock in tests).
    pub api_base: String,
}

/// The OpenAI-compatible API channel.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer token clients must present.
    pub token: SecretString,
}

/// Listening address and identity of the replica.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Unique name of this replica: its Redis consumer name and its reply channel. Defaults to
    /// `<hostname>-<port>` so replicas on one host or in containers differ without configuration.
    pub replica_id: String,
    /// How long in-flight turns may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    /// How often the config file is re-read to pick up changes (zero: only on SIGHUP).
    pub config_reload_interval: Duration,
    /// A connection with no request in progress is closed after this (idle keep-alive
    /// connections, and connections that never send a request).
    pub idle_timeout: Duration,
    /// A request's head (request line and headers) must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its head is in (slow uploads).
    pub body_timeout: Duration,
    /// Open client connections at most; connections beyond are closed as soon as they are
    /// accepted, so a flood cannot use up the file descriptors the replica's own work needs.
    pub max_connections: usize,
}

/// Conversation lifetime and history size.
#[derive(Debug, Clone)]
pub struct ConversationsConfig {
    /// Idle time after which a conversation and its session expire (refreshed on every turn).
    pub ttl: Duration,
    /// Maximum number of history entries kept per conversation (user and assistant each count).
    pub history_limit: usize,
    /// How one customer's burst of messages is answered.
    pub flood_control: FloodControlConfig,
}

/// Flood control: a customer resending in panic must not starve the others.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodControlConfig {
    /// Turns one customer gets per minute at the steady rate (a few more at once); what they send
    /// beyond that waits and is answered together. 0 = off.
    pub messages_per_minute: u32,
    /// Messages that arrive while the customer's turn runs are answered together in the next
    /// turn instead of one reply each.
    pub coalesce: bool,
}

impl FloodControlConfig {
    /// Time between two turns of one customer at the steady rate; zero when off.
    pub fn turn_interval(&self) -> Duration {
        if self.messages_per_minute == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(60_000 / u64::from(self.messages_per_minute))
        }
    }
}

/// The worker pool and the durable inbox.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// Turns this replica runs at once.
    pub concurrency: usize,
    /// How long an inbox entry may sit unrefreshed in another consumer's pending list before it
    /// is taken over (its replica is presumed dead).
    pub claim_idle: Duration,
    /// Deliveries after which an entry goes to the dead-letter stream instead of being retried.
    pub max_deliveries: u64,
    /// Lifetime of a conversation lease; the holder renews it while its turn runs.
    pub lease_ttl: Duration,
    /// How long a message waits for an earlier message of its conversation that nobody is
    /// processing before it is answered anyway (a safety valve; normally never reached).
    pub order_wait: Duration,
    /// Inbox length above which ingress answers 503 (back-pressure instead of unbounded growth).
    pub inbox_max_length: u64,
    /// Inbox entries waiting for a worker above which `/readyz` says `overloaded` (the seed's
    /// load shedding signal); `None` = half of `inbox_max_length`.
    pub ready_max_lag: Option<u64>,
    /// Capacity of the in-process queue used while Redis is down.
    pub memory_queue: usize,
}

/// The web-chat channel.
#[derive(Debug, Clone)]
pub struct WebchatConfig {
    /// How long `POST /v1/webchat/messages` waits for the reply before answering 202.
    pub reply_wait: Duration,
    /// Web pages (exact origins, `https://track.example.nl`) whose scripts may call the web-chat
    /// API from the customer's browser; none by default, so only the gateway's own pages can.
    pub allowed_origins: Vec<String>,
    /// Whether every web-chat call needs the session's token (`webchat.sessionTokens`:
    /// `"required"`, the default, or `"off"` behind a server's own authentication).
    pub session_tokens: bool,
    /// Signs session tokens (`webchat.tokenSecret`); without it the replicas share a random
    /// key kept in Redis.
    pub token_secret: Option<SecretString>,
    /// How long a session token is valid after it was issued.
    pub token_ttl: Duration,
    /// Events kept per session for `Last-Event-ID` resumption (`webchat.eventsMaxLength`); older
    /// ones are trimmed, and they all expire with the conversation.
    pub events_max_length: usize,
    /// Whether web-chat turns ask the model to stream, so the customer reads the answer as it is
    /// written (`webchat.streaming`, default true).
    pub streaming: bool,
    /// The widget's title when the page gives none (`webchat.title`).
    pub title: String,
}

/// Where skills are read from.
#[derive(Debug, Clone)]
pub struct SkillsConfig {
    /// Folder holding one sub-folder per skill, each with a `SKILL.md`; relative paths are
    /// resolved against the config file's folder.
    pub dir: PathBuf,
    /// Lookup URL per skill name, replacing the one in its `SKILL.md` (so a deployment points
    /// the tracking skill at its own tracking API, with `${VAR}`).
    pub lookup_urls: std::collections::BTreeMap<String, String>,
    /// How often the skills folder is checked for changed `SKILL.md` files.
    pub reload_interval: Duration,
    /// Ask a model which skill a message is about when triggers cannot tell; `None` = off.
    pub classify: Option<ClassifyConfig>,
}

/// The optional model classification step of routing.
#[derive(Debug, Clone)]
pub struct ClassifyConfig {
    /// Bound on the classification call; past it the message goes to the general skill.
    pub timeout: Duration,
}

/// What the agent is told about itself.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The start of every system prompt.
    pub system_prompt: String,
    /// Language used when a conversation's language is not known.
    pub default_language: String,
    /// Languages the deployment serves (ISO 639-1): the ones a customer's language is detected
    /// among.
    pub languages: Vec<String>,
}

/// The provider chain, as in the seed's `llm` block.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Providers in fallback order; a `template` provider is appended when none is listed, so a
    /// turn always gets an answer.
    pub providers: Vec<ProviderConfig>,
    /// The seed's `rateLimiting` block: the budget of every `openai-compatible` provider that has
    /// no `rateLimiting` of its own.
    pub rate_limiting: Option<RateLimitingConfig>,
    /// Bound on a turn's whole walk down the chain (attempts, retries, backoff and rate-limit
    /// waits); the last provider always gets its chance inside it.
    pub deadline: Duration,
    /// When a provider is skipped without being asked, and how it is probed back.
    pub circuit_breaker: BreakerConfig,
    /// Asking the next provider too when one is slow.
    pub hedging: HedgingConfig,
}

/// Circuit-breaker thresholds, shared by every provider of the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed attempts in the window (0..=1) that opens the breaker…
    pub failure_ratio: f64,
    /// …once the window holds at least this many attempts.
    pub min_calls: u32,
    /// Length of the failure-ratio window.
    pub window: Duration,
    /// Pause between background probes of an open provider (one replica probes at a time).
    pub probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(30),
            probe_interval: Duration::from_secs(2),
        }
    }
}

/// Hedged requests: off by default, because a hedge spends a second provider's budget.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HedgingConfig {
    /// Whether a slow attempt is hedged at all.
    pub enabled: bool,
    /// Fixed delay before the hedge; `None` = the provider's observed p95 latency.
    pub after: Option<Duration>,
}

/// One provider of the chain.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Unique name, recorded on every answer it produces.
    pub name: String,
    /// Wire protocol and its settings.
    pub kind: ProviderKind,
    /// Upper bound on one attempt (the seed's `timeout`, milliseconds).
    pub timeout: Duration,
    /// Further attempts after a retryable failure (connect error, 5xx).
    pub max_retries: u32,
    /// The budget this provider's calls spend: its own `rateLimiting` block, or else the `llm`
    /// block's for an `openai-compatible` provider; `None` = unlimited (local models, template).
    pub rate_limit: Option<RateLimitingConfig>,
}

/// A provider's wire protocol.
#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// `POST {endpoint}/chat/completions` with a Bearer key.
    OpenAiCompatible {
        /// Base URL, e.g. `https://api.openai.com/v1`.
        endpoint: String,
        /// API key; empty means no `Authorization` header.
        api_key: SecretString,
        /// Model name.
        model: String,
        /// How calls travel to it.
        http: ProviderHttp,
    },
    /// `POST {endpoint}/api/chat` with `stream: false`.
    Ollama {
        /// Base URL, e.g. `http://ollama:11434`.
        endpoint: String,
        /// Model name.
        model: String,
        /// How calls travel to it.
        http: ProviderHttp,
    },
    /// The skill's canned answer; needs no model and never fails.
    Template,
}

/// How a provider's calls travel: which HTTP version, and how many calls share a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderHttp {
    /// `httpVersion`.
    pub version: HttpVersion,
    /// `streamsPerConnection`: calls one HTTP/2 connection carries at once before another
    /// connection is opened (under the provider's own stream limit, 100 or more on common
    /// servers, so no call waits for a free stream).
    pub streams_per_connection: usize,
}

impl Default for ProviderHttp {
    fn default() -> ProviderHttp {
        ProviderHttp {
            version: HttpVersion::Auto,
            streams_per_connection: 100,
        }
    }
}

/// A provider's `httpVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// `"auto"`: HTTP/2 where the TLS handshake agrees on it (https endpoints that offer it),
    /// else HTTP/1.1.
    Auto,
    /// `"1.1"`: never HTTP/2.
    Http1,
    /// `"2"`: always HTTP/2; on a plain http:// endpoint without negotiation (h2c, "prior
    /// knowledge"), for local servers that speak it.
    Http2,
}

/// The seed's `rateLimiting` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitingConfig {
    /// Cluster-wide request budget per minute.
    pub requests_per_minute: u64,
    /// Share of the budget one API key may use per minute.
    pub requests_per_key: Option<u64>,
    /// Requests allowed above the steady rate in a burst.
    pub burst_allowed: Option<u64>,
    /// Longest wait for budget before the turn spills to the next provider instead.
    pub max_wait: Duration,
}

/// Values from the command line or environment that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen` / `CLAWGATE_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--replica-id` / `CLAWGATE_REPLICA_ID`.
    pub replica_id: Option<String>,
    /// `--redis-url` / `CLAWGATE_REDIS_URL`.
    pub redis_url: Option<String>,
    /// `--redis-ack-replicas` / `CLAWGATE_REDIS_ACK_REPLICAS`.
    pub redis_ack_replicas: Option<u32>,
}

/// One configuration problem: the file, the JSON path and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file (or `<built-in defaults>`, or a flag name for overrides).
    pub file: String,
    /// JSON path such as `llm.providers[0].timeout`; empty for whole-file problems.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The port replicas listen on by default (the seed's first replica).
pub const DEFAULT_PORT: u16 = 18789;
/// Open client connections a replica takes by default: far above what nginx opens to it (a
/// few hundred) and what a surge of held web-chat requests needs, far below the open-files
/// limit the replica raises itself to.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
const DEFAULT_SYSTEM_PROMPT: &str = "You are a customer-service assistant. Answer briefly, \
    politely and in the customer's language. Never invent facts such as delivery times or \
    tracking statuses; say when you do not know.";

impl Config {
    /// Reads, interpolates and validates `path`, with the process environment for `${VAR}`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: source.clone(),
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &source, base_dir, &|name| std::env::var(name).ok())
    }

    /// The configuration used when no file is given: every default, template provider only.
    pub fn builtin() -> Config {
        Config::parse("{}", "<built-in defaults>", Path::new("."), &|_| None)
            .unwrap_or_else(|_| unreachable_defaults())
    }

    /// Parses a configuration document; `base_dir` anchors relative paths.
    pub fn parse(
        text: &str,
        source: &str,
        base_dir: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let fail = |path: String, message: String| {
            ConfigErrors(vec![ConfigError {
                file: source.to_string(),
                path,
                message,
            }])
        };
        let mut doc: Value = serde_json::from_str(text).map_err(|e| {
            fail(
                String::new(),
                format!(
                    "not valid JSON at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let mut interpolation_errors = Vec::new();
        interpolate::interpolate_tree(&mut doc, "", lookup, &mut interpolation_errors);
        let Value::Object(root) = doc else {
            return Err(fail(
                String::new(),
                "expected a JSON object at the top level".into(),
            ));
        };

        let mut r = Reader::default();
        for e in interpolation_errors {
            r.error(e.path, e.message);
        }
        let config = read_config(&mut r, &root, source, base_dir);
        if r.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(
                r.errors
                    .into_iter()
                    .map(|(path, message)| ConfigError {
                        file: source.to_string(),
                        path,
                        message,
                    })
                    .collect(),
            ))
        }
    }

    /// Applies command-line / environment overrides, validating them like file values.
    pub fn with_overrides(mut self, overrides: Overrides) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        if let Some(listen) = overrides.listen {
            let default_id = default_replica_id(self.gateway.listen.port());
            if self.gateway.replica_id == default_id {
                self.gateway.replica_id = default_replica_id(listen.port());
            }
            self.gateway.listen = listen;
        }
        if let Some(id) = overrides.replica_id {
            match check_replica_id(&id) {
                Ok(()) => self.gateway.replica_id = id,
                Err(message) => errors.push(ConfigError {
                    file: "--replica-id / CLAWGATE_REPLICA_ID".into(),
                    path: String::new(),
                    message,
                }),
            }
        }
        if let Some(url) = overrides.redis_url {
            match redis::parse_url(&url) {
                Ok(target) => {
                    self.redis.url = url;
                    self.redis.target = target;
                }
                Err(message) => errors.push(ConfigError {
                    file: "--redis-url / CLAWGATE_REDIS_URL".into(),
                    path: String::new(),
                    message,
                }),
            }
        }
        if let Some(replicas) = overrides.redis_ack_replicas {
            self.redis.ack_replicas = replicas;
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// `Config::builtin` parses `{}`, which cannot fail; this keeps the code panic-free regardless.
fn unreachable_defaults() -> Config {
    let mut r = Reader::default();
    read_config(
        &mut r,
        &Object::new(),
        "<built-in defaults>",
        Path::new("."),
    )
}

/// Messages sent longer ago than this are not answered by default: WhatsApp retries an
/// unacknowledged webhook for up to 7 days (Telegram keeps updates for 24 hours), so anything
/// older is a replay, e.g. of a signed webhook whose 8-day dedupe marker has expired.
const DEFAULT_MAX_MESSAGE_AGE_HOURS: u64 = 168;

fn read_config(r: &mut Reader, root: &Object, source: &str, base_dir: &Path) -> Config {
    r.check_keys(
        root,
        "",
        &[
            "gateway",
            "redis",
            "conversations",
            "workers",
            "webchat",
            "skills",
            "agent",
            "llm",
            "channels",
            "escalation",
        ],
    );
    let empty = Object::new();

    let g = r
        .section(
            root,
            "",
            "gateway",
            &[
                "listen",
                "replicaId",
                "shutdownGraceMs",
                "configReloadIntervalMs",
                "idleTimeoutMs",
                "headerTimeoutMs",
                "bodyTimeoutMs",
                "maxConnections",
            ],
        )
        .unwrap_or(&empty);
    let listen = r
        .value(
            g,
            "gateway",
            "listen",
            "an address such as \"0.0.0.0:18789\"",
            |v| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()),
        )
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let replica_id = match r.string(g, "gateway", "replicaId") {
        Some(id) => {
            if let Err(message) = check_replica_id(&id) {
                r.error("gateway.replicaId", message);
            }
            id
        }
        None => default_replica_id(listen.port()),
    };
    let gateway = GatewayConfig {
        listen,
        replica_id,
        shutdown_grace: ms(
            r.integer(g, "gateway", "shutdownGraceMs", 0, 600_000, "milliseconds"),
            20_000,
        ),
        config_reload_interval: ms(
            r.integer(
                g,
                "gateway",
                "configReloadIntervalMs",
                0,
                3_600_000,
                "milliseconds (0 = only on SIGHUP)",
            ),
            2_000,
        ),
        idle_timeout: ms(
            r.integer(
                g,
                "gateway",
                "idleTimeoutMs",
                100,
                3_600_000,
                "milliseconds",
            ),
            60_000,
        ),
        header_timeout: ms(
            r.integer(
                g,
                "gateway",
                "headerTimeoutMs",
                100,
                600_000,
                "milliseconds",
            ),
            10_000,
        ),
        body_timeout: ms(
            r.integer(g, "gateway", "bodyTimeoutMs", 100, 600_000, "milliseconds"),
            30_000,
        ),
        max_connections: r
            .integer(g, "gateway", "maxConnections", 1, 1_000_000, "connections")
            .map_or(DEFAULT_MAX_CONNECTIONS, |n| n as usize),
    };

    let redis = redis::read(r, root, base_dir);

    let c = r
        .section(
            root,
            "",
            "conversations",
            &["ttlSeconds", "historyLimit", "floodControl"],
        )
        .unwrap_or(&empty);
    let fc = r
        .section(
            c,
            "conversations",
            "floodControl",
            &["messagesPerMinute", "coalesce"],
        )
        .unwrap_or(&empty);
    let flood_control = FloodControlConfig {
        messages_per_minute: r
            .integer(
                fc,
                "conversations.floodControl",
                "messagesPerMinute",
                0,
                60_000,
                "turns per minute, 0 = off",
            )
            .unwrap_or(20) as u32,
        coalesce: r
            .boolean(fc, "conversations.floodControl", "coalesce")
            .unwrap_or(true),
    };
    let conversations = ConversationsConfig {
        ttl: Duration::from_secs(
            r.integer(c, "conversations", "ttlSeconds", 60, 30 * 86_400, "seconds")
                .unwrap_or(1_800),
        ),
        history_limit: r
            .integer(c, "conversations", "historyLimit", 2, 1_000, "messages")
            .unwrap_or(40) as usize,
        flood_control,
    };

    let w = r
        .section(
            root,
            "",
            "workers",
            &[
                "concurrency",
                "claimIdleMs",
                "maxDeliveries",
                "leaseTtlMs",
                "orderWaitMs",
                "inboxMaxLength",
                "readyMaxLag",
                "memoryQueue",
            ],
        )
        .unwrap_or(&empty);
    let workers = WorkersConfig {
        concurrency: r
            .integer(w, "workers", "concurrency", 1, 100_000, "turns at once")
            .unwrap_or(4_096) as usize,
        claim_idle: ms(
            r.integer(w, "workers", "claimIdleMs", 100, 3_600_000, "milliseconds"),
            5_000,
        ),
        max_deliveries: r
            .integer(w, "workers", "maxDeliveries", 1, 1_000, "deliveries")
            .unwrap_or(5),
        lease_ttl: ms(
            r.integer(w, "workers", "leaseTtlMs", 100, 3_600_000, "milliseconds"),
            10_000,
        ),
        order_wait: ms(
            r.integer(w, "workers", "orderWaitMs", 0, 3_600_000, "milliseconds"),
            30_000,
        ),
        inbox_max_length: r
            .integer(w, "workers", "inboxMaxLength", 1, 100_000_000, "entries")
            .unwrap_or(100_000),
        ready_max_lag: r.integer(w, "workers", "readyMaxLag", 1, 100_000_000, "entries"),
        memory_queue: r
            .integer(w, "workers", "memoryQueue", 1, 10_000_000, "messages")
            .unwrap_or(10_000) as usize,
    };

    let wc = r
        .section(
            root,
            "",
            "webchat",
            &[
                "replyWaitMs",
                "allowedOrigins",
                "sessionTokens",
                "tokenSecret",
                "tokenTtlSeconds",
                "eventsMaxLength",
                "streaming",
                "title",
            ],
        )
        .unwrap_or(&empty);
    let allowed_origins: Vec<String> = r
        .value(
            wc,
            "webchat",
            "allowedOrigins",
            "an array of origins such as \"https://track.example.nl\"",
            |v| {
                v.as_array()?
                    .iter()
                    .map(|o| o.as_str().map(str::to_string))
                    .collect()
            },
        )
        .unwrap_or_default();
    for (i, origin) in allowed_origins.iter().enumerate() {
        if let Err(message) = check_origin(origin) {
            r.error(format!("webchat.allowedOrigins[{i}]"), message);
        }
    }
    let webchat = WebchatConfig {
        reply_wait: ms(
            r.integer(wc, "webchat", "replyWaitMs", 0, 600_000, "milliseconds"),
            30_000,
        ),
        allowed_origins,
        session_tokens: r
            .choice(wc, "webchat", "sessionTokens", &["required", "off"])
            .is_none_or(|choice| choice == "required"),
        token_secret: r
            .string(wc, "webchat", "tokenSecret")
            .map(SecretString::from),
        token_ttl: Duration::from_secs(
            r.integer(wc, "webchat", "tokenTtlSeconds", 60, 90 * 86_400, "seconds")
                .unwrap_or(86_400),
        ),
        events_max_length: r
            .integer(wc, "webchat", "eventsMaxLength", 10, 100_000, "events")
            .unwrap_or(500) as usize,
        streaming: r.boolean(wc, "webchat", "streaming").unwrap_or(true),
        title: r
            .string(wc, "webchat", "title")
            .unwrap_or_else(|| "Chat".to_string()),
    };

    let s = r
        .section(
            root,
            "",
            "skills",
            &["dir", "lookupUrls", "reloadIntervalMs", "classify"],
        )
        .unwrap_or(&empty);
    let classify = match r.section(s, "skills", "classify", &["enabled", "timeoutMs"]) {
        Some(c) if r.boolean(c, "skills.classify", "enabled").unwrap_or(false) => {
            Some(ClassifyConfig {
                timeout: ms(
                    r.integer(c, "skills.classify", "timeoutMs", 1, 60_000, "milliseconds"),
                    3_000,
                ),
            })
        }
        _ => None,
    };
    let mut lookup_urls = std::collections::BTreeMap::new();
    if let Some(urls) = r.object(s, "skills", "lookupUrls") {
        for (skill, url) in urls {
            let path = format!("skills.lookupUrls.{skill}");
            match url.as_str() {
                Some(url) => {
                    check_endpoint(r, url, &path);
                    lookup_urls.insert(skill.clone(), url.to_string());
                }
                None => r.error(
                    path,
                    format!(
                        "expected a URL string with {{placeholders}}, found {}",
                        reader::describe(url)
                    ),
                ),
            }
        }
    }
    let dir = PathBuf::from(
        r.string(s, "skills", "dir")
            .unwrap_or_else(|| "skills".into()),
    );
    let skills = SkillsConfig {
        dir: if dir.is_absolute() {
            dir
        } else {
            base_dir.join(dir)
        },
        lookup_urls,
        classify,
        reload_interval: ms(
            r.integer(
                s,
                "skills",
                "reloadIntervalMs",
                100,
                3_600_000,
                "milliseconds",
            ),
            1_000,
        ),
    };

    let a = r
        .section(
            root,
            "",
            "agent",
            &["systemPrompt", "defaultLanguage", "languages"],
        )
        .unwrap_or(&empty);
    let default_language = r
        .string(a, "agent", "defaultLanguage")
        .unwrap_or_else(|| "en".into());
    let languages = r
        .value(
            a,
            "agent",
            "languages",
            "an array of language codes such as [\"nl\", \"en\", \"de\"]",
            |v| {
                v.as_array()?
                    .iter()
                    .map(|l| l.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
            },
        )
        .unwrap_or_else(|| {
            let mut languages = vec![default_language.clone()];
            for l in ["en", "nl", "de"] {
                if !languages.iter().any(|x| x == l) {
                    languages.push(l.to_string());
                }
            }
            languages
        });
    let agent = AgentConfig {
        system_prompt: r
            .string(a, "agent", "systemPrompt")
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.into()),
        default_language,
        languages,
    };

    let llm = read_llm(r, root);
    let channels = read_channels(r, root);
    let escalation = read_escalation(r, root);
    Config {
        source: source.to_string(),
        gateway,
        redis,
        conversations,
        workers,
        webchat,
        skills,
        agent,
        llm,
        channels,
        escalation,
    }
}

fn read_escalation(r: &mut Reader, root: &Object) -> EscalationConfig {
    let empty = Object::new();
    let p = "escalation";
    let e = r
        .section(
            root,
            "",
            p,
            &[
                "webhookUrl",
                "webhookSecret",
                "timeoutMs",
                "maxAttempts",
                "apiToken",
                "retentionSeconds",
            ],
        )
        .unwrap_or(&empty);
    // An empty string (`${DISPATCHER_WEBHOOK:-}`) means "not configured".
    let non_empty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let webhook_url = non_empty(r.string_or_empty(e, p, "webhookUrl"));
    if let Some(url) = &webhook_url {
        check_endpoint(r, url, "escalation.webhookUrl");
    }
    EscalationConfig {
        webhook_url,
        webhook_secret: non_empty(r.string_or_empty(e, p, "webhookSecret")).map(SecretString::from),
        timeout: ms(
            r.integer(e, p, "timeoutMs", 1, 120_000, "milliseconds"),
            5_000,
        ),
        max_attempts: r
            .integer(e, p, "maxAttempts", 1, 20, "attempts")
            .unwrap_or(4) as u32,
        api_token: non_empty(r.string_or_empty(e, p, "apiToken")).map(SecretString::from),
        retention: Duration::from_secs(
            r.integer(e, p, "retentionSeconds", 60, 90 * 86_400, "seconds")
                .unwrap_or(7 * 86_400),
        ),
    }
}

/// Default answer to non-text messages.
const UNSUPPORTED_REPLY: [(&str, &str); 3] = [
    (
        "en",
        "Sorry, I can only read text messages. Please type your question.",
    ),
    (
        "nl",
        "Sorry, ik kan alleen tekstberichten lezen. Typ je vraag alsjeblieft.",
    ),
    (
        "de",
        "Entschuldigung, ich kann nur Textnachrichten lesen. Bitte tippen Sie Ihre Frage.",
    ),
];

/// The answer to a text over its channel's limit, by language, unless the config says otherwise.
const TOO_LONG_REPLY: [(&str, &str); 3] = [
    (
        "en",
        "Sorry, that message is too long for me. Could you send your question in a few sentences?",
    ),
    (
        "nl",
        "Sorry, dat bericht is te lang voor mij. Kun je je vraag in een paar zinnen sturen?",
    ),
    (
        "de",
        "Entschuldigung, diese Nachricht ist zu lang für mich. Könnten Sie Ihre Frage in ein paar Sätzen schicken?",
    ),
];

fn read_channels(r: &mut Reader, root: &Object) -> ChannelsConfig {
    let empty = Object::new();
    let c = r
        .section(
            root,
            "",
            "channels",
            &[
                "whatsapp",
                "telegram",
                "api",
                "unsupportedReply",
                "tooLongReply",
                "maxTextChars",
                "maxReplyParts",
                "maxMessageAgeHours",
            ],
        )
        .unwrap_or(&empty);
    let p = "channels.whatsapp";
    let whatsapp = r
        .section(
            c,
            "channels",
            "whatsapp",
            &[
                "verifyToken",
                "appSecret",
                "accessToken",
                "phoneNumberId",
                "apiBase",
                "apiVersion",
            ],
        )
        .map(|w| WhatsappConfig {
            verify_token: required_secret(r, w, p, "verifyToken", "the webhook verify token"),
            app_secret: required_secret(r, w, p, "appSecret", "the Meta app secret"),
            access_token: required_secret(r, w, p, "accessToken", "a Graph API access token"),
            phone_number_id: required_string(
                r,
                w,
                p,
                "phoneNumberId",
                "the business phone number id",
            ),
            api_base: api_base(r, w, p, "https://graph.facebook.com"),
            api_version: r
                .string(w, p, "apiVersion")
                .unwrap_or_else(|| "v21.0".into()),
        });
    let p = "channels.telegram";
    let telegram = r
        .section(
            c,
            "channels",
            "telegram",
            &["botToken", "secretToken", "apiBase"],
        )
        .map(|t| TelegramConfig {
            bot_token: required_secret(r, t, p, "botToken", "the bot token from @BotFather"),
            secret_token: required_secret(r, t, p, "secretToken", "the webhook secret token"),
            api_base: api_base(r, t, p, "https://api.telegram.org"),
        });
    let api = r
        .section(c, "channels", "api", &["token"])
        .map(|a| ApiConfig {
            token: required_secret(
                r,
                a,
                "channels.api",
                "token",
                "the bearer token clients present",
            ),
        });
    let mut unsupported_reply: std::collections::BTreeMap<String, String> = UNSUPPORTED_REPLY
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect();
    if let Some(replies) = r.object(c, "channels", "unsupportedReply") {
        for language in replies.keys() {
            if let Some(text) = r.string(replies, "channels.unsupportedReply", language) {
                unsupported_reply.insert(language.clone(), text);
            }
        }
    }
    let mut too_long_reply: std::collections::BTreeMap<String, String> = TOO_LONG_REPLY
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect();
    if let Some(replies) = r.object(c, "channels", "tooLongReply") {
        for language in replies.keys() {
            if let Some(text) = r.string(replies, "channels.tooLongReply", language) {
                too_long_reply.insert(language.clone(), text);
            }
        }
    }
    let mut max_text = std::collections::BTreeMap::from([
        (Channel::Whatsapp, DEFAULT_MAX_TEXT),
        (Channel::Telegram, DEFAULT_MAX_TEXT),
        (Channel::Webchat, DEFAULT_MAX_TEXT),
        (Channel::Api, DEFAULT_MAX_API_TEXT),
    ]);
    if let Some(limits) = r.object(c, "channels", "maxTextChars") {
        for name in limits.keys() {
            let path = "channels.maxTextChars";
            let Some(channel) = [
                Channel::Whatsapp,
                Channel::Telegram,
                Channel::Webchat,
                Channel::Api,
            ]
            .into_iter()
            .find(|c| c.as_str() == name) else {
                r.error(
                    format!("{path}.{name}"),
                    "unknown channel; expected whatsapp, telegram, webchat or api",
                );
                continue;
            };
            if let Some(limit) = r.integer(limits, path, name, 1, 1_000_000, "UTF-16 units") {
                max_text.insert(channel, limit as usize);
            }
        }
    }
    let max_reply_parts = r
        .integer(c, "channels", "maxReplyParts", 1, 100, "messages")
        .map_or(5, |n| n as usize);
    let max_message_age = r
        .integer(
            c,
            "channels",
            "maxMessageAgeHours",
            0,
            10 * 365 * 24,
            "hours, 0 = no limit",
        )
        .or(Some(DEFAULT_MAX_MESSAGE_AGE_HOURS))
        .filter(|hours| *hours > 0)
        .map(|hours| Duration::from_secs(hours * 3_600));
    ChannelsConfig {
        whatsapp,
        telegram,
        api,
        unsupported_reply,
        max_text,
        too_long_reply,
        max_reply_parts,
        max_message_age,
    }
}

fn required_string(r: &mut Reader, obj: &Object, prefix: &str, key: &str, what: &str) -> String {
    let value = r.string(obj, prefix, key);
    if value.is_none() && obj.get(key).is_none() {
        r.error(join(prefix, key), format!("missing; expected {what}"));
    }
    value.unwrap_or_default()
}

fn required_secret(
    r: &mut Reader,
    obj: &Object,
    prefix: &str,
    key: &str,
    what: &str,
) -> SecretString {
    SecretString::from(required_string(r, obj, prefix, key, what))
}

fn api_base(r: &mut Reader, obj: &Object, prefix: &str, default: &str) -> String {
    match r.string(obj, prefix, "apiBase") {
        Some(base) => {
            check_endpoint(r, &base, &join(prefix, "apiBase"));
            base.trim_end_matches('/').to_string()
        }
        None => default.to_string(),
    }
}

fn read_llm(r: &mut Reader, root: &Object) -> LlmConfig {
    let empty = Object::new();
    let l = r
        .section(
            root,
            "",
            "llm",
            &[
                "providers",
                "rateLimiting",
                "deadlineMs",
                "circuitBreaker",
                "hedging",
            ],
        )
        .unwrap_or(&empty);
    let mut providers = Vec::new();
    match l.get("providers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("llm.providers[{i}]");
                match item {
                    Value::Object(p) => {
                        if let Some(provider) = read_provider(r, p, &path) {
                            if providers
                                .iter()
                                .any(|q: &ProviderConfig| q.name == provider.name)
                            {
                                r.error(
                                    join(&path, "name"),
                                    format!(
                                        "duplicate provider name \"{}\"; names must be unique",
                                        provider.name
                                    ),
                                );
                            }
                            providers.push(provider);
                        }
                    }
                    other => r.error(
                        path,
                        format!(
                            "expected a provider object, found {}",
                            reader::describe(other)
                        ),
                    ),
                }
            }
        }
        Some(other) => r.error(
            "llm.providers",
            format!(
                "expected an array of providers, found {}",
                reader::describe(other)
            ),
        ),
    }
    if !providers
        .iter()
        .any(|p| matches!(p.kind, ProviderKind::Template))
    {
        providers.push(ProviderConfig {
            name: "template".into(),
            kind: ProviderKind::Template,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            rate_limit: None,
        });
    }

    let rate_limiting = read_rate_limiting(r, l, "llm");
    for provider in &mut providers {
        if provider.rate_limit.is_none()
            && matches!(provider.kind, ProviderKind::OpenAiCompatible { .. })
        {
            provider.rate_limit = rate_limiting.clone();
        }
    }
    let defaults = BreakerConfig::default();
    let circuit_breaker = match r.section(
        l,
        "llm",
        "circuitBreaker",
        &[
            "consecutiveFailures",
            "failureRatio",
            "minCalls",
            "windowMs",
            "probeIntervalMs",
        ],
    ) {
        None => defaults,
        Some(b) => {
            let p = "llm.circuitBreaker";
            BreakerConfig {
                consecutive_failures: r
                    .integer(b, p, "consecutiveFailures", 1, 1_000, "failed attempts")
                    .map_or(defaults.consecutive_failures, |n| n as u32),
                failure_ratio: r
                    .number(b, p, "failureRatio", 0.01, 1.0, "share of failed attempts")
                    .unwrap_or(defaults.failure_ratio),
                min_calls: r
                    .integer(b, p, "minCalls", 1, 100_000, "attempts")
                    .map_or(defaults.min_calls, |n| n as u32),
                window: r
                    .integer(b, p, "windowMs", 1_000, 3_600_000, "milliseconds")
                    .map_or(defaults.window, Duration::from_millis),
                probe_interval: r
                    .integer(b, p, "probeIntervalMs", 100, 600_000, "milliseconds")
                    .map_or(defaults.probe_interval, Duration::from_millis),
            }
        }
    };
    let hedging = match r.section(l, "llm", "hedging", &["enabled", "afterMs"]) {
        None => HedgingConfig::default(),
        Some(h) => HedgingConfig {
            enabled: r.boolean(h, "llm.hedging", "enabled").unwrap_or(false),
            after: r
                .integer(h, "llm.hedging", "afterMs", 1, 600_000, "milliseconds")
                .map(Duration::from_millis),
        },
    };
    LlmConfig {
        providers,
        rate_limiting,
        deadline: ms(
            r.integer(l, "llm", "deadlineMs", 100, 600_000, "milliseconds"),
            20_000,
        ),
        circuit_breaker,
        hedging,
    }
}

/// A `rateLimiting` block under `parent` (the `llm` block or one provider).
fn read_rate_limiting(r: &mut Reader, parent: &Object, prefix: &str) -> Option<RateLimitingConfig> {
    let rl = r.section(
        parent,
        prefix,
        "rateLimiting",
        &[
            "requestsPerMinute",
            "requestsPerKey",
            "burstAllowed",
            "maxWaitMs",
        ],
    )?;
    let p = join(prefix, "rateLimiting");
    let requests_per_minute = r.integer(
        rl,
        &p,
        "requestsPerMinute",
        1,
        10_000_000,
        "requests per minute",
    );
    if requests_per_minute.is_none() && rl.get("requestsPerMinute").is_none() {
        r.error(
            join(&p, "requestsPerMinute"),
            "missing; expected an integer (requests per minute)",
        );
    }
    Some(RateLimitingConfig {
        requests_per_minute: requests_per_minute.unwrap_or(60),
        requests_per_key: r.integer(
            rl,
            &p,
            "requestsPerKey",
            1,
            10_000_000,
            "requests per minute",
        ),
        burst_allowed: r.integer(rl, &p, "burstAllowed", 0, 10_000_000, "requests"),
        max_wait: ms(
            r.integer(rl, &p, "maxWaitMs", 0, 60_000, "milliseconds"),
            250,
        ),
    })
}

fn read_provider(r: &mut Reader, p: &Object, path: &str) -> Option<ProviderConfig> {
    r.check_keys(
        p,
        path,
        &[
            "name",
            "type",
            "endpoint",
            "apiKey",
            "model",
            "timeout",
            "maxRetries",
            "rateLimiting",
            "httpVersion",
            "streamsPerConnection",
        ],
    );
    let name = r.string(p, path, "name");
    if name.is_none() && p.get("name").is_none() {
        r.error(
            join(path, "name"),
            "missing; expected the provider's unique name",
        );
    }
    let kinds = ["openai-compatible", "ollama", "template"];
    let kind = r.choice(p, path, "type", &kinds);
    if kind.is_none() && p.get("type").is_none() {
        r.error(
            join(path, "type"),
            "missing; expected one of \"openai-compatible\", \"ollama\", \"template\"",
        );
    }
    let timeout = ms(
        r.integer(p, path, "timeout", 1, 600_000, "milliseconds"),
        30_000,
    );
    let max_retries = r
        .integer(p, path, "maxRetries", 0, 10, "retries")
        .unwrap_or(0) as u32;

    let http = ProviderHttp {
        version: match r
            .choice(p, path, "httpVersion", &["auto", "1.1", "2"])
            .as_deref()
        {
            Some("1.1") => HttpVersion::Http1,
            Some("2") => HttpVersion::Http2,
            _ => HttpVersion::Auto,
        },
        streams_per_connection: r
            .integer(p, path, "streamsPerConnection", 1, 1_000, "streams")
            .map_or(ProviderHttp::default().streams_per_connection, |n| {
                n as usize
            }),
    };
    let required = |r: &mut Reader, key: &str, what: &str| required_string(r, p, path, key, what);
    let kind = match kind?.as_str() {
        "openai-compatible" => {
            let endpoint = required(
                r,
                "endpoint",
                "the API base URL, e.g. \"https://api.openai.com/v1\"",
            );
            check_endpoint(r, &endpoint, &join(path, "endpoint"));
            ProviderKind::OpenAiCompatible {
                endpoint,
                api_key: SecretString::from(
                    r.string_or_empty(p, path, "apiKey").unwrap_or_default(),
                ),
                model: required(r, "model", "a model name, e.g. \"gpt-4o-mini\""),
                http,
            }
        }
        "ollama" => {
            let endpoint = required(
                r,
                "endpoint",
                "the Ollama base URL, e.g. \"http://ollama:11434\"",
            );
            check_endpoint(r, &endpoint, &join(path, "endpoint"));
            ProviderKind::Ollama {
                endpoint,
                model: required(r, "model", "a model name, e.g. \"llama3.1:8b\""),
                http,
            }
        }
        _ => ProviderKind::Template,
    };
    let rate_limit = read_rate_limiting(r, p, path);
    Some(ProviderConfig {
        name: name?,
        kind,
        timeout,
        max_retries,
        rate_limit,
    })
}

fn check_endpoint(r: &mut Reader, endpoint: &str, path: &str) {
    if endpoint.is_empty() {
        return;
    }
    match reqwest::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => r.error(
            path,
            format!("expected an http:// or https:// URL, found \"{endpoint}\""),
        ),
    }
}

fn check_replica_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to 64 letters, digits, '-', '_' or '.', found \"{id}\""
        ))
    }
}

/// `<hostname>-<port>`: unique per container and per port on one host.
fn default_replica_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(48)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "clawgate".into());
    format!("{host}-{port}")
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after (no path, no slash).
fn check_origin(origin: &str) -> Result<(), String> {
    let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https")
            && !rest.is_empty()
            && !rest.contains(['/', '?', '#', '*'])
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected an origin such as \"https://track.example.nl\" (scheme and host, no path), found \"{origin}\""
        ))
    }
}

/// `value` milliseconds, or `default` when the key is absent.
fn ms(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, "clawgate.json", Path::new("/etc/clawgate"), &|name| {
            (name == "LLM_API_KEY").then(|| "sk-test".to_string())
        })
    }

    #[test]
    fn the_seed_llm_block_alone_is_a_complete_config() {
        let seed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/openclaw-llm.json"
        ))
        .unwrap_or_default();
        let config = match parse(&seed) {
            Ok(c) => c,
            Err(e) => panic!("seed config rejected: {e}"),
        };
        let names: Vec<&str> = config
            .llm
            .providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, vec!["cloud-primary", "local-fallback", "template"]);
        assert_eq!(
            config.llm.providers[0].timeout,
            Duration::from_millis(10_000)
        );
        assert_eq!(config.llm.providers[0].max_retries, 2);
        assert_eq!(
            config
                .llm
                .rate_limiting
                .as_ref()
                .map(|r| r.requests_per_minute),
            Some(60)
        );
        assert_eq!(config.conversations.ttl, Duration::from_secs(1_800));
        assert_eq!(config.redis.down_mode, RedisDownMode::Degrade);
        assert!(config.webchat.reply_wait >= Duration::from_secs(25));
        assert_eq!(config.skills.dir, PathBuf::from("/etc/clawgate/skills"));
    }

    #[test]
    fn allowed_origins_are_exact_origins() {
        let config = parse(r#"{"webchat": {"allowedOrigins": ["https://track.velocity.example", "http://localhost:8080"]}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.webchat.allowed_origins.len(), 2);
        assert!(parse(r#"{}"#).is_ok_and(|c| c.webchat.allowed_origins.is_empty()));
        let errors = match parse(
            r#"{"webchat": {"allowedOrigins": ["https://ok.example", "https://track.example/chat", "*"]}}"#,
        ) {
            Ok(_) => panic!("accepted a path and a wildcard"),
            Err(e) => e.to_string(),
        };
        assert!(
            errors.contains("webchat.allowedOrigins[1]: expected an origin"),
            "{errors}"
        );
        assert!(
            errors.contains("webchat.allowedOrigins[2]: expected an origin"),
            "{errors}"
        );
        assert!(!errors.contains("allowedOrigins[0]"), "{errors}");
    }

    #[test]
    fn every_error_names_file_path_and_expectation() {
        let text = r#"{
            "redis": {"url": "http://nope", "downMode": "panic"},
            "workers": {"concurrency": 0},
            "llm": {"providers": [
                {"name": "a", "type": "openai-compatible", "endpoint": "ftp://x", "model": "m", "timeout": "10s"},
                {"type": "gpt"},
                {"name": "a", "type": "ollama", "model": "m", "endpoint": "http://x", "httpVersion": "3", "streamsPerConnection": 0}
            ]},
            "webchat": {"replyWaitMS": 5}
        }"#;
        let errors = match parse(text) {
            Ok(_) => panic!("accepted a broken config"),
            Err(e) => e.0,
        };
        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            "clawgate.json: redis.url: expected a Redis URL",
            "clawgate.json: redis.downMode: expected one of \"degrade\", \"reject\", found the string \"panic\"",
            "clawgate.json: workers.concurrency: expected an integer from 1 to 100000",
            "clawgate.json: llm.providers[0].timeout: expected an integer from 1 to 600000 (milliseconds), found the string \"10s\"",
            "clawgate.json: llm.providers[0].endpoint: expected an http:// or https:// URL",
            "clawgate.json: llm.providers[1].type: expected one of",
            "clawgate.json: llm.providers[1].name: missing",
            "clawgate.json: llm.providers[2].httpVersion: expected one of \"auto\", \"1.1\", \"2\", found the string \"3\"",
            "clawgate.json: llm.providers[2].streamsPerConnection: expected an integer from 1 to 1000 (streams), found the number 0",
            "clawgate.json: llm.providers[2].name: duplicate provider name \"a\"",
            "clawgate.json: webchat.replyWaitMS: unknown key (did you mean `replyWaitMs`?)",
        ];
        for e in expect {
            assert!(
                rendered.iter().any(|r| r.starts_with(e)),
                "missing error starting with {e:?} in:\n{}",
                rendered.join("\n")
            );
        }
        assert_eq!(rendered.len(), expect.len(), "{}", rendered.join("\n"));
    }

    #[test]
    fn a_provider_s_http_version_and_streams_are_read_with_defaults() {
        let config = match parse(
            r#"{"llm": {"providers": [
                {"name": "cloud", "type": "openai-compatible", "endpoint": "https://x/v1", "model": "m"},
                {"name": "vllm", "type": "openai-compatible", "endpoint": "http://vllm:8000/v1", "model": "m", "httpVersion": "2", "streamsPerConnection": 50},
                {"name": "local", "type": "ollama", "endpoint": "http://ollama:11434", "model": "m", "httpVersion": "1.1"}
            ]}}"#,
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let http: Vec<Option<ProviderHttp>> = config
            .llm
            .providers
            .iter()
            .map(|p| match &p.kind {
                ProviderKind::OpenAiCompatible { http, .. } | ProviderKind::Ollama { http, .. } => {
                    Some(http.clone())
                }
                ProviderKind::Template => None,
            })
            .collect();
        let expected = |version, streams_per_connection| {
            Some(ProviderHttp {
                version,
                streams_per_connection,
            })
        };
        assert_eq!(
            http,
            vec![
                expected(HttpVersion::Auto, 100),
                expected(HttpVersion::Http2, 50),
                expected(HttpVersion::Http1, 100),
                None,
            ]
        );
    }

    #[test]
    fn a_missing_variable_is_named() {
        let errors = match Config::parse(
            r#"{"llm": {"providers": [{"name": "p", "type": "openai-compatible", "endpoint": "https://x/v1", "model": "m", "apiKey": "${LLM_API_KEY}"}]}}"#,
            "c.json",
            Path::new("."),
            &|_| None,
        ) {
            Ok(_) => panic!("accepted a missing variable"),
            Err(e) => e,
        };
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "llm.providers[0].apiKey");
        assert!(errors.0[0].message.contains("LLM_API_KEY"));
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let errors = match parse("{\n  \"gateway\": ,\n}") {
            Ok(_) => panic!("accepted invalid JSON"),
            Err(e) => e,
        };
        assert!(errors.to_string().contains("line 2"), "{errors}");
    }

    #[test]
    fn overrides_win_and_are_validated() {
        let config = Config::builtin();
        let overridden = config
            .clone()
            .with_overrides(Overrides {
                listen: Some("127.0.0.1:20000".parse().unwrap_or(config.gateway.listen)),
                replica_id: Some("r-2".into()),
                redis_url: Some("redis://127.0.0.1:7000".into()),
                redis_ack_replicas: None,
            })
            .map_err(|e| e.to_string());
        let overridden = match overridden {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(overridden.gateway.listen.port(), 20000);
        assert_eq!(overridden.gateway.replica_id, "r-2");
        assert_eq!(overridden.redis.url, "redis://127.0.0.1:7000");
        let bad = config.with_overrides(Overrides {
            replica_id: Some("bad id{".into()),
            ..Overrides::default()
        });
        assert!(bad.is_err());
    }

    #[test]
    fn without_a_template_provider_one_is_appended() {
        let config = Config::builtin();
        assert_eq!(config.llm.providers.len(), 1);
        assert!(matches!(
            config.llm.providers[0].kind,
            ProviderKind::Template
        ));
    }

    proptest::proptest! {
        /// Any config file is a config or a list of errors naming the file, never a panic.
        #[test]
        fn any_config_text_is_a_config_or_named_errors(body in crate::arbitrary::body()) {
            let text = String::from_utf8_lossy(&body);
            if let Err(errors) = parse(&text) {
                proptest::prop_assert!(errors.0.iter().all(|e| e.file == "clawgate.json"));
                proptest::prop_assert!(!errors.0.is_empty());
            }
        }
    }
}
