//! The `redis` section: where the state lives (one Redis, a primary that Sentinel watches and
//! replaces, or a Redis Cluster), how the replica logs in, how the keys are laid out, and how
//! durable an acknowledgement must be.

use super::reader::ms;
use super::reader::{Object, Reader};
use secrecy::SecretString;
use std::time::Duration;

/// Redis connection and outage behaviour.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The deployment as one text, for messages and `config check`: a `redis://` or
    /// `rediss://` URL, `redis+sentinel://host:port,host:port/masterName`, or
    /// `redis+cluster://host:port,host:port`.
    pub url: String,
    /// Where the primary is found.
    pub target: RedisTarget,
    /// Credentials for the Redis servers (not the sentinels); `None` fields come from the URL.
    pub username: Option<String>,
    /// Password for the Redis servers (`${VAR}` allowed).
    pub password: Option<SecretString>,
    /// What ingress does while Redis is unreachable.
    pub down_mode: RedisDownMode,
    /// How long Redis must be unreachable before messages are answered from memory; within it,
    /// ingress waits for Redis (a restart or a failover costs latency, not the context).
    pub degrade_after: Duration,
    /// Upper bound on one Redis command; a slower answer counts as Redis being down.
    pub command_timeout: Duration,
    /// Replicas that must hold an accepted message (and a reply about to go out on a platform)
    /// before it is acknowledged (`WAIT`): with 1, a failover cannot lose what got a 200.
    pub ack_replicas: u32,
    /// How long to wait for those replicas before answering 503 (the platform retries).
    pub ack_timeout: Duration,
    /// The certificate authority that signed the servers' (and sentinels') TLS certificates,
    /// for `rediss://` and `rediss+sentinel://`; without it the system's roots are trusted.
    pub tls: Option<RedisTls>,
    /// Inbox shards (`redis.shards`): `None` keeps the unsharded key layout of one Redis; a
    /// cluster always shards (16 unless configured), so its work spreads over the masters.
    pub shards: Option<u16>,
}

/// Shards of a Redis Cluster deployment when `redis.shards` is not set: enough that three or
/// four masters each get a fair share, few enough that each replica's blocking readers (one per
/// shard on a cluster) stay cheap.
pub const DEFAULT_CLUSTER_SHARDS: u16 = 16;

/// TLS settings beyond the `rediss` scheme.
#[derive(Clone)]
pub struct RedisTls {
    /// Where the CA came from (`redis.tls.caFile`, resolved), for messages.
    pub ca_file: std::path::PathBuf,
    /// The CA certificate(s), PEM, read when the config is.
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// A deployment given by its URL alone, with the defaults of every other setting (tools that
    /// talk to a cluster's Redis).
    pub fn for_url(url: &str) -> Result<RedisConfig, String> {
        Ok(RedisConfig {
            url: url.to_string(),
            target: parse_url(url)?,
            username: None,
            password: None,
            down_mode: RedisDownMode::Degrade,
            degrade_after: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            ack_replicas: 0,
            ack_timeout: Duration::from_millis(500),
            tls: None,
            shards: None,
        })
    }
}

impl RedisConfig {
    /// The inbox shards of the key layout: `None` for the unsharded layout of one Redis.
    pub fn shard_count(&self) -> Option<u16> {
        match (&self.target, self.shards) {
            (_, Some(shards)) => Some(shards),
            (RedisTarget::Cluster(_), None) => Some(DEFAULT_CLUSTER_SHARDS),
            _ => None,
        }
    }

