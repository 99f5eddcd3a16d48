//! Log output that can neither stop nor slow the replica.
//!
//! Lines go to stderr through a bounded queue and one writer thread: a turn never waits on a
//! slow reader of stderr (a full queue drops the line), and a write that fails (a full disk, a
//! closed pipe) drops the line too. Both are counted (`clawgate_log_lines_dropped_total`, and
//! `log_lines_dropped` in `/healthz`), never raised: `eprintln!` and tracing's own error report
//! panic when stderr fails, which would take a turn, or the SIGTERM handler, down with them.

use crate::telemetry;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
pub use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder};
use tracing_subscriber::EnvFilter;

/// Lines queued for the writer thread at most; beyond it lines are dropped (and counted).
const QUEUED_LINES: usize = 16_384;

/// Lines the writer thread could not write.
static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Lines dropped because the queue was full (owned by the non-blocking writer).
static QUEUE_DROPS: OnceLock<ErrorCounter> = OnceLock::new();

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber writing to stderr, filtered by `filter` (e.g. `info`). Keep
/// the returned guard until the process exits: dropping it flushes the queue.
pub fn init(format: LogFormat, filter: EnvFilter) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("clawgate-log")
        .finish(FailureCountingStderr);
    let _ = QUEUE_DROPS.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// Log lines lost so far (queue full or stderr failing); also brings the counter
/// `clawgate_log_lines_dropped_total` up to date (called when metrics or health are read).
pub fn dropped_lines() -> u64 {
    let queued = QUEUE_DROPS
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64);
    let dropped = queued + WRITE_FAILURES.load(Ordering::Relaxed);
    metrics::counter!(telemetry::LOG_LINES_DROPPED).absolute(dropped);
    dropped
}

/// Prints a message for the operator on stderr, ignoring failure: for the CLI's own messages,
/// where `eprintln!` would panic on a full or closed stderr.
pub fn say(message: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(message);
    let _ = stderr.write_all(b"\n");
}

/// Stderr that reports every line as written: a failed write is counted, not returned (the
/// writer thread has nobody to return it to, and retrying a full disk cannot help).
struct FailureCountingStderr;

impl Write for FailureCountingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_stderr_is_counted_not_raised() {
        // Writing always succeeds from the caller's view, whatever stderr does.
        let mut writer = FailureCountingStderr;
        assert_eq!(writer.write(b"line\n").ok(), Some(5));
        assert!(writer.flush().is_ok());
    }
}
