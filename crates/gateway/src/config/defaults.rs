//! Every default a key takes when the file leaves it out, in one place.

/// The port replicas listen on by default (the seed's first replica).
pub const DEFAULT_PORT: u16 = 18789;
/// Open client connections a replica takes by default: far above what nginx opens to it (a
/// few hundred) and what a surge of held web-chat requests needs, far below the open-files
/// limit the replica raises itself to.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// The start of every system prompt unless `agent.systemPrompt` says otherwise.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a customer-service assistant. Answer briefly, \
    politely and in the customer's language. Never invent facts such as delivery times or \
    tracking statuses; say when you do not know.";

/// Longest customer text answered by default: what WhatsApp and Telegram allow in one message.
pub const DEFAULT_MAX_TEXT: usize = 4096;
/// Longest text answered on the API channel by default: OpenAI clients send whole documents.
pub const DEFAULT_MAX_API_TEXT: usize = 32_768;

/// Messages sent longer ago than this are not answered by default: WhatsApp retries an
/// unacknowledged webhook for up to 7 days (Telegram keeps updates for 24 hours), so anything
/// older is a replay, e.g. of a signed webhook whose 8-day dedupe marker has expired.
pub const DEFAULT_MAX_MESSAGE_AGE_HOURS: u64 = 168;

/// Default answer to non-text messages.
pub const UNSUPPORTED_REPLY: [(&str, &str); 3] = [
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
pub const TOO_LONG_REPLY: [(&str, &str); 3] = [
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

/// `<hostname>-<port>`: unique per container and per port on one host.
pub fn default_replica_id(port: u16) -> String {
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
