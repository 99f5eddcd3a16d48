//! The command line's shared vocabulary: durations as typed (`20s`, `1500ms`, `2m`) and the
//! error that names the option and what was expected. Both the plan and the chaos schedule read
//! options with them.

use std::time::Duration;

/// Why a plan option was refused.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {message}")]
pub struct PlanError {
    /// The option, as typed on the command line.
    pub option: &'static str,
    /// What was wrong and what was expected.
    pub message: String,
}

impl PlanError {
    pub(crate) fn new(option: &'static str, message: impl Into<String>) -> PlanError {
        PlanError {
            option,
            message: message.into(),
        }
    }
}

/// `20s`, `1500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 20s, 1500ms or 2m, found {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "expected a duration such as 20s, 1500ms or 2m, found {text:?}"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("expected a positive duration, found {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}
