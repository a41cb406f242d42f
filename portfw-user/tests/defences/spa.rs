//! Single-packet knocks: `portfw knock-key` writes a 0600 key; with `portfw agent` running,
//! `portfw knock` with the right key opens the door for its source alone, while a wrong
//! key, a replay of a captured knock (from another source) and a stale or future timestamp
//! open nothing, and each is logged; without an agent nothing opens.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{Logged, PORTFW, PYTHON, Rig, TOOLS, TempDir, counter, door_of, json_line, wait_for};

const OPENS: u16 = 2222;
const SPA_PORT: u16 = 62201;

fn policy(iface: &str, key: &Path) -> String {
    format!(
        "default: drop\n\
         log: drops\n\
         interfaces: [{iface}]\n\
         rules:\n  - allow: ssh\n\
         knock:\n  - name: spa\n    spa: {{port: {SPA_PORT}/udp, key-file: {}}}\n    \
         opens: {OPENS}/tcp\n    for: 5s\n",
        key.display()
    )
}

/// Starts `portfw agent` with `policy` on the lab's server interface, its log collected.
fn start_agent(rig: &mut Rig, policy: &Path) -> Logged {
    let policy = policy.display().to_string();
    let iface = rig.lab.server_iface().to_owned();
    let cmd = rig
        .lab
        .server([PORTFW, "agent", "--policy", &policy, "--iface", &iface]);
    Logged::spawn(&mut rig.lab, cmd, "the agent")
}

/// Whether something in the server namespace listens on UDP `port`.
fn udp_listening(rig: &Rig, port: u16) -> bool {
    rig.lab
        .run(
            crate::Side::Server,
            ["ss", "-H", "-u", "-l", "-n", &format!("sport = :{port}")],
        )
        .is_ok_and(|out| !out.trim().is_empty())
}

/// `portfw knock SERVER --door spa --key-file KEY EXTRA...` from `src` (by route), to the
/// server's address of `src`'s family.
fn knock(rig: &Rig, src: impl Into<IpAddr>, key: &Path, extra: &[&str]) {
    let src: IpAddr = src.into();
    rig.route_from(src);
    let server = rig.server_for(src).to_string();
    let key = key.display().to_string();
    let mut args = vec![
        PORTFW,
        "knock",
        &server,
        "--door",
        "spa",
        "--key-file",
        &key,
    ];
    args.extend_from_slice(extra);
    let out = rig
        .lab
        .client(&args)
        .stdin(Stdio::null())
        .output()
        .expect("portfw knock");
    assert!(
        out.status.success(),
        "portfw knock {}: {}",
        extra.join(" "),
        crate::text(&out)
    );
}

/// After a knock that should open nothing: the agent has had time to judge it, and `src`
/// still meets silence.
fn stays_closed(rig: &Rig, src: impl Into<IpAddr>) -> bool {
    thread::sleep(Duration::from_millis(500));
    rig.silent(src, OPENS)
}

