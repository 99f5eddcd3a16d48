//! The live progress line on stderr: sent, answered, in flight, errors and the p99 so far.

use crate::stats::Stats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running progress line.
pub struct Progress {
    bar: ProgressBar,
    updates: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

/// Draws the line (when `visible`) every 250 ms until [`Progress::finish`].
pub fn start(visible: bool, stats: Arc<Stats>, sending: CancellationToken) -> Progress {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let stop = CancellationToken::new();
    let updates = visible.then(|| {
        let (bar, stop) = (bar.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let phase = if sending.is_cancelled() {
                    "waiting for the last replies"
                } else {
                    "sending"
                };
                bar.set_message(format!(
                    "{phase}: sent {}  answered {}  in flight {}  errors {}  p99 {:.0} ms",
                    Stats::get(&stats.sent),
                    Stats::get(&stats.answered),
                    Stats::get(&stats.in_flight),
                    Stats::get(&stats.errors),
                    stats.e2e.p99()
                ));
                bar.tick();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
    });
    Progress { bar, updates, stop }
}

impl Progress {
    /// Stops drawing and clears the line.
    pub fn finish(self) {
        self.stop.cancel();
        if let Some(updates) = self.updates {
            updates.abort();
        }
        self.bar.finish_and_clear();
    }
}
