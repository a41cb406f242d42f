//! Confirm or roll back, end to end: `portfw apply --try` in a lab namespace, with real
//! connections from the client proving which policy is in force before, during and after
//! the trial. Unconfirmed trials roll back at their deadline (even when the terminal that
//! ran apply hangs up, or apply is killed), confirmed ones stay, and a second apply during
//! a trial is refused. Needs root.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::Stdio,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::e2e::{
    PORTFW, PolicyFile, apply,
    lab::{Lab, Side},
    nc_connects, portfw, root_lab, text, wait_for,
};
use portfw::cli::{EXIT_ERROR, EXIT_INVALID};

/// Allows only `port`/tcp.
fn only(port: u16) -> String {
    format!("default: drop\nlog: none\nrules:\n  - allow: {port}/tcp\n")
}

const OLD: u16 = 80;
const NEW: u16 = 8080;

fn reaches(lab: &Lab, port: u16) -> bool {
    nc_connects(lab, IpAddr::V4(lab.server_v4()), port)
}

/// Asserts which of OLD and NEW the filter lets through.
fn assert_in_force(lab: &Lab, port: u16, when: &str) {
    let other = if port == OLD { NEW } else { OLD };
    assert!(reaches(lab, port), "{when}: {port} must connect");
    assert!(!reaches(lab, other), "{when}: {other} must be dropped");
}

