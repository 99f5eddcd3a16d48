//! The `conversations` section: lifetime, history size, flood control.

use super::super::reader::{Object, Reader};
use super::super::schema::{ConversationsConfig, FloodControlConfig};
use std::time::Duration;

/// `conversations`: how long they live, how much history a turn sees, how bursts are answered.
pub(super) fn read(r: &mut Reader, root: &Object) -> ConversationsConfig {
    let empty = Object::new();
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
    ConversationsConfig {
        ttl: Duration::from_secs(
            r.integer(c, "conversations", "ttlSeconds", 60, 30 * 86_400, "seconds")
                .unwrap_or(1_800),
        ),
        history_limit: r
            .integer(c, "conversations", "historyLimit", 2, 1_000, "messages")
            .unwrap_or(40) as usize,
        flood_control,
    }
}
