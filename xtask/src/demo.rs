//! `cargo xtask demo`: portfw filtering real connections between two network namespaces.

use std::{
    io::{Read as _, Write as _},
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use portfw_lab::Lab;

use crate::{
    setup,
    util::{self, run_checked},
};

/// The OpenBSD netcat by its own name: Debian's `nc` may point at ncat, whose flags differ.
const NC: &str = "nc.openbsd";
const TCP_PORTS: &[u16] = &[22, 80, 53, 8080, 9000];
const UDP_PORTS: &[u16] = &[53, 5001, 5353];

/// Set by SIGINT/SIGTERM so the demo stops between steps and still tears the lab down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Tool {
    /// `curl http://HOST:PORT/`, allowed when the responder's body comes back.
    Curl,
    /// `nc -z`, allowed when the TCP handshake completes.
    NcTcp,
    /// `nc -u`, allowed when the responder's datagram comes back.
    NcUdp,
}

struct Check {
    tool: Tool,
    v6: bool,
    port: u16,
    allowed: bool,
    why: &'static str,
}

/// What policies/demo.yaml should let through and what it should stop.
const CHECKS: &[Check] = &[
    Check {
        tool: Tool::Curl,
        v6: false,
        port: 80,
        allowed: true,
        why: "80/tcp allowed",
    },
    Check {
        tool: Tool::NcTcp,
        v6: false,
        port: 22,
        allowed: true,
        why: "22/tcp allowed",
    },
    Check {
        tool: Tool::NcTcp,
        v6: false,
        port: 8080,
        allowed: false,
        why: "named rule drops 8000-8999/tcp",
    },
    Check {
        tool: Tool::NcTcp,
        v6: false,
        port: 9000,
        allowed: false,
        why: "default drop",
    },
    Check {
        tool: Tool::NcUdp,
        v6: false,
        port: 5001,
        allowed: true,
        why: "5001/udp allowed",
    },
    Check {
        tool: Tool::NcUdp,
        v6: false,
        port: 5353,
        allowed: false,
        why: "default drop",
    },
    Check {
        tool: Tool::Curl,
        v6: true,
        port: 80,
        allowed: true,
        why: "80/tcp allowed over IPv6",
    },
    Check {
        tool: Tool::NcTcp,
        v6: true,
        port: 8080,
        allowed: false,
        why: "named rule, IPv6",
    },
];

pub fn run() -> Result<()> {
    util::require_root("demo")?;
    install_signal_handlers();
    setup::run(setup::Mode::Install)?;
    check_interrupted()?;

    let root = util::workspace_root();
    let policy = root.join("policies/demo.yaml");
    if !policy.is_file() {
        bail!(
            "{} is missing; the demo applies that policy",
            policy.display()
        );
    }
    println!("demo: building portfw");
    run_checked(
        Command::new(util::cargo())
            .args(["build", "--release", "-p", "portfw-user"])
            .current_dir(&root),
    )?;
    let portfw = util::target_dir().join("release/portfw");
    if !portfw.is_file() {
        bail!("the build did not leave {}", portfw.display());
    }
    check_interrupted()?;

    match Lab::cleanup_stale("pfw-demo-") {
        Ok(0) => {}
        Ok(n) => println!("demo: removed {n} namespaces left by earlier runs"),
        Err(err) => eprintln!("demo: warning: cleaning old namespaces: {err:#}"),
    }
    // Subnet 0, so the addresses match the README: 198.18.0.1 and 2001:2::1.
    let mut lab = Lab::with_subnet("demo", 0).context("creating the demo lab")?;
    println!(
        "demo: lab up: server netns {} ({} {}, {}), client netns {} ({} {}, {})",
        lab.server_ns(),
        lab.server_iface(),
        lab.server_v4(),
        lab.server_v6(),
        lab.client_ns(),
        lab.client_iface(),
        lab.client_v4(),
        lab.client_v6()
    );
    let result = run_in_lab(&mut lab, &portfw, &policy);
    let closed = lab.close();
    println!("demo: lab down");
    let mismatches = result?;
    closed?;
    if mismatches > 0 {
        bail!(
            "{mismatches} of {} connections did not behave as policies/demo.yaml says",
            CHECKS.len()
        );
    }
    println!(
        "demo: all {} connections behaved as the policy says",
        CHECKS.len()
    );
    Ok(())
}

