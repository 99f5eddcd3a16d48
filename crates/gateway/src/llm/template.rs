//! The provider that needs no model: the skill's canned answer. It is the chain's last resort
//! and never fails, so every accepted message gets an answer even with every LLM down.

use super::{Prompt, Provider, ProviderError};
use async_trait::async_trait;

/// Answers with the prompt's template answer.
pub struct TemplateProvider {
    name: String,
}

impl TemplateProvider {
    /// A template provider named `name`.
    pub fn new(name: &str) -> TemplateProvider {
        TemplateProvider {
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl Provider for TemplateProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError> {
        Ok(prompt.template_answer.clone())
    }
}
