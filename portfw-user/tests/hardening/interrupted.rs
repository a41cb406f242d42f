//! Applies interrupted at every step by the test hook: killed, they are reported and detach
//! removes them; SIGTERM, SIGINT and SIGHUP roll them back.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    ALLOW_ALL, Netns, PORTFW, Pair, PolicyFile, Sandbox, shared, status_json, stderr, text,
};

/// The environment variable of portfw's test hook: an apply pauses at the named point.
const PAUSE_AT: &str = "PORTFW_TEST_PAUSE_AT";

/// A `portfw apply` paused by the test hook, and what it writes to stderr.
pub struct Paused {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Paused {
    /// Starts `portfw apply ARGS` in `ns`, paused by the test hook at `point`, and waits
    /// until it says it is there.
    pub fn start(sandbox: &Sandbox, ns: &Netns, args: &[&str], point: &str) -> Self {
        let mut full = vec![PORTFW, "apply"];
        full.extend_from_slice(args);
        let mut child = sandbox
            .command(Some(ns), None, &full)
            .env(PAUSE_AT, point)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("portfw apply");
        let pipe = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Each line as it comes; the pause line tells the test the apply is there.
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wanted = format!("paused at {point}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(&wanted) => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("apply never paused at {point}: {seen:?}");
                }
            }
        }
        Self { child, stderr: rx }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`, waits for the apply to end, and returns how, with the rest of its
    /// stderr.
    pub fn finish(mut self, signal: libc::c_int) -> (std::process::ExitStatus, String) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: a plain kill of our own child.
        unsafe { libc::kill(pid, signal) };
        let status = self.child.wait().expect("wait");
        let rest: Vec<String> = self.stderr.iter().collect();
        (status, rest.join("\n"))
    }
}

/// What the pin root holds for the namespace with inode `ino` (its pins, temporary or not).
fn pins_of(sandbox: &Sandbox, ino: u64) -> Vec<String> {
    let out = sandbox.run(None, None, &["ls", "/sys/fs/bpf/portfw"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|n| *n == ino.to_string() || n.starts_with(&format!("tmp-{ino}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_fresh_apply_killed_at_any_point_is_reported_and_detach_removes_it() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("kill", 72);
    let ino = pair.server.inode();
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "s0"];
    for point in [
        "fresh-loaded",
        "fresh-pinned",
        "fresh-attaching",
        "fresh-attached",
        "fresh-recorded",
    ] {
        let paused = Paused::start(&sandbox, &pair.server, &apply[1..], point);
        let tmp = format!("/sys/fs/bpf/portfw/tmp-{ino}-{}", paused.pid());
        let (ended, _) = paused.finish(libc::SIGKILL);
        assert!(!ended.success(), "{point}: {ended}");

        let out = sandbox.portfw(&pair.server, &["status"]);
        assert!(!out.status.success(), "{point}: {}", text(&out));
        assert!(
            stderr(&out).contains(&format!(
                "an interrupted apply left a half-built filter in {tmp}; run `portfw detach` or \
                 apply again"
            )),
            "{point}: {}",
            text(&out)
        );
        if point != "fresh-loaded" && point != "fresh-pinned" {
            // Half-built, but attached: this is why it must not go unmentioned.
            assert!(
                !pair.udp_arrives(7777),
                "{point}: the half-built filter judges"
            );
        }
        let out = sandbox.portfw(&pair.server, &["detach"]);
        assert!(out.status.success(), "{point}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!(
                "removed the half-built filter an interrupted apply left in {tmp}"
            )),
            "{point}: {}",
            text(&out)
        );
        assert_eq!(pins_of(&sandbox, ino), Vec::<String>::new(), "{point}");
        assert!(
            !sandbox.exists(&format!("/run/portfw/{ino}.json")),
            "{point}"
        );
        assert!(pair.udp_arrives(7777), "{point}: detached, 7777 arrives");
        let out = sandbox.portfw(&pair.server, &["status"]);
        assert!(
            stderr(&out).contains("no portfw filter is loaded"),
            "{point}: {}",
            text(&out)
        );
    }
    // Applying again instead of detaching cleans up as well.
    Paused::start(&sandbox, &pair.server, &apply[1..], "fresh-attached").finish(libc::SIGKILL);
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("removed the half-built filter"),
        "{}",
        text(&out)
    );
    assert_eq!(pins_of(&sandbox, ino), vec![ino.to_string()]);
    assert!(!pair.udp_arrives(7777));
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn sigterm_sigint_and_sighup_roll_an_apply_back() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("signal", 73);
    pair.server
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    pair.server.ip(&["link", "set", "v0", "up"]);
    pair.server.ip(&["link", "set", "v1", "up"]);
    let ino = pair.server.inode();
    let a = PolicyFile::new(ALLOW_ALL);
    let b = PolicyFile::new("default: allow\nrules:\n  - drop: 7778/udp\n");

    // A fresh apply: rolled back, nothing left.
    for (signal, name, point) in [
        (libc::SIGTERM, "SIGTERM", "fresh-attached"),
        (libc::SIGINT, "SIGINT", "fresh-pinned"),
        (libc::SIGHUP, "SIGHUP", "fresh-loaded"),
    ] {
        let paused = Paused::start(&sandbox, &pair.server, &[a.path(), "--iface", "s0"], point);
        let (ended, err) = paused.finish(signal);
        assert_eq!(ended.code(), Some(1), "{name} at {point}: {ended}: {err}");
        assert!(
            err.contains(&format!(
                "interrupted by {name}; rolled back, nothing was changed"
            )),
            "{name} at {point}: {err}"
        );
        assert_eq!(
            pins_of(&sandbox, ino),
            Vec::<String>::new(),
            "{name} at {point}"
        );
        assert!(
            pair.udp_arrives(7777),
            "{name} at {point}: rolled back, 7777 arrives"
        );
        let out = sandbox.portfw(&pair.server, &["status"]);
        assert!(
            stderr(&out).contains("no portfw filter is loaded"),
            "{name} at {point}: {}",
            text(&out)
        );
    }

    // An update that adds an interface: rolled back to the policy and interfaces before.
    let out = sandbox.portfw(&pair.server, &["apply", a.path(), "--iface", "s0"]);
    assert!(out.status.success(), "{}", text(&out));
    for (signal, name, point) in [
        (libc::SIGTERM, "SIGTERM", "update-attached"),
        (libc::SIGINT, "SIGINT", "update-staged"),
    ] {
        let paused = Paused::start(
            &sandbox,
            &pair.server,
            &[b.path(), "--iface", "s0", "--iface", "v0"],
            point,
        );
        let (ended, err) = paused.finish(signal);
        assert_eq!(ended.code(), Some(1), "{name} at {point}: {ended}: {err}");
        assert!(
            err.contains(&format!(
                "interrupted by {name}; rolled back, nothing was changed"
            )),
            "{name} at {point}: {err}"
        );
        let status = status_json(&sandbox, &pair.server);
        assert_eq!(
            status["policy"]["file"],
            a.path(),
            "{name} at {point}: {status}"
        );
        let ifaces: Vec<&str> = status["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["iface"].as_str())
            .collect();
        assert_eq!(ifaces, ["s0"], "{name} at {point}: {status}");
        assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
        assert!(
            !sandbox.exists(&format!("/sys/fs/bpf/portfw/{ino}/link-v0")),
            "{name} at {point}: v0's link stayed"
        );
        assert!(
            !pair.udp_arrives(7777),
            "{name} at {point}: the old policy drops 7777"
        );
        assert!(
            pair.udp_arrives(7778),
            "{name} at {point}: the old policy allows 7778"
        );
    }
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}
