//! One supervised process: started, restarted with backoff when it exits on its own (Docker's
//! `restart: always`, without Docker), stopped with a signal and a grace period.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// First and longest pause before a restart; a process that ran this long healthy starts the
/// backoff over.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What a supervised process reports to the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The process `name` started with `pid`.
    Started {
        /// Process name.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// The process `name` exited on its own (it will be restarted).
    Exited {
        /// Process name.
        name: String,
        /// How it ended, for the log.
        status: String,
    },
}

/// How to run and stop one process.
pub struct Spec {
    /// Name in logs and events (`redis`, `replica-1`, `nginx`).
    pub name: String,
    /// Program and arguments.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Where its stdout and stderr go (appended).
    pub log: PathBuf,
    /// The signal that asks it to stop gracefully.
    pub stop_signal: Signal,
    /// How long it may take to stop before SIGKILL.
    pub stop_grace: Duration,
    /// The shortest pause before a restart (zero: the backoff alone decides). A Redis of a
    /// Sentinel group waits out the failover before it comes back.
    pub restart_after: Duration,
}

impl Spec {
    fn spawn(&self) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches the supervisor only, which
            // then stops everything in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }
}

/// Runs `spec` until `stop`, restarting it when it exits; reports starts and exits on `events`.
pub async fn supervise(spec: Spec, events: mpsc::UnboundedSender<Event>, stop: CancellationToken) {
    let mut backoff = RESTART_MIN;
    loop {
        let started = Instant::now();
        let mut child = match spec.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(process = %spec.name, program = %spec.program.display(), error = %e, "cannot start; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_MAX);
                continue;
            }
        };
        if let Some(pid) = child.id() {
            let _ = events.send(Event::Started {
                name: spec.name.clone(),
                pid,
            });
        }
        tokio::select! {
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                // Why it exited is usually the last thing it wrote (a port taken, a bad
                // config line), and the log may be gone by the time anyone looks.
                let last_words = last_log_line(&spec.log);
                tracing::warn!(process = %spec.name, %status, %last_words, "exited; restarting");
                let _ = events.send(Event::Exited { name: spec.name.clone(), status });
            }
            _ = stop.cancelled() => {
                stop_child(&spec, &mut child).await;
                return;
            }
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = RESTART_MIN;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.max(spec.restart_after)) => {}
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}

/// The last non-empty line of `log` (read from its last 4 KiB), at most 300 characters; empty
/// when there is none.
fn last_log_line(log: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4096;
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let length = file.metadata().map_or(0, |m| m.len());
    if file
        .seek(SeekFrom::Start(length.saturating_sub(TAIL)))
        .is_err()
    {
        return String::new();
    }
    let mut tail = Vec::new();
    if file.take(TAIL).read_to_end(&mut tail).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| line.chars().take(300).collect())
        .unwrap_or_default()
}

/// Asks the child to stop, waits its grace period, then kills it.
async fn stop_child(spec: &Spec, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), spec.stop_signal);
    }
    match tokio::time::timeout(spec.stop_grace, child.wait()).await {
        Ok(_) => tracing::info!(process = %spec.name, "stopped"),
        Err(_) => {
            tracing::warn!(process = %spec.name, grace = ?spec.stop_grace, "did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

/// Sends `signal` to `pid`; false when no such process exists.
pub fn signal(pid: u32, signal: Option<Signal>) -> bool {
    kill(Pid::from_raw(pid as i32), signal).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_words_of_a_process_are_the_last_line_it_logged() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("redis-2.log");
        assert_eq!(last_log_line(&log), "", "no log yet");
        let earlier = "x".repeat(5000);
        std::fs::write(
            &log,
            format!("{earlier}\n# Warning: Could not create server TCP listening socket 127.0.0.1:20345: bind: Address already in use\n\n"),
        )
        .expect("write");
        assert_eq!(
            last_log_line(&log),
            "# Warning: Could not create server TCP listening socket 127.0.0.1:20345: bind: Address already in use"
        );
    }
}
