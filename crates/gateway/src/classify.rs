//! The optional model step of routing: when a message's triggers cannot tell which skill it is
//! about (no match and no conversation yet, or a tie), a model is asked to pick one of the
//! candidates by name. Off by default (`skills.classify.enabled`): it costs a model call on
//! such messages. Whatever goes wrong (timeout, every model down, an answer naming no
//! candidate), routing falls back to what the triggers said; classification never fails a turn.

use crate::llm::chain::ProviderChain;
use crate::llm::{ChatMessage, Prompt};
use crate::skills::Skill;
use crate::telemetry;
use std::time::Duration;

/// The candidate a model picks for `text`, or `None`. `rate_key` spends the message's budget.
pub async fn classify<'a>(
    chain: &ProviderChain,
    candidates: &[&'a Skill],
    text: &str,
    rate_key: &str,
    timeout: Duration,
) -> Option<&'a Skill> {
    let prompt = prompt(candidates, text);
    let outcome = match tokio::time::timeout(timeout, chain.complete(&prompt, rate_key)).await {
        // An empty template answer means no model answered.
        Ok(completion) if completion.text.is_empty() => Err("no_model"),
        Ok(completion) => pick(candidates, &completion.text).ok_or("unmatched"),
        Err(_) => Err("timeout"),
    };
    let label: &'static str = match outcome {
        Ok(_) => "matched",
        Err(reason) => reason,
    };
    metrics::counter!(telemetry::SKILL_CLASSIFICATIONS, "outcome" => label).increment(1);
    outcome.ok()
}

/// A short instruction listing the candidates, and the message. The template provider answers
/// with nothing, so a chain without a working model yields no pick.
fn prompt(candidates: &[&Skill], text: &str) -> Prompt {
    let mut system = String::from(
        "You route the messages of a customer-service assistant. Decide which of these skills \
         the customer's message is about. Reply with the skill's name only, nothing else.\n",
    );
    for skill in candidates {
        system.push_str(&format!("- {}: {}\n", skill.name, skill.description));
    }
    Prompt {
        messages: vec![
            ChatMessage {
                role: "system",
                content: system,
            },
            ChatMessage {
                role: "user",
                content: text.to_string(),
            },
        ],
        template_answer: String::new(),
    }
}

/// The candidate the answer names first (as a whole word, any case).
fn pick<'a>(candidates: &[&'a Skill], answer: &str) -> Option<&'a Skill> {
    let lowered = answer.to_lowercase();
    candidates
        .iter()
        .filter_map(|skill| {
            let name = skill.name.to_lowercase();
            lowered
                .match_indices(&name)
                .find(|(at, _)| {
                    let before = lowered[..*at].chars().next_back();
                    let after = lowered[at + name.len()..].chars().next();
                    !before.is_some_and(char::is_alphanumeric)
                        && !after.is_some_and(char::is_alphanumeric)
                })
                .map(|(at, _)| (at, *skill))
        })
        .min_by_key(|(at, _)| *at)
        .map(|(_, skill)| skill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skills::SkillSet;

    #[test]
    fn the_first_candidate_named_as_a_word_is_picked() {
        let set = SkillSet::from_skills(Vec::new());
        let general = set.get("general").unwrap_or_else(|| panic!("general"));
        let mut tracking = general.clone();
        tracking.name = "tracking".into();
        let mut estimates = general.clone();
        estimates.name = "estimates".into();
        let candidates = [&tracking, &estimates, general];
        let named = |answer: &str| pick(&candidates, answer).map(|s| s.name.clone());
        assert_eq!(named("Estimates.").as_deref(), Some("estimates"));
        assert_eq!(
            named("skill: tracking (not estimates)").as_deref(),
            Some("tracking")
        );
        assert_eq!(named("retracking"), None);
        assert_eq!(named("I cannot tell"), None);
        let prompt = prompt(&candidates, "hoi");
        assert!(prompt.messages[0].content.contains("- estimates:"));
        assert_eq!(prompt.template_answer, "");
    }
}
