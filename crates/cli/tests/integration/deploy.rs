//! The deployment files that no generator writes: the Kubernetes manifest, the Prometheus alert
//! rules and the Grafana dashboard. Nothing here can run them (no cluster, no Prometheus), so the
//! tests check what would break them silently: a probe path the replica does not serve, a grace
//! period shorter than the drain, a skill left out of the mount, a metric or label the gateway
//! does not export.

use crate::support::*;
use clawgate_gateway::config::Config;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The manifest's documents, in file order.
fn kubernetes_documents() -> Vec<Value> {
    serde_saphyr::from_multiple(&deploy_file("kubernetes/clawgate.yaml"))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/clawgate.yaml: {e}"))
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_manifest_probes_what_a_replica_serves_and_drains_within_its_grace() {
    let documents = kubernetes_documents();
    let deployment = find(&documents, "Deployment", "clawgate");
    for (kind, name) in [
        ("Service", "clawgate"),
        ("PodDisruptionBudget", "clawgate"),
        ("HorizontalPodAutoscaler", "clawgate"),
        ("Service", "clawgate-redis"),
        ("StatefulSet", "clawgate-redis"),
    ] {
        find(&documents, kind, name);
    }
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = |name: &str| {
        container["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in the container's env"))
            .clone()
    };
    assert_eq!(
        env("CLAWGATE_REPLICA_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name",
        "each pod its own replica id"
    );
    assert_eq!(
        env("LLM_API_KEY")["valueFrom"]["secretKeyRef"]["name"],
        "clawgate-secrets"
    );

    // The replicas' pods need at least the PDB's minimum plus one to survive a node failure.
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    let min_available = find(&documents, "PodDisruptionBudget", "clawgate")["spec"]["minAvailable"]
        .as_u64()
        .expect("minAvailable");
    assert!(
        replicas > min_available,
        "{replicas} replicas, PDB {min_available}"
    );

    // The kubelet waits preStop + the drain before SIGKILL: room for the example config's grace.
    let config = Config::parse(
        &repository_file("examples/velocity/clawgate.json"),
        "examples/velocity/clawgate.json",
        Path::new("/etc/clawgate"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pre_stop_s: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("preStop sleep seconds");
    let grace_s = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace_s * 1000 > pre_stop_s * 1000 + config.gateway.shutdown_grace.as_millis() as u64,
        "grace {grace_s} s is not longer than preStop {pre_stop_s} s + shutdownGrace {:?}",
        config.gateway.shutdown_grace
    );

    // Every example skill is mounted where `skills.dir` ("skills", beside the config) looks.
    let mounted: BTreeSet<String> = pod["volumes"][0]["projected"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|source| {
            source["configMap"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|item| item["path"].as_str().map(str::to_string))
        .collect();
    assert!(mounted.contains("clawgate.json"), "{mounted:?}");
    assert_eq!(
        container["volumeMounts"][0]["mountPath"], "/etc/clawgate",
        "the config's directory"
    );
    assert_eq!(config.skills.dir, Path::new("/etc/clawgate/skills"));
    for skill in std::fs::read_dir(example_skills())
        .expect("skills dir")
        .flatten()
    {
        let name = skill.file_name().to_string_lossy().to_string();
        assert!(
            mounted.contains(&format!("skills/{name}/SKILL.md")),
            "skill {name} is not mounted: {mounted:?}"
        );
    }

    // The probes' paths answer 200 on a running replica.
    let redis = TestRedis::start().await;
    let gateway = Gateway::start(test_config(vec![]), &redis.url(), "k8s").await;
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = container[probe]["httpGet"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} has no path"));
        let (status, body) = gateway.get(path).await;
        assert_eq!(status, 200, "{probe} {path}: {body}");
    }
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"], "/readyz?ignore=overloaded",
        "overload must not take every pod out of the Service"
    );
}

/// Metric names (`clawgate_…`, histogram suffixes removed) and label names used in PromQL text.
fn promql_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let metric = regex::Regex::new(r"\bclawgate_[a-z_]+").expect("regex");
    let metrics = metric
        .find_iter(text)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_string()
        })
        .collect();
    let grouping = regex::Regex::new(r"by \(([a-z_, ]+)\)").expect("regex");
    let matcher = regex::Regex::new(r"\{([a-z_]+)=").expect("regex");
    let mut labels = BTreeSet::new();
    for caps in grouping.captures_iter(text) {
        labels.extend(caps[1].split(',').map(|l| l.trim().to_string()));
    }
    for caps in matcher.captures_iter(text) {
        labels.insert(caps[1].to_string());
    }
    (metrics, labels)
}

