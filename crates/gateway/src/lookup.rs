//! A skill's data lookup: values taken from the message (e.g. the tracking number), an HTTP GET
//! built from them, and the fields of the answer the skill uses. The result goes to the model as
//! context and to the template provider as fill-in values, so a tracking inquiry gets the real
//! status even when every model is down; a failed lookup says so and never invents a value.

use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a skill declares under `lookup:`.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// URL with `{name}` placeholders for the extracted values.
    pub url: String,
    /// Values to take from the message: name and a regular expression whose first capture group
    /// (or whole match) is the value.
    pub extract: Vec<(String, Regex)>,
    /// Bound on the request.
    pub timeout: Duration,
    /// Fields of the JSON answer the skill uses (all top-level strings, numbers and booleans
    /// when empty).
    pub fields: Vec<String>,
    /// Answers of the template provider, each for an outcome (`found`, `not_found`,
    /// `unavailable`) and by language, with `{name}` placeholders for extracted values and fields.
    pub answers: Vec<Answer>,
}

/// One of a lookup's canned answers. Written `found` in the skill, or `found if FIELD=VALUE` for
/// an answer that applies only when the looked-up field has that value (e.g. weekend delivery
/// offered or not), which outranks the plain one.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `found`, `not_found` or `unavailable`.
    pub outcome: String,
    /// The field and the value it must have, when conditional.
    pub condition: Option<(String, String)>,
    /// The text by language code.
    pub by_language: BTreeMap<String, String>,
}

impl Answer {
    /// Reads a key of `lookup.answers` (`found` or `found if field=value`).
    pub fn parse_key(key: &str) -> Result<(String, Option<(String, String)>), String> {
        let (outcome, condition) = match key.split_once(" if ") {
            Some((outcome, condition)) => {
                let (field, value) = condition.split_once('=').ok_or_else(|| {
                    format!("lookup.answers.\"{key}\": expected `OUTCOME if FIELD=VALUE`")
                })?;
                (
                    outcome.trim(),
                    Some((field.trim().to_string(), value.trim().to_string())),
                )
            }
            None => (key.trim(), None),
        };
        if !["found", "not_found", "unavailable"].contains(&outcome) {
            return Err(format!(
                "lookup.answers.\"{key}\": expected found, not_found or unavailable"
            ));
        }
        Ok((outcome.to_string(), condition))
    }

    fn applies(&self, outcome: &str, values: &BTreeMap<String, String>) -> bool {
        self.outcome == outcome
            && self
                .condition
                .as_ref()
                .is_none_or(|(field, value)| values.get(field) == Some(value))
    }
}

/// How a lookup went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The message holds none of the values the lookup needs: nothing was asked.
    NotApplicable,
    /// The backend answered; the values from the message and the fields from the answer.
    Found(BTreeMap<String, String>),
    /// The backend does not know the values (HTTP 404).
    NotFound(BTreeMap<String, String>),
    /// The backend could not be asked or did not answer in time; why, for the log.
    Unavailable(BTreeMap<String, String>, String),
}

impl Outcome {
    /// The `found` / `not_found` / `unavailable` key of the skill's answers.
    fn key(&self) -> Option<&'static str> {
        match self {
            Outcome::NotApplicable => None,
            Outcome::Found(_) => Some("found"),
            Outcome::NotFound(_) => Some("not_found"),
            Outcome::Unavailable(..) => Some("unavailable"),
        }
    }

    fn values(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Outcome::NotApplicable => None,
            Outcome::Found(v) | Outcome::NotFound(v) | Outcome::Unavailable(v, _) => Some(v),
        }
    }
}

impl Lookup {
    /// Runs the lookup for `text`.
    pub async fn run(&self, client: &reqwest::Client, text: &str) -> Outcome {
        let mut values = BTreeMap::new();
        for (name, pattern) in &self.extract {
            let Some(captures) = pattern.captures(text) else {
                return Outcome::NotApplicable;
            };
            let value = captures
                .get(1)
                .or_else(|| captures.get(0))
                .map_or("", |m| m.as_str());
            values.insert(name.clone(), value.to_string());
        }
        let url = fill(&self.url, &values, encode);
        let response = match client.get(&url).timeout(self.timeout).send().await {
            Ok(response) => response,
            Err(e) => {
                let reason = if e.is_timeout() {
                    format!("no answer within {:?}", self.timeout)
                } else {
                    "cannot reach the lookup service".to_string()
                };
                return Outcome::Unavailable(values, reason);
            }
        };
        match response.status().as_u16() {
            404 => return Outcome::NotFound(values),
            200..=299 => {}
            status => return Outcome::Unavailable(values, format!("HTTP {status}")),
        }
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(e) => return Outcome::Unavailable(values, format!("unreadable answer: {e}")),
        };
        let Some(object) = body.as_object() else {
            return Outcome::Unavailable(values, "the answer is not a JSON object".into());
        };
        for (key, value) in object {
            if !self.fields.is_empty() && !self.fields.contains(key) {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            values.entry(key.clone()).or_insert(text);
        }
        let missing: Vec<&String> = self
            .fields
            .iter()
            .filter(|f| !values.contains_key(*f))
            .collect();
        if !missing.is_empty() {
            return Outcome::Unavailable(values, format!("the answer lacks {missing:?}"));
        }
        Outcome::Found(values)
    }

