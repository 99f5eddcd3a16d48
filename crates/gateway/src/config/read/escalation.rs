//! The `escalation` section: the dispatcher webhook and the escalations API.

use super::super::reader::{Object, Reader, ms};
use super::super::schema::EscalationConfig;
use super::super::validation::check_endpoint;
use secrecy::SecretString;
use std::time::Duration;

/// `escalation`: empty strings (`${DISPATCHER_WEBHOOK:-}`) mean "not configured".
pub(super) fn read(r: &mut Reader, root: &Object) -> EscalationConfig {
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
                "claimWithinMs",
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
        claim_within: ms(
            r.integer(e, p, "claimWithinMs", 1_000, 7 * 86_400_000, "milliseconds"),
            300_000,
        ),
    }
}
