//! What a configuration sets up, in words: the report `clawgate config check` prints for a valid
//! file. It reads the providers, channels and skills a replica would start with, so it lives
//! beside them rather than in `config` (which they all import).

use crate::config::{Config, ProviderKind};
use crate::llm::connections::Connections;
use crate::skills::SkillSet;
use std::fmt;

/// One line per part of a valid configuration, and the skills that would not load.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSummary {
    /// `(part, what it is set to)`, in the order a reader follows a message.
    pub settings: Vec<(String, String)>,
    /// Skill files that did not load (the replica starts without them).
    pub skill_errors: Vec<String>,
}

impl ConfigSummary {
    /// Describes `config`, loading its skills directory to name what would run.
    pub fn of(config: &Config) -> ConfigSummary {
        let mut settings = vec![
            ("listen".to_string(), config.gateway.listen.to_string()),
            ("replica id".to_string(), config.gateway.replica_id.clone()),
            ("redis".to_string(), config.redis.describe()),
        ];
        for (i, provider) in config.llm.providers.iter().enumerate() {
            settings.push((format!("provider {}", i + 1), describe_provider(provider)));
        }
        settings.push(("chain".into(), describe_chain(config)));
        settings.push(("escalation".into(), describe_escalation(config)));
        settings.push(("audit".into(), describe_audit(config)));
        settings.extend(
            crate::channels::describe(config)
                .into_iter()
                .map(|(channel, what)| (channel.to_string(), what)),
        );
        let (skills, skill_errors) = SkillSet::load(&config.skills.dir);
        settings.push((
            "skills".into(),
            format!(
                "{} from {}",
                skills.names().join(", "),
                config.skills.dir.display()
            ),
        ));
        ConfigSummary {
            settings,
            skill_errors: skill_errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The settings, one per line, labels aligned.
impl fmt::Display for ConfigSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (part, what) in &self.settings {
            writeln!(f, "  {:<13}{what}", format!("{part}:"))?;
        }
        Ok(())
    }
}

fn describe_provider(p: &crate::config::ProviderConfig) -> String {
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
    format!(
        "{} ({what}, timeout {} ms, {} {}{budget})",
        p.name,
        p.timeout.as_millis(),
        p.max_retries,
        if p.max_retries == 1 {
            "retry"
        } else {
            "retries"
        }
    )
}

fn describe_chain(config: &Config) -> String {
    let breaker = &config.llm.circuit_breaker;
    format!(
        "deadline {} ms; breaker opens after {} failures in a row or {:.0}% of {}+ attempts in {} s, probe every {} ms; hedging {}",
        config.llm.deadline.as_millis(),
        breaker.consecutive_failures,
        breaker.failure_ratio * 100.0,
        breaker.min_calls,
        breaker.window.as_secs(),
        breaker.probe_interval.as_millis(),
        if config.llm.hedging.enabled {
            "on"
        } else {
            "off"
        }
    )
}

fn describe_escalation(config: &Config) -> String {
    let escalation = &config.escalation;
    format!(
        "{}; API {}",
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
    )
}

fn describe_audit(config: &Config) -> String {
    let audit = &config.audit;
    let Some(dir) = &audit.dir else {
        return "off (audit.dir)".into();
    };
    format!(
        "{} (a folder per replica), files of {} KiB, at most {} MiB per replica, kept {} days; texts {}",
        dir.display(),
        audit.max_file_bytes / 1024,
        audit.max_total_bytes / (1024 * 1024),
        audit.retention.as_secs() / 86_400,
        match audit.text {
            crate::config::AuditText::Full =>
                "encrypted per customer (erased by `clawgate forget`)",
            crate::config::AuditText::Hash => "as SHA-256 only",
            crate::config::AuditText::Omit => "not kept",
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_are_described_part_by_part_with_no_secret() {
        let summary = ConfigSummary::of(&Config::builtin());
        let parts: Vec<&str> = summary.settings.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(&parts[..3], &["listen", "replica id", "redis"], "{summary}");
        assert!(
            parts.contains(&"chain") && parts.contains(&"webchat"),
            "{parts:?}"
        );
        assert!(parts.contains(&"skills"), "{parts:?}");
        let text = summary.to_string();
        assert!(text.contains("  listen:      "), "{text}");
        assert!(text.contains("no dispatcher webhook"), "{text}");
    }
}
