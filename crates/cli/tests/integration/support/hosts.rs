//! Several "hosts" on one machine: network namespaces the test makes itself, each with its own
//! address from 198.18.0.0/15 (reserved for network tests) on a bridge that lives in a namespace
//! of its own, so nothing touches the machine's own network. Needs root and `ip` (iproute2).
//!
//! Everything made here (namespaces, links, processes) is removed when the [`Lab`] is dropped,
//! also when the test fails; a lab left behind by a killed test run is removed by the next one.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Namespaces this harness makes are named `cglab-<pid>-<role>`.
const PREFIX: &str = "cglab-";

/// Whether this machine lets the test make network namespaces (root and `ip`).
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("needs `ip` (Debian: apt-get install iproute2)".into()),
    }
}

/// The hosts of one test, and the processes running on them.
pub struct Lab {
    /// `cglab-<pid>`.
    id: String,
    /// Host names (`h1`, `lb`, `client`…) in creation order, with their addresses.
    hosts: Vec<(String, Ipv4Addr)>,
    /// Processes started on the hosts, by host name.
    processes: Mutex<Vec<(String, Child)>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces of labs whose test process is gone (a run killed before it could clean up).
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            kill_namespace_processes(name);
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}

/// SIGKILLs every process in namespace `ns` (`ip netns pids`).
fn kill_namespace_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Lab {
    /// A bridge and one namespace per name in `hosts`, the n-th at 198.18.0.(10+n), all on
    /// the bridge, each with its loopback up.
    pub fn build(hosts: &[&str]) -> Lab {
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        remove_orphans();
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{n}", std::process::id());
        let mut lab = Lab {
            id: id.clone(),
            hosts: Vec::new(),
            processes: Mutex::new(Vec::new()),
        };
        let bridge = lab.namespace("br");
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for (n, name) in hosts.iter().enumerate() {
            let ns = lab.namespace(name);
            let addr = Ipv4Addr::new(198, 18, 0, 10 + n as u8);
            // Registered before it exists: a failure half-way still removes it.
            lab.hosts.push((name.to_string(), addr));
            ip(&["netns", "add", &ns]);
            let port = format!("p-{name}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &bridge,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &bridge, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    /// The address of `host`.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        self.hosts
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    /// Starts `program` on `host` (`ip netns exec`, which execs it: the child is the program),
    /// its output appended to `log`.
    pub fn spawn(&self, host: &str, program: &Path, args: &[String], log: &Path) -> u32 {
        self.spawn_with_env(host, program, args, &[], log)
    }

    /// The same with more environment variables.
    pub fn spawn_with_env(
        &self,
        host: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> u32 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(host)])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} on {host}: {e}", program.display()));
        let pid = child.id();
        self.lock().push((host.to_string(), child));
        pid
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Child)>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIGKILLs the process `pid` started here (a crashed server).
    pub fn kill(&self, pid: u32) {
        let mut processes = self.lock();
        if let Some((_, child)) = processes.iter_mut().find(|(_, c)| c.id() == pid) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Loses `host` as a power cut would: every process in its namespace killed, its link down.
    pub fn lose_host(&self, host: &str) {
        let ns = self.namespace(host);
        ip(&[
            "-n",
            &self.namespace("br"),
            "link",
            "set",
            &format!("p-{host}"),
            "down",
        ]);
        kill_namespace_processes(&ns);
        for (_, child) in self.lock().iter_mut().filter(|(h, _)| h == host) {
            let _ = child.wait();
        }
    }

    /// Runs `f` on a thread inside `host`'s namespace: every socket it (and the threads it
    /// starts, such as a Tokio runtime's) opens is the host's.
    pub fn run_on<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.namespace(host));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in self.lock().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut namespaces: Vec<String> = self
            .hosts
            .iter()
            .map(|(name, _)| self.namespace(name))
            .collect();
        namespaces.push(self.namespace("br"));
        for ns in &namespaces {
            kill_namespace_processes(ns);
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}
