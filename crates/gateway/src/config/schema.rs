//! The configuration's types: what a replica runs with once a file is read and checked. Readers
//! (`read/`) fill them from JSON; everything else reads them.

use super::defaults::DEFAULT_MAX_TEXT;
pub use super::redis::{
    ClusterConfig, RedisConfig, RedisDownMode, RedisTarget, RedisTls, SentinelConfig,
};
use crate::message::Channel;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// The audit trail of messages and replies, on a bounded disk.
    pub audit: AuditConfig,
}

/// The audit trail: one JSON line per accepted message and per reply sent, in files rotated by
/// size, compressed, and deleted oldest first to stay within a bound.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Where each replica writes (into a folder named after it); `None`: no audit trail.
    pub dir: Option<PathBuf>,
    /// A file is closed and compressed once it reaches this size.
    pub max_file_bytes: u64,
    /// Bound on the replica's files together; the oldest are deleted first to stay within it.
    pub max_total_bytes: u64,
    /// Files older than this are deleted.
    pub retention: Duration,
    /// What a record keeps of a message's text.
    pub text: AuditText,
    /// Records waiting for the writer at most; more are dropped (counted), never waited for.
    pub queue: usize,
}

/// What an audit record keeps of the text (`audit.text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditText {
    /// The text, encrypted with a key of the customer's own (deleted by `clawgate forget`).
    Full,
    /// Its SHA-256 only: proves what was said without keeping it.
    Hash,
    /// Nothing of it.
    Omit,
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
    /// A pending escalation nobody claimed for longer is overdue
    /// (`clawgate_escalations_unclaimed_overdue`, the alert's figure).
    pub claim_within: Duration,
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
    /// Bearer token of the operator's endpoints (`DELETE /v1/customers/{id}`); none = they are
    /// off.
    pub admin_token: Option<SecretString>,
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
