//! Helpers for end-to-end tests: the namespace lab, policy files, and running `portfw`
//! inside the lab's server namespace.
#![allow(dead_code, reason = "each test crate uses a different part")]

use std::{
    fs,
    net::IpAddr,
    path::PathBuf,
    process::{Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

// The tests name the lab through this module, as `e2e::lab::…`.
#[allow(unused_imports, reason = "not every test crate names the lab")]
pub use portfw_lab as lab;
use portfw_lab::{Lab, Probe, Proto, Side};

pub const PORTFW: &str = env!("CARGO_BIN_EXE_portfw");
/// How long a probe waits before calling a port silent: drops look like this.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// A policy file in the temp dir, removed on drop.
pub struct PolicyFile(PathBuf);

impl PolicyFile {
    pub fn new(name: &str, yaml: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portfw-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        fs::write(&path, yaml).expect("write policy");
        Self(path)
    }

    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

pub fn root_lab(tag: &str) -> Lab {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "namespace tests need root; run `cargo xtask test` as root"
    );
    Lab::new(tag).expect("create lab")
}

pub fn portfw(lab: &Lab, args: &[&str]) -> Output {
    let mut full = vec![PORTFW];
    full.extend_from_slice(args);
    lab.server(&full)
        .stdin(Stdio::null())
        .output()
        .expect("run portfw")
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Applies `policy` to the lab's server interface and checks the command exited 0.
pub fn apply(lab: &Lab, policy: &PolicyFile, extra: &[&str]) -> Output {
    let path = policy.path();
    let mut args = vec!["apply", path.as_str(), "--iface", lab.server_iface()];
    args.extend_from_slice(extra);
    let out = portfw(lab, &args);
    assert!(out.status.success(), "portfw apply failed: {}", text(&out));
    out
}

pub fn server_ips(lab: &Lab) -> [IpAddr; 2] {
    [lab.server_v4().into(), lab.server_v6().into()]
}

pub fn probe(lab: &Lab, proto: Proto, ip: IpAddr, port: u16) -> Probe {
    lab.probe(Side::Client, proto, ip, port, SILENCE)
        .expect("probe")
}

/// `nc -z` from the client: true when the TCP handshake completes.
pub fn nc_connects(lab: &Lab, ip: IpAddr, port: u16) -> bool {
    nc_connects_from(lab, None, ip, port)
}

/// `nc -z` from the client, from a chosen source address when given: true when the TCP
/// handshake completes.
pub fn nc_connects_from(lab: &Lab, source: Option<IpAddr>, ip: IpAddr, port: u16) -> bool {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let mut args = vec![
        "nc.openbsd".to_string(),
        family.into(),
        "-z".into(),
        "-w".into(),
        "2".into(),
    ];
    if let Some(source) = source {
        args.extend(["-s".into(), source.to_string()]);
    }
    args.extend([ip.to_string(), port.to_string()]);
    lab.client(&args)
        .stdin(Stdio::null())
        .output()
        .expect("nc")
        .status
        .success()
}

/// `curl` from the client: the body when the request succeeds.
pub fn curl(lab: &Lab, ip: IpAddr, port: u16) -> Option<String> {
    let url = match ip {
        IpAddr::V4(a) => format!("http://{a}:{port}/"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/"),
    };
    let out = lab
        .client(["curl", "-sS", "-g", "--max-time", "3", &url])
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One of the checks [`parallel`] runs.
pub type Job<'a, T> = Box<dyn FnOnce() -> T + Send + 'a>;

/// Runs `jobs` at once and returns their results in order, so that checks that wait for
/// silence take their wait only once.
pub fn parallel<'a, T: Send + 'a>(jobs: Vec<Job<'a, T>>) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|job| s.spawn(job)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("parallel job"))
            .collect()
    })
}

/// A process started in the lab whose stderr is collected, line by line, while it runs (the
/// agent's log).
pub struct Logged {
    pub id: lab::ChildId,
    pub pid: u32,
    /// Who the process is, for messages: "the agent".
    name: &'static str,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Starts `cmd` in `lab` with its stderr piped into the log.
    pub fn spawn(lab: &mut Lab, mut cmd: std::process::Command, name: &'static str) -> Self {
        use std::io::{BufRead as _, BufReader};
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let id = lab.spawn(cmd).expect(name);
        let child = lab.child_mut(id).expect(name);
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Self { id, pid, name, log }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Log lines that mention `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` has appeared in `n` lines of the log.
    pub fn wait_lines(&self, needle: &str, n: usize, limit: Duration) {
        let start = std::time::Instant::now();
        while self.count(needle) < n {
            assert!(
                start.elapsed() < limit,
                "{} did not log {needle:?} {n} times within {limit:?}; its log:\n{}",
                self.name,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until `done`, failing the test after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
