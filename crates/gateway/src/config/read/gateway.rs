//! The `gateway` section: listening address, replica identity, connection limits.

use super::super::defaults::{DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, default_replica_id};
use super::super::reader::{Object, Reader, ms};
use super::super::schema::GatewayConfig;
use super::super::validation::check_replica_id;
use secrecy::SecretString;
use std::net::SocketAddr;

/// `gateway`: where the replica listens, what it is called, how long connections may idle.
pub(super) fn read(r: &mut Reader, root: &Object) -> GatewayConfig {
    let empty = Object::new();
    let g = r
        .section(
            root,
            "",
            "gateway",
            &[
                "listen",
                "replicaId",
                "shutdownGraceMs",
                "configReloadIntervalMs",
                "idleTimeoutMs",
                "headerTimeoutMs",
                "bodyTimeoutMs",
                "maxConnections",
                "adminToken",
            ],
        )
        .unwrap_or(&empty);
    let listen = r
        .value(
            g,
            "gateway",
            "listen",
            "an address such as \"0.0.0.0:18789\"",
            |v| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()),
        )
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let replica_id = match r.string(g, "gateway", "replicaId") {
        Some(id) => {
            if let Err(message) = check_replica_id(&id) {
                r.error("gateway.replicaId", message);
            }
            id
        }
        None => default_replica_id(listen.port()),
    };
    GatewayConfig {
        listen,
        replica_id,
        shutdown_grace: ms(
            r.integer(g, "gateway", "shutdownGraceMs", 0, 600_000, "milliseconds"),
            20_000,
        ),
        config_reload_interval: ms(
            r.integer(
                g,
                "gateway",
                "configReloadIntervalMs",
                0,
                3_600_000,
                "milliseconds (0 = only on SIGHUP)",
            ),
            2_000,
        ),
        idle_timeout: ms(
            r.integer(
                g,
                "gateway",
                "idleTimeoutMs",
                100,
                3_600_000,
                "milliseconds",
            ),
            60_000,
        ),
        header_timeout: ms(
            r.integer(
                g,
                "gateway",
                "headerTimeoutMs",
                100,
                600_000,
                "milliseconds",
            ),
            10_000,
        ),
        body_timeout: ms(
            r.integer(g, "gateway", "bodyTimeoutMs", 100, 600_000, "milliseconds"),
            30_000,
        ),
        max_connections: r
            .integer(g, "gateway", "maxConnections", 1, 1_000_000, "connections")
            .map_or(DEFAULT_MAX_CONNECTIONS, |n| n as usize),
        // An empty string (`${ADMIN_TOKEN:-}`) means "not configured".
        admin_token: r
            .string_or_empty(g, "gateway", "adminToken")
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
    }
}