fn status(lab: &Lab) -> Option<serde_json::Value> {
    let out = portfw(lab, &["status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("status json"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pending trial's status object.
fn trial(lab: &Lab) -> serde_json::Value {
    status(lab).map(|s| s["trial"].clone()).unwrap_or_default()
}

fn lab_with_responder(tag: &str) -> Lab {
    let mut lab = root_lab(tag);
    lab.start_responder(&[OLD, NEW], &[]).expect("responder");
    lab
}

fn try_apply(lab: &Lab, policy: &PolicyFile, secs: u32) -> std::process::Output {
    let path = policy.path();
    let secs = secs.to_string();
    portfw(
        lab,
        &[
            "apply",
            &path,
            "--iface",
            lab.server_iface(),
            "--try",
            &secs,
        ],
    )
}

#[test]
fn an_unconfirmed_trial_rolls_back_at_its_deadline() {
    let lab = lab_with_responder("tr-unconf");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let new = PolicyFile::new("new.yaml", &only(NEW));
    apply(&lab, &old, &[]);
    assert_in_force(&lab, OLD, "before the trial");
    let before = status(&lab).expect("status");

    let out = try_apply(&lab, &new, 10);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ON TRIAL for 10 s"), "{stdout}");
    assert!(stdout.contains("`portfw confirm`"), "{stdout}");
    assert!(
        stdout.contains("the previous policy (generation"),
        "{stdout}"
    );

    let t = trial(&lab);
    assert!(t.is_object(), "status must show the trial: {t}");
    assert_eq!(t["rollback_to"], before["generation"], "{t}");
    assert!(
        t["file"].as_str().is_some_and(|f| f.ends_with("new.yaml")),
        "{t}"
    );
    assert!(
        t["seconds_left"].as_u64().is_some_and(|s| s > 0 && s <= 10),
        "{t}"
    );
    assert_eq!(t["watchdog_alive"], true, "{t}");
    let text_status = portfw(&lab, &["status"]);
    assert!(
        String::from_utf8_lossy(&text_status.stdout).contains("TRIAL: "),
        "{}",
        text(&text_status)
    );
    assert_in_force(&lab, NEW, "during the trial");

    let deadline = t["deadline"].as_u64().expect("deadline");
    wait_for(Duration::from_secs(25), "the rollback", || {
        trial(&lab).is_null()
    });
    assert!(unix_now() >= deadline, "rolled back before the deadline");
    assert_in_force(&lab, OLD, "after the rollback");
    let after = status(&lab).expect("status after the rollback");
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["policy"], before["policy"], "the old policy's record");
    assert_eq!(after["attachments"][0]["iface"], lab.server_iface());
}

#[test]
fn a_confirmed_trial_stays() {
    let lab = lab_with_responder("tr-conf");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let new = PolicyFile::new("new.yaml", &only(NEW));
    apply(&lab, &old, &[]);
    let out = try_apply(&lab, &new, 6);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = trial(&lab)["deadline"].as_u64().expect("deadline");
    let watchdog = trial(&lab)["watchdog"].as_u64().expect("watchdog pid");

    let out = portfw(&lab, &["confirm"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stays in force"),
        "{}",
        text(&out)
    );
    assert!(trial(&lab).is_null(), "no trial after confirm");
    wait_for(Duration::from_secs(5), "the watchdog to exit", || {
        !std::path::Path::new(&format!("/proc/{watchdog}")).exists()
            || std::fs::read_to_string(format!("/proc/{watchdog}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    while unix_now() <= deadline + 2 {
        thread::sleep(Duration::from_millis(250));
    }
    assert_in_force(&lab, NEW, "past the deadline of a confirmed trial");

    let again = portfw(&lab, &["confirm"]);
    assert_eq!(
        again.status.code(),
        Some(i32::from(EXIT_ERROR)),
        "{}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no trial is pending"),
        "{}",
        text(&again)
    );
}

/// Reads `child`'s stdout until a line containing `marker`, bounded.
fn read_until(lab: &mut Lab, id: common::e2e::lab::ChildId, marker: &str) -> String {
    let stdout = lab
        .child_mut(id)
        .and_then(|c| c.stdout.take())
        .expect("stdout pipe");
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(&marker) {
                let _ = tx.send(seen.clone());
            }
        }
        let _ = tx.send(seen);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("output within a minute")
}

#[test]
fn a_trial_is_rolled_back_when_its_terminal_hangs_up() {
    let mut lab = lab_with_responder("tr-hup");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let new = PolicyFile::new("new.yaml", &only(NEW));
    apply(&lab, &old, &[]);
    // apply runs in a shell on a pseudo-terminal, as over SSH; then the terminal goes away
    // (its master side closes), which hangs up everything in its session.
    let command = format!(
        "{PORTFW} apply {} --iface {} --try 8; sleep 120",
        new.path(),
        lab.server_iface()
    );
    let mut cmd = lab.server(["script", "-qfec", &command, "/dev/null"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let id = lab.spawn(cmd).expect("script");
    let seen = read_until(&mut lab, id, "portfw confirm");
    assert!(seen.contains("ON TRIAL"), "{seen}");
    lab.kill(id);
    assert_in_force(&lab, NEW, "during the trial, after the hang-up");
    let t = trial(&lab);
    assert_eq!(
        t["watchdog_alive"], true,
        "the watchdog survived the hang-up: {t}"
    );
    wait_for(Duration::from_secs(25), "the rollback", || {
        trial(&lab).is_null()
    });
    assert_in_force(&lab, OLD, "after the rollback");
}

#[test]
fn a_trial_on_an_unfiltered_host_is_removed_even_if_apply_is_killed() {
    let mut lab = lab_with_responder("tr-kill");
    let new = PolicyFile::new("new.yaml", &only(NEW));
    assert!(
        reaches(&lab, OLD) && reaches(&lab, NEW),
        "unfiltered at first"
    );
    let path = new.path();
    let mut cmd = lab.server([
        PORTFW,
        "apply",
        &path,
        "--iface",
        lab.server_iface(),
        "--try",
        "8",
    ]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let id = lab.spawn(cmd).expect("apply");
    let seen = read_until(&mut lab, id, "ON TRIAL");
    assert!(seen.contains("the filter is removed"), "{seen}");
    // SIGKILL, right after it printed: nothing of apply survives but its watchdog.
    lab.kill(id);
    assert_in_force(&lab, NEW, "during the trial");
    wait_for(Duration::from_secs(25), "the filter's removal", || {
        status(&lab).is_none()
    });
    assert!(
        !lab.pin_dir().exists(),
        "pins left in {}",
        lab.pin_dir().display()
    );
    assert!(reaches(&lab, OLD) && reaches(&lab, NEW), "unfiltered again");
}

#[test]
fn a_second_apply_during_a_trial_is_refused() {
    let lab = lab_with_responder("tr-second");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let new = PolicyFile::new("new.yaml", &only(NEW));
    let third = PolicyFile::new("third.yaml", &only(22));
    apply(&lab, &old, &[]);
    let out = try_apply(&lab, &new, 60);
    assert!(out.status.success(), "{}", text(&out));

    for args in [vec![], vec!["--try", "30"]] {
        let path = third.path();
        let mut full = vec!["apply", path.as_str(), "--iface", lab.server_iface()];
        full.extend(args);
        let out = portfw(&lab, &full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(EXIT_ERROR)),
            "{}",
            text(&out)
        );
        assert!(stderr.contains("a trial is pending"), "{stderr}");
        assert!(stderr.contains("new.yaml is on trial until"), "{stderr}");
        assert!(stderr.contains("`portfw confirm`"), "{stderr}");
    }
    assert!(trial(&lab).is_object(), "the trial is still pending");
    assert_in_force(&lab, NEW, "after the refused apply");

    let out = portfw(&lab, &["confirm"]);
    assert!(out.status.success(), "{}", text(&out));
    apply(&lab, &third, &[]);
    assert!(
        !reaches(&lab, NEW),
        "the third policy is in force once confirmed"
    );
}

#[test]
fn a_trial_that_needs_a_new_program_is_refused_up_front() {
    let lab = lab_with_responder("tr-reload");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let resized = PolicyFile::new(
        "resized.yaml",
        &format!("{}flows:\n  max: 4096\n", only(NEW)),
    );
    apply(&lab, &old, &[]);
    let before = status(&lab).expect("status");
    let out = try_apply(&lab, &resized, 30);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_ERROR)),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--try cannot protect this apply"),
        "{}",
        text(&out)
    );
    let after = status(&lab).expect("status");
    assert_eq!(before["policy"], after["policy"]);
    assert!(after["trial"].is_null());
    assert_in_force(&lab, OLD, "after the refused trial");

    let broken = PolicyFile::new("broken.yaml", "default: maybe\n");
    let out = try_apply(&lab, &broken, 30);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_INVALID)),
        "{}",
        text(&out)
    );
    assert!(status(&lab).expect("status")["trial"].is_null());
}

