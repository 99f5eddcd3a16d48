//! The configuration files the cluster runs with, rendered from templates: nginx (for the
//! supervised cluster and for static deployments) and Redis.

use minijinja::{Environment, context};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;

/// One upstream server of the nginx config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upstream {
    /// `host:port` of the replica.
    pub address: String,
    /// Taken out by the active health check.
    pub down: bool,
}

/// Why a template could not be rendered (a bug in a template, never user input).
#[derive(Debug, thiserror::Error)]
#[error("cannot render {template}: {source}")]
pub struct RenderError {
    template: &'static str,
    source: minijinja::Error,
}

fn render(
    name: &'static str,
    source: &'static str,
    ctx: minijinja::Value,
) -> Result<String, RenderError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    let fail = |source| RenderError {
        template: name,
        source,
    };
    env.add_template(name, source).map_err(fail)?;
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(fail)
}

/// The nginx config of the supervised cluster: foreground, pid, logs and temp files under
/// `state_dir`.
pub fn cluster_nginx(
    listen: SocketAddr,
    upstreams: &[Upstream],
    state_dir: &Path,
) -> Result<String, RenderError> {
    // With every replica marked down nginx would answer 502 to everything; leaving them all in
    // lets the passive checks and retries do their best.
    let all_down = upstreams.iter().all(|u| u.down);
    let upstreams: Vec<Upstream> = upstreams
        .iter()
        .map(|u| Upstream {
            address: u.address.clone(),
            down: u.down && !all_down,
        })
        .collect();
    render(
        "nginx.conf",
        include_str!("templates/nginx.conf.j2"),
        context! {
            generator => "cluster up",
            cluster => true,
            state_dir => state_dir.display().to_string(),
            listen => listen.to_string(),
            replicas => upstreams,
        },
    )
}

/// The nginx config for a static deployment in front of `servers` (`host:port` each).
pub fn static_nginx(listen: &str, servers: &[String]) -> Result<String, RenderError> {
    let upstreams: Vec<Upstream> = servers
        .iter()
        .map(|address| Upstream {
            address: address.clone(),
            down: false,
        })
        .collect();
    render(
        "nginx.conf",
        include_str!("templates/nginx.conf.j2"),
        context! {
            generator => "nginx-config",
            cluster => false,
            listen => listen,
            replicas => upstreams,
        },
    )
}

/// The Redis config: AOF every second, no eviction; `port` and `dir` for a supervised
/// `redis-server` (`None` renders the settings alone: `deploy/redis.conf` with 512mb);
/// `replica_of` (host, port) for a replica of a Sentinel group.
pub fn redis_conf(
    local: Option<(u16, &Path)>,
    maxmemory: &str,
    replica_of: Option<(&str, u16)>,
) -> Result<String, RenderError> {
    redis_node_conf(local, maxmemory, replica_of, None)
}

/// [`redis_conf`], for a node of a Redis Cluster when `cluster_node_timeout` is given (the
/// silence after which its peers fail it over).
pub fn redis_node_conf(
    local: Option<(u16, &Path)>,
    maxmemory: &str,
    replica_of: Option<(&str, u16)>,
    cluster_node_timeout: Option<std::time::Duration>,
) -> Result<String, RenderError> {
    render(
        "redis.conf",
        include_str!("templates/redis.conf.j2"),
        context! {
            port => local.map(|(port, _)| port),
            dir => local.map(|(_, dir)| dir.display().to_string()),
            maxmemory => maxmemory,
            replica_of_host => replica_of.map(|(host, _)| host),
            replica_of_port => replica_of.map(|(_, port)| port),
            cluster => cluster_node_timeout.is_some(),
            cluster_node_timeout_ms => cluster_node_timeout.map(|t| t.as_millis() as u64),
        },
    )
}

/// A sentinel's config: it watches the primary at `primary` under `master_name` and fails it
/// over (quorum 2 of 3) after `down_after` of silence.
pub fn sentinel_conf(
    port: u16,
    dir: &Path,
    master_name: &str,
    primary: (&str, u16),
    down_after: std::time::Duration,
) -> Result<String, RenderError> {
    render(
        "sentinel.conf",
        include_str!("templates/sentinel.conf.j2"),
        context! {
            port => port,
            dir => dir.display().to_string(),
            master_name => master_name,
            primary_host => primary.0,
            primary_port => primary.1,
            down_after_ms => down_after.as_millis() as u64,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_config_balances_least_conn_over_consecutive_ports_and_retries_posts() {
        let servers: Vec<String> = (18789..18792).map(|p| format!("127.0.0.1:{p}")).collect();
        let conf = static_nginx("0.0.0.0:8080", &servers).unwrap();
        for port in [18789, 18790, 18791] {
            assert!(
                conf.contains(&format!(
                    "server 127.0.0.1:{port} max_fails=3 fail_timeout=15s;"
                )),
                "{conf}"
            );
        }
        assert!(conf.contains("least_conn;"));
        assert!(
            conf.contains("proxy_next_upstream error timeout http_502 http_503 non_idempotent;")
        );
        assert!(!conf.contains("daemon off"));
    }

    #[test]
    fn a_replica_the_active_check_failed_is_marked_down_unless_all_are() {
        let dir = Path::new("/tmp/state");
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let up = |address: &str, down| Upstream {
            address: address.into(),
            down,
        };
        let conf = cluster_nginx(
            listen,
            &[up("127.0.0.1:1", false), up("127.0.0.1:2", true)],
            dir,
        )
        .unwrap();
        assert!(conf.contains("server 127.0.0.1:2 max_fails=3 fail_timeout=15s down;"));
        assert!(conf.contains("pid /tmp/state/nginx.pid;"));
        let conf = cluster_nginx(
            listen,
            &[up("127.0.0.1:1", true), up("127.0.0.1:2", true)],
            dir,
        )
        .unwrap();
        assert!(!conf.contains(" down;"), "{conf}");
    }

    #[test]
    fn redis_keeps_every_write_and_never_evicts() {
        let conf = redis_conf(Some((6400, Path::new("/tmp/r"))), "256mb", None).unwrap();
        for line in [
            "port 6400",
            "dir /tmp/r",
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in {conf}");
        }
        assert!(!conf.contains("replicaof"), "{conf}");
    }

    #[test]
    fn a_sentinel_group_replicates_and_watches_its_primary() {
        let conf = redis_conf(
            Some((6401, Path::new("/tmp/r"))),
            "256mb",
            Some(("127.0.0.1", 6400)),
        )
        .unwrap();
        assert!(
            conf.lines().any(|l| l == "replicaof 127.0.0.1 6400"),
            "{conf}"
        );
        let conf = sentinel_conf(
            26379,
            Path::new("/tmp/s"),
            "clawgate",
            ("127.0.0.1", 6400),
            std::time::Duration::from_secs(2),
        )
        .unwrap();
        for line in [
            "port 26379",
            "sentinel monitor clawgate 127.0.0.1 6400 2",
            "sentinel down-after-milliseconds clawgate 2000",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in {conf}");
        }
    }
}
