//! The configuration: one JSON file (`clawgate.json`), its schema, defaults, `${VAR}`
//! interpolation and validation.
//!
//! Loading never stops at the first problem: every error is reported with the file, the JSON path
//! and what was expected, so an operator fixes a config in one round. A file that holds only the
//! seed's `llm` block is complete; every other key has a default.

mod defaults;
mod interpolate;
mod read;
mod reader;
pub mod redis;
mod schema;
mod validation;

use defaults::default_replica_id;
pub use defaults::{DEFAULT_MAX_API_TEXT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_TEXT, DEFAULT_PORT};
use read::read_config;
use reader::{Object, Reader};
pub use schema::*;
use serde_json::Value;
use std::fmt;
use std::path::Path;
use validation::check_replica_id;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

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