#[test]
fn an_overdue_trial_whose_watchdog_died_is_rolled_back_by_the_next_command() {
    let lab = lab_with_responder("tr-overdue");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let new = PolicyFile::new("new.yaml", &only(NEW));
    apply(&lab, &old, &[]);
    let out = try_apply(&lab, &new, 5);
    assert!(out.status.success(), "{}", text(&out));
    let t = trial(&lab);
    let watchdog = t["watchdog"].as_u64().expect("watchdog pid").to_string();
    // The watchdog runs in the lab's namespace: it is this test's to stop.
    lab.run(Side::Server, ["kill", "-KILL", &watchdog])
        .expect("kill the watchdog");
    let deadline = t["deadline"].as_u64().expect("deadline");
    while unix_now() <= deadline + 1 {
        thread::sleep(Duration::from_millis(250));
    }
    let t = trial(&lab);
    assert_eq!(t["watchdog_alive"], false, "{t}");
    assert_eq!(t["seconds_left"], 0, "{t}");
    assert!(
        String::from_utf8_lossy(&portfw(&lab, &["status"]).stdout).contains("TRIAL OVERDUE"),
        "status says the rollback is overdue"
    );

    let out = portfw(&lab, &["confirm"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_ERROR)),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too late"),
        "{}",
        text(&out)
    );
    assert!(trial(&lab).is_null());
    assert_in_force(&lab, OLD, "after the overdue rollback");
}

#[test]
fn a_rolled_back_trial_puts_the_interfaces_back() {
    let lab = lab_with_responder("tr-ifaces");
    let old = PolicyFile::new("old.yaml", &only(OLD));
    let new = PolicyFile::new("new.yaml", &only(NEW));
    apply(&lab, &old, &[]);
    // The trial moves the filter from the veth to the loopback device.
    let out = portfw(&lab, &["apply", &new.path(), "--iface", "lo", "--try", "8"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("detached from {}", lab.server_iface())),
        "{}",
        text(&out)
    );
    assert!(
        reaches(&lab, OLD) && reaches(&lab, NEW),
        "the veth is unfiltered during the trial"
    );
    wait_for(Duration::from_secs(25), "the rollback", || {
        trial(&lab).is_null()
    });
    let after = status(&lab).expect("status");
    let ifaces: Vec<&str> = after["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["iface"].as_str())
        .collect();
    assert_eq!(ifaces, [lab.server_iface()], "{after}");
    assert!(!lab.pin_dir().join("link-lo").exists(), "lo's link is gone");
    assert_in_force(&lab, OLD, "on the veth again after the rollback");
}
