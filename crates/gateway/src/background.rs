//! A replica's background tasks. Every task a replica starts beside its request handlers and
//! turns (Redis health, reloads, guard loops, breaker bookkeeping, button-press answers) is
//! spawned here, so shutdown can tell them to stop and wait for them instead of leaving detached
//! tasks that outlive the drain. `clippy.toml` refuses a bare `tokio::spawn` in this crate.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks one replica runs in the background and the signal that stops them.
#[derive(Clone, Default)]
pub struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Nothing running yet.
    pub fn new() -> Background {
        Background::default()
    }

    /// Runs `task` until it ends. A long-running task should end once [`Self::stopping`] is
    /// cancelled; a short one (one Redis write) simply finishes.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Cancelled when the replica stops its background work.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tells every task to stop and waits up to `grace` for them; true when all ended.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_tasks_that_heed_it_and_gives_up_on_the_others() {
        let background = Background::new();
        let stopping = background.stopping();
        background.spawn(async move { stopping.cancelled().await });
        assert!(background.stop(Duration::from_secs(1)).await);

        let stubborn = Background::new();
        stubborn.spawn(std::future::pending::<()>());
        assert!(!stubborn.stop(Duration::from_secs(1)).await);
    }
}
