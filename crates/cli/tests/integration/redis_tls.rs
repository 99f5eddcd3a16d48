//! Redis over TLS with a password: a certificate authority and a server certificate the test
//! makes itself, a real `redis-server` that speaks only TLS, and replicas that trust the CA given
//! in `redis.tls.caFile` (and refuse a server signed by another).

use crate::support::*;
use serde_json::json;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const PASSWORD: &str = "tls-s3cret-password";

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`: `ca.crt`,
/// `server.crt`, `server.key`.
fn make_certificates(dir: &Path, ca_name: &str) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.crt"), server.pem()).expect("write");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write");
}

/// A TLS client of the test's own, trusting `ca`.
async fn tls_connection(port: u16, ca: &Path) -> redis::aio::MultiplexedConnection {
    let info = format!("rediss://:{PASSWORD}@127.0.0.1:{port}");
    redis::Client::build_with_tls(
        info.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(ca).expect("ca")),
        },
    )
    .expect("client")
    .get_multiplexed_async_connection()
    .await
    .expect("TLS connection")
}

/// A Redis server's options here: the password (also to its primary), no persistence.
fn server_options(dir: &str) -> Vec<&str> {
    vec![
        "--requirepass",
        PASSWORD,
        "--masterauth",
        PASSWORD,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
    ]
}

/// A `redis-server` (or, with `--sentinel` among `extra`, a sentinel) that speaks only TLS on
/// `port`, with the certificates of `dir` and the test's password.
async fn tls_server(dir: &Path, port: u16, extra: &[&str]) -> tokio::process::Child {
    let path = |name: &str| dir.join(name).display().to_string();
    let server = tokio::process::Command::new("redis-server")
        .args(extra)
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-cert-file", &path("server.crt")])
        .args(["--tls-key-file", &path("server.key")])
        .args(["--tls-ca-cert-file", &path("ca.crt")])
        .args(["--tls-auth-clients", "no", "--tls-replication", "yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server");
    eventually(Duration::from_secs(10), "a TLS port", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_its_state_in_a_redis_that_speaks_only_tls_and_trusts_only_its_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path(), "clawgate test CA");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    make_certificates(&other, "someone else's CA");

    let port = free_port();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let data = path("");
    let mut server = tls_server(dir.path(), port, &server_options(&data)).await;

    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"] = json!({"url": format!("rediss://127.0.0.1:{port}"), "password": PASSWORD,
        "tls": {"caFile": path("ca.crt")}, "commandTimeoutMs": 1000});
    let gateway = Gateway::start(config.clone(), "", "tls").await;
    assert_eq!(gateway.health().await["redis"], "up");
    for (id, text) in [("m1", "hallo"), ("m2", "nog een vraag")] {
        let (status, body) = gateway.send("tls", id, text, None).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, body) = gateway.send("tls", "m3", "en nu?", None).await;
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or("")),
        3,
        "{body}"
    );
    // The conversation is in that Redis, read back over TLS.
    let mut conn = tls_connection(port, &dir.path().join("ca.crt")).await;
    let history: Vec<String> = redis::cmd("LRANGE")
        .arg("oc:conv:{webchat:tls}")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("history");
    assert_eq!(
        history.len(),
        6,
        "three messages and three answers: {history:?}"
    );
    assert!(
        !gateway.logs().contains(PASSWORD),
        "the password reached the log"
    );

    // A replica told to trust another CA does not talk to this server.
    config["redis"]["tls"]["caFile"] = json!(other.join("ca.crt"));
    let suspicious = Gateway::start(config, "", "tls-other-ca").await;
    let health = suspicious.health().await;
    assert_eq!(health["redis"], "down", "{health}");
    let logs = suspicious.logs();
    assert!(
        logs.to_lowercase().contains("certificate"),
        "the log says why: {logs}"
    );

    let _ = server.kill().await;
}

#[tokio::test]
async fn config_check_names_a_missing_or_unreadable_ca_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("clawgate.json");
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello").expect("write");
    std::fs::write(
        &file,
        json!({"redis": {"url": "rediss://10.0.0.5:6380", "tls": {"caFile": "absent.crt"}}})
            .to_string(),
    )
    .expect("write");
    let name = file.display().to_string();
    let (code, out) = run_cli(&["config", "check", &name], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{name}: redis.tls.caFile: cannot read"))
            && out.contains("absent.crt"),
        "{out}"
    );
    std::fs::write(
        &file,
        json!({"redis": {"url": "rediss://10.0.0.5:6380", "tls": {"caFile": "not-a-cert.pem"}}})
            .to_string(),
    )
    .expect("write");
    let (code, out) = run_cli(&["config", "check", &name], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expected a PEM certificate"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_servers_over_tls_lead_a_replica_to_its_primary() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path(), "clawgate test CA");
    let (primary_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
    let primary_dir = dir.path().join("primary");
    let replica_dir = dir.path().join("replica");
    for d in [&primary_dir, &replica_dir] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let primary_data = primary_dir.display().to_string();
    let _primary = tls_server(dir.path(), primary_port, &server_options(&primary_data)).await;
    let replica_data = replica_dir.display().to_string();
    let primary_port_text = primary_port.to_string();
    let mut replica_options = server_options(&replica_data);
    replica_options.extend(["--replicaof", "127.0.0.1", primary_port_text.as_str()]);
    let _replica = tls_server(dir.path(), replica_port, &replica_options).await;
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor secure 127.0.0.1 {primary_port} 1\n\
             sentinel auth-pass secure {PASSWORD}\n\
             sentinel down-after-milliseconds secure 1000\n\
             requirepass {PASSWORD}\n"
        ),
    )
    .expect("sentinel conf");
    let conf = conf.display().to_string();
    let _sentinel = tls_server(dir.path(), sentinel_port, &[conf.as_str(), "--sentinel"]).await;

    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"] = json!({
        "sentinel": {"masterName": "secure", "nodes": [format!("127.0.0.1:{sentinel_port}")],
                     "password": PASSWORD, "tls": true},
        "password": PASSWORD,
        "tls": {"caFile": dir.path().join("ca.crt")}});
    let gateway = Gateway::start(config, "", "tls-sentinel").await;
    let health = eventually(
        Duration::from_secs(15),
        "the replica on the primary",
        || async {
            let health = gateway.health().await;
            (health["redis"] == "up").then_some(health)
        },
    )
    .await;
    assert_eq!(
        health["redis_primary"],
        format!("127.0.0.1:{primary_port}"),
        "{health}"
    );
    for (id, text) in [("m1", "hallo"), ("m2", "en verder?")] {
        let (status, body) = gateway.send("tls-sentinel", id, text, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            user_turns(body["reply"]["text"].as_str().unwrap_or("")),
            if id == "m1" { 1 } else { 2 }
        );
    }
    assert!(
        !gateway.logs().contains(PASSWORD),
        "the password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_speaks_only_tls_keeps_conversations_on_every_master() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path(), "clawgate test CA");
    let ca = dir.path().join("ca.crt");
    let base = crate::support::redis_cluster::cluster_ports(3);
    let ports: Vec<u16> = (base..base + 3).collect();
    let mut servers = Vec::new();
    for port in &ports {
        let data = dir.path().join(format!("node-{port}"));
        std::fs::create_dir_all(&data).expect("dir");
        let data = data.display().to_string();
        let mut options = server_options(&data);
        // The cluster bus between the nodes is TLS too.
        options.extend([
            "--cluster-enabled",
            "yes",
            "--tls-cluster",
            "yes",
            "--cluster-node-timeout",
            "1500",
        ]);
        servers.push(tls_server(dir.path(), *port, &options).await);
    }
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let ca_path = ca.display().to_string();
    let over_tls = [
        "--tls",
        "--cacert",
        &ca_path,
        "-a",
        PASSWORD,
        "--no-auth-warning",
    ];
    crate::support::redis_cluster::create_cluster(&addresses, 0, &over_tls).await;
    eventually(
        Duration::from_secs(30),
        "the TLS cluster to be ok",
        || async {
            for port in &ports {
                let mut conn = tls_connection(*port, &ca).await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                info.contains("cluster_state:ok").then_some(())?;
            }
            Some(())
        },
    )
    .await;

    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"] = json!({"cluster": {"nodes": addresses, "tls": true},
        "password": PASSWORD, "tls": {"caFile": ca}, "commandTimeoutMs": 1000});
    let gateway = Gateway::start(config, "", "tls-cluster").await;
    let health = eventually(Duration::from_secs(15), "the cluster up", || async {
        let health = gateway.health().await;
        (health["redis"] == "up").then_some(health)
    })
    .await;
    assert_eq!(health["redis"], "up", "{health}");
    // Twelve customers write three messages each: every answer knows the customer's earlier
    // messages, and the conversations spread over all three masters.
    for turn in 1..=3 {
        for customer in 0..12 {
            let user = format!("tls-c{customer}");
            let (status, body) = gateway
                .send(
                    &user,
                    &format!("{user}-m{turn}"),
                    &format!("vraag {turn}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                user_turns(body["reply"]["text"].as_str().unwrap_or("")),
                turn,
                "{user}: {body}"
            );
        }
    }
    for port in &ports {
        let mut conn = tls_connection(*port, &ca).await;
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE");
        assert!(keys > 0, "master :{port} holds no key");
    }
    assert!(
        !gateway.logs().contains(PASSWORD),
        "the password reached the log"
    );
    for mut server in servers {
        let _ = server.kill().await;
    }
}