#[test]
fn the_alerts_and_the_dashboard_name_only_metrics_and_labels_the_gateway_exports() {
    // What the gateway exports: the names in its telemetry module, the labels its metric macros
    // set, and the ones Prometheus adds (`le` on histograms, `instance` and `job` on scrapes).
    let telemetry = repository_file("crates/gateway/src/telemetry.rs");
    let exported: BTreeSet<String> = regex::Regex::new(r#""(clawgate_[a-z_]+)""#)
        .expect("regex")
        .captures_iter(&telemetry)
        .map(|c| c[1].to_string())
        .collect();
    let mut sources = String::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources += &std::fs::read_to_string(&path).expect("source");
            }
        }
    }
    let mut labels: BTreeSet<String> = regex::Regex::new(r#""([a-z_]+)" =>"#)
        .expect("regex")
        .captures_iter(&sources)
        .map(|c| c[1].to_string())
        .collect();
    labels.extend(["le", "instance", "job"].map(String::from));
    assert!(exported.len() > 20, "{exported:?}");

    let rules: Value = serde_saphyr::from_str(&deploy_file("prometheus/clawgate-alerts.yml"))
        .unwrap_or_else(|e| panic!("deploy/prometheus/clawgate-alerts.yml: {e}"));
    let mut alerts = 0;
    for rule in rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
    {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(rule["expr"].is_string(), "{name}: expr");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            matches!(severity, "warning" | "critical"),
            "{name}: {severity:?}"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
        alerts += 1;
    }
    assert!(alerts >= 8, "{alerts} alerts");
    let dashboard: Value =
        serde_json::from_str(&deploy_file("grafana/clawgate-dashboard.json")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.iter().all(|p| p["targets"][0]["expr"].is_string()));

    for (file, text) in [
        (
            "prometheus/clawgate-alerts.yml",
            deploy_file("prometheus/clawgate-alerts.yml"),
        ),
        ("grafana/clawgate-dashboard.json", dashboard.to_string()),
    ] {
        let (metrics, used_labels) = promql_names(&text);
        assert!(!metrics.is_empty(), "{file}");
        let unknown: Vec<_> = metrics.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the gateway does not export: {unknown:?}"
        );
        let unknown: Vec<_> = used_labels.difference(&labels).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses labels the gateway does not set: {unknown:?}"
        );
    }
}

#[test]
fn the_deploy_files_run_redis_under_sentinel_and_scale_on_the_backlog() {
    use clawgate_gateway::config::{RedisTarget, redis::parse_url};
    let documents = kubernetes_documents();
    let deployment = find(&documents, "Deployment", "clawgate");
    let env = |name: &str| {
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == name))
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no {name} in the replicas' env"))
            .to_string()
    };
    // The replicas find the primary through the sentinels of the Redis StatefulSet's pods, and
    // acknowledge once a Redis replica holds a message.
    let redis = find(&documents, "StatefulSet", "clawgate-redis");
    let pods = redis["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(pods, 3);
    let Ok(RedisTarget::Sentinel(sentinel)) = parse_url(&env("REDIS_URL")) else {
        panic!("REDIS_URL is not a Sentinel URL: {}", env("REDIS_URL"));
    };
    let service = redis["spec"]["serviceName"].as_str().expect("serviceName");
    let expected: Vec<String> = (0..pods)
        .map(|i| format!("clawgate-redis-{i}.{service}:26379"))
        .collect();
    assert_eq!(sentinel.nodes, expected);
    assert_eq!(env("CLAWGATE_REDIS_ACK_REPLICAS"), "1");
    let containers: Vec<&str> = redis["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(containers, ["redis", "sentinel"]);
    let headless = find(&documents, "Service", "clawgate-redis");
    assert_eq!(headless["spec"]["clusterIP"], "None", "per-pod DNS names");

    // The scripts the pods start with are valid shell, and monitor the name the replicas ask for.
    let scripts = &find(&documents, "ConfigMap", "clawgate-redis-scripts")["data"];
    let dir = tempfile::tempdir().expect("temp dir");
    for script in ["find-primary.sh", "start-redis.sh", "start-sentinel.sh"] {
        let text = scripts[script].as_str().expect("script");
        let path = dir.path().join(script);
        std::fs::write(&path, text).expect("write");
        let check = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("sh -n");
        assert!(
            check.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    assert!(
        scripts["start-sentinel.sh"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("sentinel monitor {} ", sentinel.master_name))
    );
    // Its Redis runs with the settings `cluster up` uses.
    let conf = scripts["redis.conf"].as_str().expect("redis.conf");
    for line in deploy_file("redis.conf")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        assert!(
            conf.lines().any(|l| l == line),
            "{line} missing in the ConfigMap's redis.conf"
        );
    }

    // The autoscaler follows the backlog, not CPU.
    let hpa = find(&documents, "HorizontalPodAutoscaler", "clawgate");
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    assert_eq!(metrics[0]["pods"]["metric"]["name"], "clawgate_inbox_lag");

    // Compose: the Sentinel override points every replica at three sentinels.
    let compose: Value = serde_saphyr::from_str(&deploy_file("docker-compose.sentinel.yml"))
        .unwrap_or_else(|e| panic!("deploy/docker-compose.sentinel.yml: {e}"));
    for replica in ["replica-1", "replica-2", "replica-3"] {
        let url = compose["services"][replica]["environment"]["REDIS_URL"]
            .as_str()
            .unwrap_or_else(|| panic!("{replica}: REDIS_URL"));
        let Ok(RedisTarget::Sentinel(sentinel)) = parse_url(url) else {
            panic!("{replica}: {url}");
        };
        assert_eq!(sentinel.nodes.len(), 3);
        for node in &sentinel.nodes {
            let host = node.split(':').next().unwrap_or_default();
            assert!(compose["services"][host].is_object(), "no service {host}");
        }
        assert_eq!(
            compose["services"][replica]["environment"]["CLAWGATE_REDIS_ACK_REPLICAS"],
            "1"
        );
    }
}
