//! The reference deployment on one host, without Docker: `clawgate cluster up` runs Redis (AOF,
//! no eviction), N replicas and nginx in front of them, restarts what exits, and adds the active
//! health checks open-source nginx lacks. `clawgate cluster status` reads what runs, and
//! `clawgate nginx-config` renders the nginx config for static deployments.
//!
//! It supervises processes it started, found by their pids; it never signals a process by name.

pub mod process;
pub mod redis_group;
pub mod render;
pub mod scale;
pub mod state;
pub mod status;
pub mod supervisor;
