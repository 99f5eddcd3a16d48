//! Names of the environment variables clawgate reads, in one place.

/// Path of the config file (`serve --config`).
pub const CONFIG: &str = "CLAWGATE_CONFIG";
/// Listen address, overriding `gateway.listen`.
pub const LISTEN: &str = "CLAWGATE_LISTEN";
/// Replica id, overriding `gateway.replicaId`.
pub const REPLICA_ID: &str = "CLAWGATE_REPLICA_ID";
/// Redis URL, overriding `redis.url`.
pub const REDIS_URL: &str = "CLAWGATE_REDIS_URL";
/// Replicas an acknowledgement waits for, overriding `redis.ackReplicas`.
pub const REDIS_ACK_REPLICAS: &str = "CLAWGATE_REDIS_ACK_REPLICAS";
/// Log filter in `tracing` syntax, e.g. `info,clawgate_gateway=debug`.
pub const LOG: &str = "CLAWGATE_LOG";
/// Log format: `text` (default on a terminal) or `json`.
pub const LOG_FORMAT: &str = "CLAWGATE_LOG_FORMAT";
/// Test-only fault injection: a turn whose message contains this variable's value panics.
pub const FAILPOINT_TURN_PANIC: &str = "CLAWGATE_FAILPOINT_TURN_PANIC";