/// Everything that needs the lab; returns how many checks went against expectation.
fn run_in_lab(lab: &mut Lab, portfw: &Path, policy: &Path) -> Result<usize> {
    lab.start_responder(TCP_PORTS, UDP_PORTS)?;
    println!(
        "demo: responder listening in the server netns on tcp {} and udp {}",
        join(TCP_PORTS),
        join(UDP_PORTS)
    );
    check_interrupted()?;

    let iface = lab.server_iface().to_owned();
    println!("demo: $ portfw apply {} --iface {iface}", policy.display());
    run_checked(
        lab.server([
            portfw.as_os_str(),
            "apply".as_ref(),
            policy.as_os_str(),
            "--iface".as_ref(),
            iface.as_ref(),
        ])
        .stdin(Stdio::null()),
    )?;

    // `portfw events` runs until SIGINT; collect its lines on a thread so the
    // pipe never fills up.
    let mut events_cmd = lab.server([portfw.as_os_str(), "events".as_ref()]);
    events_cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let events = lab.spawn(events_cmd)?;
    let mut events_out = lab
        .child_mut(events)
        .and_then(|child| child.stdout.take())
        .context("no stdout pipe for `portfw events`")?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        // A read error only truncates the captured events.
        let _ = events_out.read_to_string(&mut text);
        text
    });
    // Give it time to open the ring buffer before the first packet.
    thread::sleep(Duration::from_millis(800));
    if let Some(status) = lab
        .child_mut(events)
        .map(|child| child.try_wait())
        .transpose()
        .context("polling `portfw events`")?
        .flatten()
    {
        bail!("`portfw events` exited early ({status})");
    }

    println!("demo: connections from the client netns:");
    let mut mismatches = 0;
    for check in CHECKS {
        check_interrupted()?;
        let ip: IpAddr = if check.v6 {
            lab.server_v6().into()
        } else {
            lab.server_v4().into()
        };
        let (allowed, detail, shown) = attempt(lab, check, ip)?;
        // Ctrl-C reaches the probe too; its result would be noise.
        check_interrupted()?;
        let verdict = |a: bool| if a { "ALLOWED" } else { "BLOCKED" };
        let matched = allowed == check.allowed;
        if !matched {
            mismatches += 1;
        }
        println!(
            "  {:<7} {:<34} expected {:<7} {:<8} {} ({})",
            verdict(allowed),
            shown,
            verdict(check.allowed),
            if matched { "ok" } else { "MISMATCH" },
            check.why,
            detail
        );
    }

    // Let the last events reach the ring buffer reader before stopping it.
    thread::sleep(Duration::from_millis(500));
    let status = lab.interrupt(events, Duration::from_secs(5));
    let text = reader
        .join()
        .unwrap_or_else(|_| "(event reader thread panicked)".to_owned());
    println!("demo: events seen by `portfw events`:");
    for line in text.lines() {
        println!("  {line}");
    }
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("demo: warning: `portfw events` ended with {status}"),
        Err(err) => eprintln!("demo: warning: stopping `portfw events`: {err:#}"),
    }

    println!("demo: $ portfw status");
    run_checked(
        lab.server([portfw.as_os_str(), "status".as_ref()])
            .stdin(Stdio::null()),
    )?;
    println!("demo: $ portfw detach --iface {iface}");
    run_checked(
        lab.server([
            portfw.as_os_str(),
            "detach".as_ref(),
            "--iface".as_ref(),
            iface.as_ref(),
        ])
        .stdin(Stdio::null()),
    )?;
    Ok(mismatches)
}

/// Makes one connection from the client; returns (allowed, what was seen, command shown).
fn attempt(lab: &Lab, check: &Check, ip: IpAddr) -> Result<(bool, String, String)> {
    let port = check.port.to_string();
    let ip_text = ip.to_string();
    let (mut cmd, shown, stdin) = match check.tool {
        Tool::Curl => {
            let url = match ip {
                IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
                IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"),
            };
            let cmd = lab.client([
                "curl",
                "-sS",
                "-g",
                "--connect-timeout",
                "2",
                "-m",
                "3",
                &url,
            ]);
            (cmd, format!("curl {url}"), None)
        }
        Tool::NcTcp => {
            let cmd = lab.client([NC, "-z", "-w", "2", &ip_text, &port]);
            (cmd, format!("nc -z {ip_text} {port}"), None)
        }
        Tool::NcUdp => {
            let cmd = lab.client([NC, "-u", "-w", "2", &ip_text, &port]);
            (
                cmd,
                format!("nc -u {ip_text} {port}"),
                Some("portfw-demo\n"),
            )
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", portfw_lab::show(&cmd)))?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing to `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let allowed = match check.tool {
        Tool::Curl | Tool::NcUdp => out.status.success() && stdout.contains("portfw-ok"),
        Tool::NcTcp => out.status.success(),
    };
    let detail = if !stdout.is_empty() {
        format!("reply: {stdout:?}")
    } else if !stderr.is_empty() {
        stderr
    } else if allowed {
        "connected".to_owned()
    } else {
        "no answer".to_owned()
    };
    Ok((allowed, detail, shown))
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