#[test]
fn single_packet_knocks_open_the_door_only_when_signed_fresh_and_new() {
    let mut rig = Rig::new("df-spa", 7);
    let [knocker, bystander, replayer, wrong, stale, future, late] =
        [1, 2, 3, 4, 5, 6, 7].map(|i| rig.src(i));
    rig.start_echo(OPENS);
    let dir = TempDir::new("spa");
    let (key, wrong_key) = (dir.join("knock.key"), dir.join("wrong.key"));
    for file in [&key, &wrong_key] {
        let path = file.display().to_string();
        rig.portfw_ok(&["knock-key", &path]);
        let mode = fs::metadata(file).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{path} has mode {:o}", mode & 0o777);
    }
    assert_ne!(
        fs::read(&key).expect("key"),
        fs::read(&wrong_key).expect("key"),
        "two new keys are different"
    );
    let file = dir.join("spa.yaml");
    fs::write(&file, policy(rig.lab.server_iface(), &key)).expect("policy");

    // Applied by hand, with no agent: a good knock opens nothing.
    let path = file.display().to_string();
    rig.portfw_ok(&["apply", &path, "--iface", rig.lab.server_iface()]);
    knock(&rig, late, &key, &[]);
    assert!(
        stays_closed(&rig, late),
        "a knock opened the door without an agent"
    );

    let agent = start_agent(&mut rig, &file);
    wait_for(
        Duration::from_secs(20),
        "the agent listens on the SPA port",
        || udp_listening(&rig, SPA_PORT),
    );
    let before = rig.status();

    // The right key, captured on the client's veth as an eavesdropper would.
    let capture = dir.join("knock.pcap");
    let cap = capture.display().to_string();
    let mut tcpdump = rig.lab.client([
        "timeout",
        "20",
        "tcpdump",
        "-i",
        rig.lab.client_iface(),
        "-n",
        "-U",
        "-c",
        "1",
        "-w",
        &cap,
        &format!("udp dst port {SPA_PORT}"),
    ]);
    tcpdump
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let dump = rig.lab.spawn(tcpdump).expect("tcpdump");
    wait_for(
        Duration::from_secs(10),
        "tcpdump writes its capture",
        || fs::metadata(&capture).is_ok_and(|m| m.len() >= 24),
    );
    thread::sleep(Duration::from_millis(300));
    knock(&rig, knocker, &key, &[]);
    let knocked = Instant::now();
    assert!(
        rig.reaches(knocker, OPENS),
        "the right key did not open the door; agent log:\n{}",
        agent.text()
    );
    assert!(
        rig.silent(bystander, OPENS),
        "the door opened for a bystander"
    );
    let status = rig.status();
    let door = door_of(&status, "spa", &knocker.to_string())
        .unwrap_or_else(|| panic!("no open spa door for {knocker}: {:#}", status["doors"]));
    assert!(
        crate::seconds(&door["expires_in"]).is_some_and(|s| s > 0.0 && s <= 5.5),
        "a 5 s door: {door}"
    );
    assert!(
        counter(&status, "allow_spa") > counter(&before, "allow_spa"),
        "the knock counts as allow_spa"
    );
    let ended = rig
        .lab
        .wait(dump, Duration::from_secs(10))
        .expect("tcpdump");
    assert!(ended.success(), "tcpdump: {ended}");
    let seen = json_line(
        &rig.lab
            .client([PYTHON, TOOLS, "pcap-payloads", &cap])
            .stdin(Stdio::null())
            .output()
            .expect("read the capture"),
        "pcap-payloads",
    );
    let captured = seen["payloads"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no knock in the capture: {seen}"))
        .to_owned();
    assert!(
        captured.starts_with("5046574b"),
        "a knock starts with PFWK: {captured}"
    );

    // The same datagram again, from another source: the nonce was seen.
    rig.tool(
        "send",
        replayer,
        &["--port", &SPA_PORT.to_string(), "--hex", &captured],
    );
    assert!(
        stays_closed(&rig, replayer),
        "a replayed knock opened the door"
    );
    // A wrong key, a stale and a future timestamp.
    knock(&rig, wrong, &wrong_key, &[]);
    assert!(
        stays_closed(&rig, wrong),
        "a knock with the wrong key opened the door"
    );
    knock(&rig, stale, &key, &["--timestamp-offset", "-120"]);
    assert!(
        stays_closed(&rig, stale),
        "a knock 120 s old opened the door"
    );
    knock(&rig, future, &key, &["--timestamp-offset", "120"]);
    assert!(
        stays_closed(&rig, future),
        "a knock 120 s ahead opened the door"
    );
    let status = rig.status();
    for src in [replayer, wrong, stale, future] {
        assert!(
            door_of(&status, "spa", &src.to_string()).is_none(),
            "a door for {src}: {:#}",
            status["doors"]
        );
        assert!(
            agent.count(&src.to_string()) > 0,
            "the agent did not log the refused knock from {src}:\n{}",
            agent.text()
        );
    }

    // The door closes after its 5 s.
    thread::sleep(
        Duration::from_secs(5).saturating_sub(knocked.elapsed()) + Duration::from_millis(500),
    );
    assert!(rig.silent(knocker, OPENS), "the door is open after its 5 s");

    // Stopped, the agent opens nothing more.
    // SAFETY: a signal to the agent this test started.
    assert_eq!(
        unsafe { libc::kill(agent.pid as libc::pid_t, libc::SIGTERM) },
        0
    );
    let exit = rig
        .lab
        .wait(agent.id, Duration::from_secs(10))
        .expect("agent exit");
    assert!(exit.success(), "agent exit: {exit}\n{}", agent.text());
    knock(&rig, late, &key, &[]);
    assert!(
        stays_closed(&rig, late),
        "a knock opened the door after the agent stopped"
    );
}

#[test]
fn an_ipv6_single_packet_knock_opens_the_door_for_its_address() {
    let mut rig = Rig::new("df-spa-v6", 0);
    let [knocker, neighbour, _] = rig.v6_sources();
    rig.start_echo(OPENS);
    let dir = TempDir::new("spa-v6");
    let key = dir.join("knock.key");
    rig.portfw_ok(&["knock-key", &key.display().to_string()]);
    let file = dir.join("spa.yaml");
    fs::write(&file, policy(rig.lab.server_iface(), &key)).expect("policy");
    let _agent = start_agent(&mut rig, &file);
    wait_for(
        Duration::from_secs(20),
        "the agent listens on the SPA port",
        || udp_listening(&rig, SPA_PORT),
    );
    knock(&rig, knocker, &key, &[]);
    assert!(
        rig.reaches(knocker, OPENS),
        "an IPv6 knock with the right key did not open the door"
    );
    assert!(
        rig.silent(neighbour, OPENS),
        "the door opened for {neighbour}, another address of the knocker's /64"
    );
}
