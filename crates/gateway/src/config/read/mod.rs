//! One reader per section of the file; [`read_config`] checks the top-level keys and calls them
//! in order. Every reader records what is wrong in the [`Reader`] and goes on with a default, so
//! one pass reports every error. The `redis` section is read in `config::redis`, beside the URL
//! parsing the command line uses too.

mod agent;
mod audit;
mod channels;
mod conversations;
mod escalation;
mod gateway;
mod llm;
mod skills;
mod webchat;
mod workers;

use super::reader::{Object, Reader};
use super::redis;
use super::schema::Config;
use std::path::Path;

/// Reads every section of `root`; `source` names the file, `base_dir` anchors relative paths.
pub(super) fn read_config(r: &mut Reader, root: &Object, source: &str, base_dir: &Path) -> Config {
    r.check_keys(
        root,
        "",
        &[
            "gateway",
            "redis",
            "conversations",
            "workers",
            "webchat",
            "skills",
            "agent",
            "llm",
            "channels",
            "escalation",
            "audit",
        ],
    );

    Config {
        source: source.to_string(),
        gateway: gateway::read(r, root),
        redis: redis::read(r, root, base_dir),
        conversations: conversations::read(r, root),
        workers: workers::read(r, root),
        webchat: webchat::read(r, root),
        skills: skills::read(r, root, base_dir),
        agent: agent::read(r, root),
        llm: llm::read(r, root),
        channels: channels::read(r, root),
        escalation: escalation::read(r, root),
        audit: audit::read(r, root, base_dir),
    }
}