    /// One line for `config check`: where the primary is found, as whom, and when a message
    /// counts as acknowledged. Never shows a password.
    pub fn describe(&self) -> String {
        let place = match &self.target {
            RedisTarget::Single(url) => redact(url),
            RedisTarget::Sentinel(s) => format!(
                "the primary Sentinel calls \"{}\", asked of {} sentinel(s) ({}){}",
                s.master_name,
                s.nodes.len(),
                s.nodes.join(", "),
                if s.tls { " over TLS" } else { "" }
            ),
            RedisTarget::Cluster(c) => format!(
                "a Redis Cluster reached through {} seed node(s) ({}){}, {} inbox shards",
                c.nodes.len(),
                c.nodes.join(", "),
                if c.tls { " over TLS" } else { "" },
                self.shard_count().unwrap_or(DEFAULT_CLUSTER_SHARDS)
            ),
        };
        let login = match (&self.username, &self.password) {
            (Some(user), _) => format!(", as user \"{user}\""),
            (None, Some(_)) => ", with a password".to_string(),
            (None, None) => String::new(),
        };
        let primary = match self.target {
            RedisTarget::Cluster(_) => "its master",
            _ => "the primary",
        };
        let ack = match self.ack_replicas {
            0 => format!("acknowledged once {primary} holds a message"),
            n => format!(
                "acknowledged once {primary} and {n} replica(s) hold a message (else 503 after {} ms)",
                self.ack_timeout.as_millis()
            ),
        };
        format!("{place}{login}; {ack}")
    }
}

/// Where the Redis primary is.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// One server at this URL.
    Single(String),
    /// The primary Sentinel names, found through its sentinels and found again after a failover.
    Sentinel(SentinelConfig),
    /// A Redis Cluster, found through its seed nodes; the topology (slots moving, failovers) is
    /// followed by the redis crate's cluster client.
    Cluster(ClusterConfig),
}

/// A Redis Cluster deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Seed nodes, `host:port`: any reachable one tells the whole topology.
    pub nodes: Vec<String>,
    /// TLS to every node (`rediss+cluster://`, or `redis.cluster.tls`).
    pub tls: bool,
}

/// A Sentinel deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    pub master_name: String,
    /// The sentinels, `host:port`.
    pub nodes: Vec<String>,
    /// Sentinels' own ACL user, when they require one.
    pub username: Option<String>,
    /// Sentinels' own password (`requirepass` in `sentinel.conf`).
    pub password: Option<String>,
    /// TLS to the sentinels and the servers (`rediss+sentinel://`).
    pub tls: bool,
}

/// What ingress does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisDownMode {
    /// Keep answering from in-process state (the seed's requirement); `/healthz` says degraded.
    Degrade,
    /// Answer 503 so the platforms retry later and nothing is processed without durable state.
    Reject,
}

/// Reads a deployment URL: `redis://`, `rediss://`, `unix://`,
/// `redis+sentinel://[user:password@]host:port[,host:port…]/masterName` (`rediss+sentinel://`
/// for TLS; the credentials of a Sentinel URL are the sentinels'), or
/// `redis+cluster://host:port[,host:port…]` (`rediss+cluster://` for TLS).
pub fn parse_url(url: &str) -> Result<RedisTarget, String> {
    let cluster = url
        .strip_prefix("redis+cluster://")
        .map(|rest| (rest, false))
        .or_else(|| {
            url.strip_prefix("rediss+cluster://")
                .map(|rest| (rest, true))
        });
    if let Some((rest, tls)) = cluster {
        if rest.contains('@') {
            return Err(
                "a cluster URL names only the seed nodes; give the credentials in redis.username / redis.password"
                    .into(),
            );
        }
        let nodes: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(str::to_string)
            .collect();
        check_host_ports(&nodes, "cluster seed nodes")?;
        return Ok(RedisTarget::Cluster(ClusterConfig { nodes, tls }));
    }
    let sentinel = url
        .strip_prefix("redis+sentinel://")
        .map(|rest| (rest, false))
        .or_else(|| {
            url.strip_prefix("rediss+sentinel://")
                .map(|rest| (rest, true))
        });
    let Some((rest, tls)) = sentinel else {
        use redis::IntoConnectionInfo;
        return url
            .into_connection_info()
            .map(|_| RedisTarget::Single(url.to_string()))
            .map_err(|e| {
                format!(
                    "expected a Redis URL such as \"redis://127.0.0.1:6379\" or \"redis+sentinel://host:26379,host:26379/mymaster\", found \"{}\" ({e})",
                    redact(url)
                )
            });
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let (username, password) = match credentials.map(|c| c.split_once(':')) {
        Some(Some((user, password))) => (
            Some(user.to_string()).filter(|u| !u.is_empty()),
            Some(password.to_string()),
        ),
        Some(None) => (None, credentials.map(str::to_string)),
        None => (None, None),
    };
    let (hosts, master_name) = rest.split_once('/').ok_or_else(|| {
        "a Sentinel URL ends with the master's name: redis+sentinel://host:26379,host:26379/mymaster"
            .to_string()
    })?;
    let nodes: Vec<String> = hosts.split(',').map(str::to_string).collect();
    check_nodes(&nodes)?;
    check_master_name(master_name)?;
    Ok(RedisTarget::Sentinel(SentinelConfig {
        master_name: master_name.to_string(),
        nodes,
        username,
        password,
        tls,
    }))
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn check_nodes(nodes: &[String]) -> Result<(), String> {
    check_host_ports(nodes, "sentinels")
}

/// Every one of `nodes` is `host:port`, and there is at least one.
fn check_host_ports(nodes: &[String], what: &str) -> Result<(), String> {
    if nodes.is_empty() {
        return Err(format!(
            "expected at least one of the {what}, as \"host:port\""
        ));
    }
    for node in nodes {
        let valid = node
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(format!(
                "expected {what} as \"host:port\", found \"{node}\""
            ));
        }
    }
    Ok(())
}

fn check_master_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected the master's name as Sentinel knows it (letters, digits, '-', '_', '.'), found \"{name}\""
        ))
    }
}