    /// The template provider's answer for `outcome` in `language` (else English, else any),
    /// placeholders filled; `None` when the skill has none for this outcome.
    pub fn answer(&self, outcome: &Outcome, language: &str) -> Option<String> {
        let (key, values) = (outcome.key()?, outcome.values()?);
        let applying = || self.answers.iter().filter(|a| a.applies(key, values));
        let by_language = &applying()
            .find(|a| a.condition.is_some())
            .or_else(|| applying().next())?
            .by_language;
        let template = crate::language::by_language(by_language, language)?;
        Some(fill(template, values, |v| v.to_string()))
    }
}

/// What the model is told about the lookup, for the system prompt.
pub fn context(outcome: &Outcome) -> Option<String> {
    let describe = |values: &BTreeMap<String, String>| {
        values
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match outcome {
        Outcome::NotApplicable => None,
        Outcome::Found(values) => Some(format!(
            "Lookup result (state exactly this, nothing more): {}.",
            describe(values)
        )),
        Outcome::NotFound(values) => Some(format!(
            "The lookup found nothing for {}. Say so and ask the customer to check what they gave.",
            describe(values)
        )),
        Outcome::Unavailable(values, _) => Some(format!(
            "The lookup for {} is unavailable right now. Say the status cannot be checked at the \
             moment; never guess it.",
            describe(values)
        )),
    }
}

/// `template` with every `{name}` replaced by `convert(values[name])`; unknown placeholders stay.
fn fill(
    template: &str,
    values: &BTreeMap<String, String>,
    convert: impl Fn(&str) -> String,
) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), &convert(value));
    }
    out
}

/// Percent-encodes a value for a URL path segment or query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup() -> Lookup {
        Lookup {
            url: "http://127.0.0.1:9/packages/{tracking_number}".into(),
            extract: vec![(
                "tracking_number".into(),
                Regex::new(r"\b(VC\d{9}[A-Z]{2})\b").unwrap_or_else(|e| panic!("{e}")),
            )],
            timeout: Duration::from_millis(200),
            fields: vec!["status".into()],
            answers: vec![
                Answer {
                    outcome: "found".into(),
                    condition: None,
                    by_language: BTreeMap::from([(
                        "en".to_string(),
                        "{tracking_number}: {status}".to_string(),
                    )]),
                },
                Answer {
                    outcome: "found".into(),
                    condition: Some(("status".into(), "lost".into())),
                    by_language: BTreeMap::from([(
                        "en".to_string(),
                        "{tracking_number} is lost; a colleague will call you".to_string(),
                    )]),
                },
            ],
        }
    }

    #[test]
    fn a_conditional_answer_outranks_the_plain_one_when_its_field_has_the_value() {
        let found = |status: &str| {
            Outcome::Found(BTreeMap::from([
                ("tracking_number".to_string(), "VC1".to_string()),
                ("status".to_string(), status.to_string()),
            ]))
        };
        assert_eq!(
            lookup().answer(&found("lost"), "en").as_deref(),
            Some("VC1 is lost; a colleague will call you")
        );
        assert_eq!(
            lookup().answer(&found("sorting"), "en").as_deref(),
            Some("VC1: sorting")
        );
        assert_eq!(
            Answer::parse_key("found if weekend_delivery = true"),
            Ok((
                "found".to_string(),
                Some(("weekend_delivery".to_string(), "true".to_string()))
            ))
        );
        assert!(Answer::parse_key("found if weekend").is_err());
        assert!(Answer::parse_key("maybe").is_err());
    }

    #[test]
    fn answers_are_filled_with_the_message_values_and_the_fields() {
        let found = Outcome::Found(BTreeMap::from([
            ("tracking_number".to_string(), "VC1".to_string()),
            ("status".to_string(), "out for delivery".to_string()),
        ]));
        assert_eq!(
            lookup().answer(&found, "nl").as_deref(),
            Some("VC1: out for delivery")
        );
        assert_eq!(lookup().answer(&Outcome::NotApplicable, "en"), None);
    }

    #[test]
    fn url_values_are_percent_encoded() {
        let values = BTreeMap::from([("q".to_string(), "a b/c".to_string())]);
        assert_eq!(fill("/x/{q}", &values, encode), "/x/a%20b%2Fc");
    }

    #[tokio::test]
    async fn a_message_without_the_value_asks_nothing_and_an_unreachable_service_is_unavailable() {
        let client = crate::http_client::build().expect("client");
        assert_eq!(
            lookup().run(&client, "where is my parcel?").await,
            Outcome::NotApplicable
        );
        match lookup().run(&client, "where is VC482913577NL?").await {
            Outcome::Unavailable(values, _) => {
                assert_eq!(values["tracking_number"], "VC482913577NL");
            }
            other => panic!("{other:?}"),
        }
    }
}
