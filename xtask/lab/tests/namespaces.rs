//! Tests of the lab itself and its python helpers, in real namespaces (root only, as CI runs them).

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use portfw_lab::{Lab, NETNS_DIR, PYTHON, Probe, Proto, RouterLab, Side, script};

const SHORT: Duration = Duration::from_millis(700);

/// Waits until process `pid` has entered the network namespace of inode `netns`: nsenter
/// joins it only after it started, and a teardown before that would find nothing to kill.
fn wait_in_netns(pid: u32, netns: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
        != Some(netns)
    {
        assert!(
            Instant::now() < deadline,
            "process {pid} never entered netns {netns}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// How `child` ended, killing it if it has not within `timeout`: a process the teardown
/// missed must fail the test, not hang it.
fn ended_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn probes_see_answers_refusals_and_drops_on_both_families() {
    let mut lab = Lab::new("xtp").expect("lab");
    lab.start_responder(&[8080], &[5001]).expect("responder");
    for ip in [IpAddr::from(lab.server_v4()), IpAddr::from(lab.server_v6())] {
        let tcp = lab
            .probe(Side::Client, Proto::Tcp, ip, 8080, SHORT)
            .expect("tcp probe");
        assert!(
            matches!(&tcp, Probe::Open(reply) if reply.contains("portfw-ok")),
            "{ip} tcp: {tcp:?}"
        );
        let udp = lab
            .probe(Side::Client, Proto::Udp, ip, 5001, SHORT)
            .expect("udp probe");
        assert_eq!(udp, Probe::Open("portfw-ok 5001\n".to_owned()), "{ip} udp");
        let closed = lab
            .probe(Side::Client, Proto::Tcp, ip, 9, SHORT)
            .expect("closed probe");
        assert_eq!(closed, Probe::Refused, "{ip} tcp 9");
        let closed = lab
            .probe(Side::Client, Proto::Udp, ip, 9, SHORT)
            .expect("closed probe");
        assert_eq!(closed, Probe::Refused, "{ip} udp 9");
    }
    // A silent drop on the server, as XDP would do it, must read as a timeout.
    lab.run(
        Side::Server,
        [
            "nft",
            "add table inet t; add chain inet t in { type filter hook input priority 0; }; \
             add rule inet t in tcp dport 8080 drop; add rule inet t in udp dport 5001 drop",
        ],
    )
    .expect("nft");
    for ip in [IpAddr::from(lab.server_v4()), IpAddr::from(lab.server_v6())] {
        assert_eq!(
            lab.probe(Side::Client, Proto::Tcp, ip, 8080, SHORT)
                .expect("tcp"),
            Probe::Timeout,
            "{ip}"
        );
        assert_eq!(
            lab.probe(Side::Client, Proto::Udp, ip, 5001, SHORT)
                .expect("udp"),
            Probe::Timeout,
            "{ip}"
        );
    }
}

#[test]
fn labs_are_distinct_and_teardown_removes_everything() {
    let mut a = Lab::new("xtt").expect("lab a");
    let b = Lab::new("xtt").expect("lab b");
    assert_ne!(a.server_ns(), b.server_ns());
    assert_ne!(a.server_iface(), b.server_iface());
    assert_ne!(a.server_netns_inode(), b.server_netns_inode());
    assert!(a.server_iface().len() <= 15 && a.client_iface().len() <= 15);

    // Something pinned under the namespace's directory, and processes inside
    // it that the lab did and did not start itself.
    let pins = a.pin_dir();
    fs::create_dir_all(pins.join("links")).expect("mkdir in bpffs");
    a.spawn_server(["sleep", "600"]).expect("spawn");
    let mut stray = a.server(["sleep", "600"]).spawn().expect("stray process");
    wait_in_netns(stray.id(), a.server_netns_inode());
    let names = [a.server_ns().to_owned(), a.client_ns().to_owned()];
    drop(a);
    for name in &names {
        assert!(
            !Path::new(NETNS_DIR).join(name).exists(),
            "{name} still exists"
        );
    }
    assert!(!pins.exists(), "{} still exists", pins.display());
    let status = ended_within(&mut stray, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "stray process was not killed: {status:?}"
    );
    b.close().expect("close b");
}

#[test]
fn a_router_lab_masquerades_its_lan_and_tears_down_all_three_namespaces() {
    let mut router = RouterLab::new("xtr").expect("router lab");
    router
        .start_responder_on(Side::Client, &[8080], &[5001])
        .expect("remote responder");
    for ip in [
        IpAddr::from(router.client_v4()),
        IpAddr::from(router.client_v6()),
    ] {
        let tcp = router
            .lan_probe(Proto::Tcp, ip, 8080, Duration::from_secs(3))
            .expect("tcp probe");
        assert!(
            matches!(&tcp, Probe::Open(reply) if reply.contains("portfw-ok")),
            "{ip} tcp from the LAN: {tcp:?}"
        );
        let udp = router
            .lan_probe(Proto::Udp, ip, 5001, Duration::from_secs(3))
            .expect("udp probe");
        assert_eq!(udp, Probe::Open("portfw-ok 5001\n".to_owned()), "{ip} udp");
    }
    // The remote has no route to the LAN: it sees the router's address, masqueraded.
    let seen = router
        .run(
            Side::Client,
            ["ip", "route", "get", &router.lan_v4().to_string()],
        )
        .map(|out| out.contains(router.server_v4().to_string().as_str()));
    assert!(
        !matches!(seen, Ok(true)),
        "the remote must not route to the LAN: {seen:?}"
    );
    let names = [
        router.server_ns().to_owned(),
        router.client_ns().to_owned(),
        router.lan_ns().to_owned(),
    ];
    drop(router);
    for name in &names {
        assert!(
            !Path::new(NETNS_DIR).join(name).exists(),
            "{name} still exists"
        );
    }
}

#[test]
fn vlan_tagged_frames_are_sent_and_captured_with_their_tags() {
    let mut lab = Lab::new("xtv").expect("lab");
    let out = std::env::temp_dir().join(format!("pfw-vlan-{}.json", std::process::id()));
    let sniffer = lab
        .start_vlan_sniffer(&out, Duration::from_secs(20), 3)
        .expect("sniffer");
    lab.send_tagged("10", false, Proto::Tcp, 8080)
        .expect("send");
    lab.send_tagged("100,200", false, Proto::Udp, 5001)
        .expect("send");
    lab.send_tagged("300,400", true, Proto::Tcp, 22)
        .expect("send");
    let status = lab
        .wait(sniffer, Duration::from_secs(20))
        .expect("sniffer exit");
    assert!(status.success(), "sniffer: {status}");
    let json = fs::read_to_string(&out).expect("capture file");
    // Best effort: a leftover file in /tmp is harmless.
    let _ = fs::remove_file(&out);
    for expected in [
        r#""vlans": [10], "proto": "tcp", "dport": 8080"#,
        r#""vlans": [100, 200], "proto": "udp", "dport": 5001"#,
        r#""vlans": [300, 400], "proto": "tcp", "dport": 22"#,
    ] {
        assert!(json.contains(expected), "{expected} not in {json}");
    }
}

#[test]
fn the_helper_scripts_compile() {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')",
        ])
        .args(
            [
                "responder.py",
                "probe.py",
                "vlan_probe.py",
                "craft.py",
                "udp_blast.py",
            ]
            .map(script),
        )
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn teardown_runs_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let lab = Lab::new("xtpanic").expect("lab");
        tx.send(lab.server_ns().to_owned()).expect("send name");
        panic!("deliberate panic with a lab alive");
    })
    .join();
    assert!(outcome.is_err());
    let name = rx.recv().expect("lab name");
    assert!(
        !Path::new(NETNS_DIR).join(&name).exists(),
        "{name} still exists"
    );
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    // pid_max is at most 2^22, so this pid never runs.
    let dead = "pfw-xtstale-4999999-0-srv";
    let ours = format!("pfw-xtstale-{}-0-cli", std::process::id());
    for name in [dead, ours.as_str()] {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add");
        assert!(status.success());
    }
    let removed = Lab::cleanup_stale("pfw-xtstale-").expect("cleanup");
    assert_eq!(removed, 1);
    assert!(!Path::new(NETNS_DIR).join(dead).exists());
    assert!(Path::new(NETNS_DIR).join(&ours).exists());
    let status = Command::new("ip")
        .args(["netns", "delete", &ours])
        .status()
        .expect("ip netns delete");
    assert!(status.success());
}