/// `<path>.nodes`: an array of `host:port` strings (checked by the caller).
fn read_nodes(r: &mut Reader, section: &Object, path: &str) -> Vec<String> {
    r.value(
        section,
        path,
        "nodes",
        "an array of \"host:port\" strings",
        |v| {
            v.as_array()?
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect()
        },
    )
    .unwrap_or_default()
}

/// Reads the `redis` section; `base_dir` anchors a relative `tls.caFile`.
pub(super) fn read(r: &mut Reader, root: &Object, base_dir: &std::path::Path) -> RedisConfig {
    let empty = Object::new();
    let rd = r
        .section(
            root,
            "",
            "redis",
            &[
                "url",
                "sentinel",
                "username",
                "password",
                "downMode",
                "commandTimeoutMs",
                "degradeAfterMs",
                "ackReplicas",
                "ackTimeoutMs",
                "tls",
                "cluster",
                "shards",
            ],
        )
        .unwrap_or(&empty);
    let tls = r
        .section(rd, "redis", "tls", &["caFile"])
        .and_then(|t| r.string(t, "redis.tls", "caFile"))
        .and_then(|file| {
            let path = base_dir.join(file);
            match std::fs::read(&path) {
                Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    Some(RedisTls {
                        ca_file: path,
                        ca_pem: pem,
                    })
                }
                Ok(_) => {
                    r.error(
                        "redis.tls.caFile",
                        format!("expected a PEM certificate in {}", path.display()),
                    );
                    None
                }
                Err(e) => {
                    r.error(
                        "redis.tls.caFile",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        });
    let sentinel = r.section(
        rd,
        "redis",
        "sentinel",
        &["masterName", "nodes", "username", "password", "tls"],
    );
    let cluster = r.section(rd, "redis", "cluster", &["nodes", "tls"]);
    let (url, target) = match (sentinel, cluster) {
        (_, Some(c)) => {
            if rd.contains_key("url") || rd.contains_key("sentinel") {
                r.error(
                    "redis.cluster",
                    "give one of redis.url, redis.sentinel and redis.cluster",
                );
            }
            let nodes = read_nodes(r, c, "redis.cluster");
            if let Err(message) = check_host_ports(&nodes, "cluster seed nodes") {
                r.error("redis.cluster.nodes", message);
            }
            let tls = r.boolean(c, "redis.cluster", "tls").unwrap_or(false);
            let scheme = if tls {
                "rediss+cluster"
            } else {
                "redis+cluster"
            };
            (
                format!("{scheme}://{}", nodes.join(",")),
                RedisTarget::Cluster(ClusterConfig { nodes, tls }),
            )
        }
        (Some(s), None) => {
            if rd.contains_key("url") {
                r.error(
                    "redis.url",
                    "give either redis.url or redis.sentinel, not both",
                );
            }
            let master_name = r
                .string(s, "redis.sentinel", "masterName")
                .unwrap_or_default();
            if let Err(message) = check_master_name(&master_name) {
                r.error("redis.sentinel.masterName", message);
            }
            let nodes = read_nodes(r, s, "redis.sentinel");
            if let Err(message) = check_nodes(&nodes) {
                r.error("redis.sentinel.nodes", message);
            }
            let config = SentinelConfig {
                master_name: master_name.clone(),
                nodes: nodes.clone(),
                username: r.string(s, "redis.sentinel", "username"),
                password: r.string(s, "redis.sentinel", "password"),
                tls: r.boolean(s, "redis.sentinel", "tls").unwrap_or(false),
            };
            let scheme = if config.tls {
                "rediss+sentinel"
            } else {
                "redis+sentinel"
            };
            (
                format!("{scheme}://{}/{master_name}", nodes.join(",")),
                RedisTarget::Sentinel(config),
            )
        }
        (None, None) => {
            let url = r
                .string(rd, "redis", "url")
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            match parse_url(&url) {
                Ok(target) => (url, target),
                Err(message) => {
                    r.error("redis.url", message);
                    (url.clone(), RedisTarget::Single(url))
                }
            }
        }
    };
    let down_mode = match r
        .choice(rd, "redis", "downMode", &["degrade", "reject"])
        .as_deref()
    {
        Some("reject") => RedisDownMode::Reject,
        _ => RedisDownMode::Degrade,
    };
    RedisConfig {
        url,
        target,
        username: r.string(rd, "redis", "username"),
        password: r.string(rd, "redis", "password").map(SecretString::from),
        down_mode,
        command_timeout: ms(
            r.integer(rd, "redis", "commandTimeoutMs", 10, 60_000, "milliseconds"),
            1_000,
        ),
        degrade_after: ms(
            r.integer(rd, "redis", "degradeAfterMs", 0, 60_000, "milliseconds"),
            2_000,
        ),
        ack_replicas: r
            .integer(rd, "redis", "ackReplicas", 0, 16, "replicas")
            .unwrap_or(0) as u32,
        ack_timeout: ms(
            r.integer(rd, "redis", "ackTimeoutMs", 1, 60_000, "milliseconds"),
            500,
        ),
        tls,
        shards: r
            .integer(rd, "redis", "shards", 1, 1024, "inbox shards")
            .map(|n| n as u16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_master() {
        assert_eq!(
            parse_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379/velocity"),
            Ok(RedisTarget::Sentinel(SentinelConfig {
                master_name: "velocity".into(),
                nodes: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()],
                username: None,
                password: Some("s3cret".into()),
                tls: false,
            }))
        );
        assert!(parse_url("redis+sentinel://10.0.0.1:26379").is_err());
        assert!(parse_url("redis+sentinel://10.0.0.1/velocity").is_err());
        assert_eq!(
            parse_url("redis://127.0.0.1:6379"),
            Ok(RedisTarget::Single("redis://127.0.0.1:6379".into()))
        );
        assert!(parse_url("http://x").is_err());
    }

    #[test]
    fn cluster_urls_name_the_seed_nodes() {
        assert_eq!(
            parse_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000"),
            Ok(RedisTarget::Cluster(ClusterConfig {
                nodes: vec!["10.0.0.1:7000".into(), "10.0.0.2:7000".into()],
                tls: false,
            }))
        );
        assert!(matches!(
            parse_url("rediss+cluster://10.0.0.1:7000"),
            Ok(RedisTarget::Cluster(ClusterConfig { tls: true, .. }))
        ));
        assert!(parse_url("redis+cluster://10.0.0.1").is_err());
        assert!(parse_url("redis+cluster://:pw@10.0.0.1:7000").is_err());
    }
}
