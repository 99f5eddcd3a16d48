//! `clawgate config check FILE`: every error with its JSON path, or what the file sets up.

use crate::say;
use clawgate_gateway::config::Config;
use clawgate_gateway::config_summary::ConfigSummary;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `clawgate config …`.
#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: print every error with its JSON path, exit 1 if there is one.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

/// Runs a `config` command.
pub fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check { file } => check(&file),
    }
}

fn check(file: &Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(errors) => {
            say!("{errors}");
            say!("{}: {} error(s)", file.display(), errors.0.len());
            return ExitCode::FAILURE;
        }
    };
    let summary = ConfigSummary::of(&config);
    let _ = write!(
        std::io::stdout().lock(),
        "{}: ok\n{summary}",
        file.display()
    );
    for error in &summary.skill_errors {
        say!("warning: skill not loaded: {error}");
    }
    ExitCode::SUCCESS
}
