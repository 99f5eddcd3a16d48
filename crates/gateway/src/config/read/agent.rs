//! The `agent` section: the system prompt and the languages served.

use super::super::defaults::DEFAULT_SYSTEM_PROMPT;
use super::super::reader::{Object, Reader};
use super::super::schema::AgentConfig;

/// `agent`: what the agent is told about itself; languages default to the default one, then en, nl, de.
pub(super) fn read(r: &mut Reader, root: &Object) -> AgentConfig {
    let empty = Object::new();
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
    AgentConfig {
        system_prompt: r
            .string(a, "agent", "systemPrompt")
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.into()),
        default_language,
        languages,
    }
}
