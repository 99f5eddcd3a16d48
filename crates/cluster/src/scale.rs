//! `clawgate cluster scale N`: asks the running supervisor for another replica count (it watches
//! its state directory) and waits until the cluster has that many replicas, all healthy.

use crate::status::{self, ClusterStatus};
use crate::supervisor::DESIRED_REPLICAS;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a scale request did not end with the replicas asked for.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// Zero replicas would drop every message.
    #[error("a cluster needs at least one replica")]
    NoReplicas,
    /// No state file, or it cannot be read.
    #[error("no running cluster in {}: {source}", dir.display())]
    NoCluster {
        /// The state directory given.
        dir: PathBuf,
        /// Why its state could not be read.
        source: std::io::Error,
    },
    /// The request could not be handed to the supervisor.
    #[error("writing {}: {source}", file.display())]
    Request {
        /// The file the supervisor watches.
        file: PathBuf,
        /// Why it could not be written.
        source: std::io::Error,
    },
    /// The cluster did not get there in time (replicas may still be starting or draining).
    #[error(
        "asked for {wanted} replicas; after {} s there are {listed} ({healthy} healthy)",
        waited.as_secs()
    )]
    NotReached {
        /// The count asked for.
        wanted: u16,
        /// Replicas listed when the wait ended.
        listed: usize,
        /// Of those, the healthy ones.
        healthy: usize,
        /// How long it waited.
        waited: Duration,
    },
}

/// Asks the cluster in `state_dir` for `replicas` replicas and waits up to `wait` until exactly
/// that many are listed and healthy; returns the status that showed it.
pub async fn scale(
    state_dir: &Path,
    replicas: u16,
    wait: Duration,
) -> Result<ClusterStatus, ScaleError> {
    if replicas == 0 {
        return Err(ScaleError::NoReplicas);
    }
    let no_cluster = |source| ScaleError::NoCluster {
        dir: state_dir.to_path_buf(),
        source,
    };
    status::report(state_dir).await.map_err(no_cluster)?;
    let file = state_dir.join(DESIRED_REPLICAS);
    std::fs::write(&file, replicas.to_string())
        .map_err(|source| ScaleError::Request { file, source })?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let report = status::report(state_dir).await.map_err(no_cluster)?;
        let (listed, healthy) = report.healthy_replicas();
        if listed == usize::from(replicas) && healthy == listed {
            return Ok(report);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ScaleError::NotReached {
                wanted: replicas,
                listed,
                healthy,
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
