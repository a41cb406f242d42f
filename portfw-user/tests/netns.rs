//! End-to-end tests in network namespaces: `portfw apply` runs in the server namespace and
//! exits, then real clients (curl, nc, nmap, scapy, python sockets) in the client namespace
//! check that the filter it left behind judges traffic as the policy says.
//! Needs root. Every lab removes its namespaces and pins when dropped, even on panic.
mod common;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Output, Stdio},
    time::Duration,
};

use common::e2e::{
    PORTFW, PolicyFile, apply, curl,
    lab::{Probe, Proto, Side},
    nc_connects, nc_connects_from, portfw, probe, root_lab, server_ips, text,
};

const POLICY: &str = "\
default: drop
log: drops
rules:
  - name: admin
    allow: [ssh, 80/tcp]
  - name: dns
    allow: 53
  - allow: 5001/udp
  - name: no-dev
    drop: 8000-8999/tcp
";

#[test]
fn tcp_and_udp_over_ipv4_and_ipv6_follow_the_policy() {
    let mut lab = root_lab("nt-basic");
    lab.start_responder(&[22, 53, 80, 8080, 9000], &[53, 5001, 5353])
        .expect("responder");
    // Unfiltered, every port answers: a later silence is the filter's doing.
    for ip in server_ips(&lab) {
        assert!(
            nc_connects(&lab, ip, 8080),
            "{ip}:8080 unreachable before apply"
        );
        assert!(
            probe(&lab, Proto::Udp, ip, 5353).is_open(),
            "{ip} udp 5353 before apply"
        );
    }
    let policy = PolicyFile::new("basic.yaml", POLICY);
    let out = apply(&lab, &policy, &[]);
    // `output()` returned: the apply process has exited, and the filter must outlive it.
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));

    for ip in server_ips(&lab) {
        assert_eq!(
            curl(&lab, ip, 80).as_deref(),
            Some("portfw-ok\n"),
            "curl {ip}:80"
        );
        assert!(nc_connects(&lab, ip, 22), "nc {ip}:22 must connect");
        assert!(nc_connects(&lab, ip, 53), "nc {ip}:53 (tcp) must connect");
        assert!(!nc_connects(&lab, ip, 8080), "nc {ip}:8080 must be dropped");
        assert_eq!(
            probe(&lab, Proto::Tcp, ip, 9000),
            Probe::Timeout,
            "{ip} tcp 9000 (default)"
        );
        assert_eq!(curl(&lab, ip, 8080), None, "curl {ip}:8080 must fail");
        assert_eq!(
            probe(&lab, Proto::Udp, ip, 53),
            Probe::Open("portfw-ok 53\n".into()),
            "{ip} udp 53"
        );
        assert!(probe(&lab, Proto::Udp, ip, 5001).is_open(), "{ip} udp 5001");
        assert_eq!(
            probe(&lab, Proto::Udp, ip, 5353),
            Probe::Timeout,
            "{ip} udp 5353"
        );
    }

    let status = portfw(&lab, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(json["attachments"][0]["iface"], lab.server_iface());
    let counter = |name: &str| {
        json["counters"]
            .as_array()
            .and_then(|c| c.iter().find(|pair| pair[0] == name))
            .and_then(|pair| pair[1].as_u64())
            .unwrap_or(0)
    };
    assert!(counter("drop_rule") > 0, "{json}");
    assert!(counter("drop_default") > 0, "{json}");
    assert!(counter("allow_rule") > 0, "{json}");
}

#[test]
fn nmap_sees_allowed_ports_and_dropped_ones_as_filtered() {
    let mut lab = root_lab("nt-nmap");
    lab.start_responder(&[1005, 2000, 2002], &[])
        .expect("responder");
    let policy = PolicyFile::new(
        "nmap.yaml",
        "default: drop\nrules:\n  - allow: 1000-1010/tcp\n  - allow: 2000/tcp\n",
    );
    apply(&lab, &policy, &[]);
    for ip in server_ips(&lab) {
        let mut args = vec![
            "nmap",
            "-n",
            "-Pn",
            "-sS",
            "--max-retries",
            "1",
            "--host-timeout",
            "120s",
            "-p",
            "998-1012,1999-2003",
            "-oG",
            "-",
        ];
        if ip.is_ipv6() {
            args.push("-6");
        }
        let target = ip.to_string();
        args.push(&target);
        let out = lab
            .client(&args)
            .stdin(Stdio::null())
            .output()
            .expect("nmap");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "nmap: {}", text(&out));
        let state = |port: u16| {
            report
                .split([',', '\t', ' '])
                .find(|f| f.starts_with(&format!("{port}/")))
                .and_then(|f| f.split('/').nth(1))
                .unwrap_or("filtered") // grepable output folds the common state away
                .to_string()
        };
        assert_eq!(state(1005), "open", "{ip} 1005: {report}");
        assert_eq!(state(2000), "open", "{ip} 2000: {report}");
        for closed in [1000, 1001, 1009, 1010] {
            // Allowed through, nothing listens: the kernel answers with a reset.
            assert_eq!(state(closed), "closed", "{ip} {closed}: {report}");
        }
        for dropped in [998, 999, 1011, 1012, 1999, 2001, 2002, 2003] {
            assert_eq!(state(dropped), "filtered", "{ip} {dropped}: {report}");
        }
    }
}

#[test]
fn vlan_tagged_frames_get_the_same_verdicts() {
    let mut lab = root_lab("nt-vlan");
    let policy = PolicyFile::new(
        "vlan.yaml",
        "default: drop\nrules:\n  - allow: 22/tcp\n  - allow: 5001/udp\n",
    );
    apply(&lab, &policy, &[]);
    let capture = std::env::temp_dir().join(format!("portfw-vlan-{}.json", std::process::id()));
    // Four allowed frames must arrive; the dropped ones are sent first, so if any slipped
    // through they would be counted and the check below would see them.
    let sniffer = lab
        .start_vlan_sniffer(&capture, Duration::from_secs(40), 4)
        .expect("sniffer");
    for (vlans, v6) in [
        ("10", false),
        ("100,200", false),
        ("10", true),
        ("100,200", true),
    ] {
        lab.send_tagged(vlans, v6, Proto::Tcp, 8080).expect("send");
        lab.send_tagged(vlans, v6, Proto::Udp, 5002).expect("send");
    }
    for (vlans, v6) in [("10", false), ("100,200", true)] {
        lab.send_tagged(vlans, v6, Proto::Tcp, 22).expect("send");
        lab.send_tagged(vlans, v6, Proto::Udp, 5001).expect("send");
    }
    let status = lab.wait(sniffer, Duration::from_secs(60)).expect("sniffer");
    assert!(status.success(), "sniffer: {status}");
    let json = fs::read_to_string(&capture).expect("capture");
    let _ = fs::remove_file(&capture);
    for blocked in [r#""dport": 8080"#, r#""dport": 5002"#] {
        assert!(!json.contains(blocked), "{blocked} got past XDP: {json}");
    }
    for passed in [
        r#""vlans": [10], "proto": "tcp", "dport": 22"#,
        r#""vlans": [10], "proto": "udp", "dport": 5001"#,
        r#""vlans": [100, 200], "proto": "tcp", "dport": 22"#,
        r#""vlans": [100, 200], "proto": "udp", "dport": 5001"#,
    ] {
        assert!(
            json.contains(passed),
            "{passed} missing from capture: {json}"
        );
    }
}

#[test]
fn events_show_the_drop_of_a_blocked_connection() {
    let mut lab = root_lab("nt-events");
    lab.start_responder(&[8080], &[]).expect("responder");
    let policy = PolicyFile::new("events.yaml", POLICY);
    apply(&lab, &policy, &[]);
    for json in [true, false] {
        let mut cmd = lab.server([PORTFW, "events", "--count", "1", "--timeout", "30"]);
        if json {
            cmd.arg("--json");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let id = lab.spawn(cmd).expect("events");
        let stdout = lab
            .child_mut(id)
            .and_then(|c| c.stdout.take())
            .expect("events stdout");
        // The SYN is retransmitted while nc waits, so the event arrives even if the
        // stream started a moment late.
        let reached = nc_connects(&lab, lab.server_v4().into(), 8080);
        assert!(!reached, "8080 must be blocked");
        let line = BufReader::new(stdout)
            .lines()
            .next()
            .expect("an event line")
            .expect("read event");
        let status = lab.wait(id, Duration::from_secs(30)).expect("events exit");
        assert!(status.success(), "events: {status}");
        let client = lab.client_v4().to_string();
        let server = lab.server_v4().to_string();
        if json {
            let e: serde_json::Value = serde_json::from_str(&line).expect("event json");
            assert_eq!(e["verdict"], "drop", "{line}");
            assert_eq!(e["protocol"], "tcp", "{line}");
            assert_eq!(e["dst_port"], 8080, "{line}");
            assert_eq!(e["src"], client.as_str(), "{line}");
            assert_eq!(e["dst"], server.as_str(), "{line}");
            assert_eq!(e["rule"], 4, "{line}");
            assert_eq!(e["rule_name"], "no-dev", "{line}");
            assert_eq!(e["iface"], lab.server_iface(), "{line}");
            assert!(
                e["tcp_flags"]
                    .as_array()
                    .is_some_and(|f| f.contains(&"SYN".into()))
            );
        } else {
            let expected = format!("{} DROP tcp {client}:", lab.server_iface());
            assert!(line.contains(&expected), "{line}");
            assert!(
                line.contains(&format!("-> {server}:8080 rule 4 (no-dev) [SYN]")),
                "{line}"
            );
        }
    }
}

#[test]
fn detach_restores_reachability_and_removes_the_pins() {
    let mut lab = root_lab("nt-detach");
    lab.start_responder(&[8080], &[]).expect("responder");
    let policy = PolicyFile::new("detach.yaml", POLICY);
    apply(&lab, &policy, &[]);
    let ip: IpAddr = lab.server_v4().into();
    assert!(
        !nc_connects(&lab, ip, 8080),
        "8080 blocked while the filter runs"
    );
    assert!(
        lab.pin_dir().exists(),
        "pins in {}",
        lab.pin_dir().display()
    );
    let out = portfw(&lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(nc_connects(&lab, ip, 8080), "8080 reachable after detach");
    assert!(
        nc_connects(&lab, lab.server_v6().into(), 8080),
        "v6 8080 after detach"
    );
    assert!(
        !lab.pin_dir().exists(),
        "pins left in {}",
        lab.pin_dir().display()
    );
    let status = portfw(&lab, &["status"]);
    assert!(
        !status.status.success(),
        "status after detach: {}",
        text(&status)
    );
}

#[test]
fn a_broken_policy_is_refused_and_the_running_filter_is_untouched() {
    let mut lab = root_lab("nt-broken");
    lab.start_responder(&[22, 8080], &[]).expect("responder");
    let good = PolicyFile::new("good.yaml", POLICY);
    apply(&lab, &good, &[]);
    let before = portfw(&lab, &["status", "--json"]);
    let broken = PolicyFile::new(
        "bad.yaml",
        "default: drop\nrules:\n  - allow: ssh\n  - allow: 70000/tcp\n  - drop: 9000-8000\n",
    );
    let out = portfw(
        &lab,
        &["apply", &broken.path(), "--iface", lab.server_iface()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An invalid policy exits 2, apart from the 1 of a command that could not run.
    assert_eq!(
        out.status.code(),
        Some(i32::from(portfw::cli::EXIT_INVALID)),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains(&format!(
            "{}:4:12: port 70000 is out of range 0-65535",
            broken.path()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:5:11:", broken.path())),
        "reversed range: {stderr}"
    );
    let after = portfw(&lab, &["status", "--json"]);
    let policy_of = |o: &Output| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("status json")["policy"]
            .clone()
    };
    assert_eq!(
        policy_of(&before),
        policy_of(&after),
        "the running policy changed"
    );
    let ip: IpAddr = lab.server_v4().into();
    assert!(nc_connects(&lab, ip, 22), "22 still allowed");
    assert!(!nc_connects(&lab, ip, 8080), "8080 still dropped");

    let missing = portfw(&lab, &["apply", &good.path(), "--iface", "no-such-if0"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-if0"));
    assert!(nc_connects(&lab, ip, 22) && !nc_connects(&lab, ip, 8080));
}

#[test]
fn applying_again_replaces_the_policy_in_place() {
    let mut lab = root_lab("nt-reapply");
    lab.start_responder(&[80, 8080], &[]).expect("responder");
    let first = PolicyFile::new("a.yaml", "default: drop\nrules:\n  - allow: 80/tcp\n");
    let second = PolicyFile::new("b.yaml", "default: drop\nrules:\n  - allow: 8080/tcp\n");
    let ip: IpAddr = lab.server_v6().into();
    let out = apply(&lab, &first, &["--mode", "generic"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(generic)"),
        "{}",
        text(&out)
    );
    assert!(nc_connects(&lab, ip, 80) && !nc_connects(&lab, ip, 8080));
    let out = apply(&lab, &second, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("updated program"),
        "{}",
        text(&out)
    );
    assert!(!nc_connects(&lab, ip, 80) && nc_connects(&lab, ip, 8080));
    // Switching to native mode re-attaches; the policy stays the second one.
    let out = apply(&lab, &second, &["--mode", "native"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(native)"),
        "{}",
        text(&out)
    );
    assert!(!nc_connects(&lab, ip, 80) && nc_connects(&lab, ip, 8080));
}

#[test]
fn ip_netns_exec_is_refused_with_advice() {
    let lab = root_lab("nt-ipnetns");
    let policy = PolicyFile::new("p.yaml", POLICY);
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.server_ns(),
            PORTFW,
            "apply",
            &policy.path(),
        ])
        .args(["--iface", lab.server_iface()])
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr.contains("nsenter --net=/run/netns/"), "{stderr}");
    assert!(!lab.pin_dir().exists());
}

#[test]
fn source_rules_judge_each_client_address_and_explain_agrees() {
    let mut lab = root_lab("nt-from");
    let [a, b, c, _] = lab.client_v4().octets();
    let v4 = |last: u8| IpAddr::from([a, b, c, last]);
    let v6_base = lab.client_v6().segments();
    let v6 = |last: u16| {
        let mut s = v6_base;
        s[7] = last;
        IpAddr::from(s)
    };
    // Extra client addresses, in and out of the policy's prefixes.
    for (addr, len) in [(v4(3), 24), (v4(40), 24), (v6(3), 64), (v6(0x40), 64)] {
        lab.run(
            Side::Client,
            [
                "ip",
                "addr",
                "add",
                &format!("{addr}/{len}"),
                "dev",
                lab.client_iface(),
                "nodad",
            ],
        )
        .expect("add client address");
    }
    lab.start_responder(&[22, 80, 443], &[]).expect("responder");
    let net4 = format!("{a}.{b}.{c}.0");
    let policy = PolicyFile::new(
        "from.yaml",
        &format!(
            "default: drop\nsets:\n  admins: [{}/32, {}/128]\n  office: [{net4}/27, {}/121]\nrules:\n  - name: ssh-admins\n    allow: ssh\n    from: $admins\n  - drop: ssh\n  - name: office-web\n    allow: 80/tcp\n    from: $office\n  - allow: 443/tcp\n",
            v4(3),
            v6(3),
            v6(0)
        ),
    );
    apply(&lab, &policy, &[]);
    let server4: IpAddr = lab.server_v4().into();
    let server6: IpAddr = lab.server_v6().into();
    // (source, ssh allowed, web allowed): .3 is an admin inside the office /27; .40 is
    // outside both; .2 is inside the office only. ::3 admin and office; ::40 neither.
    let cases = [
        (v4(3), server4, true, true),
        (v4(40), server4, false, false),
        (v4(2), server4, false, true),
        (v6(3), server6, true, true),
        (v6(0x40), server6, false, true),
        (v6(2), server6, false, true),
    ];
    for (source, server, ssh, web) in cases {
        assert_eq!(
            nc_connects_from(&lab, Some(source), server, 22),
            ssh,
            "ssh from {source}"
        );
        assert_eq!(
            nc_connects_from(&lab, Some(source), server, 80),
            web,
            "web from {source}"
        );
        assert!(
            nc_connects_from(&lab, Some(source), server, 443),
            "443 from {source}"
        );
        // The running filter's tables and the policy file explain the same verdict.
        for port in ["22", "80/tcp", "443", "22/udp"] {
            let args = |with_policy: bool| {
                let mut v = vec!["explain".to_string()];
                if with_policy {
                    v.push(policy.path());
                }
                v.extend([
                    "--from".into(),
                    source.to_string(),
                    "--to".into(),
                    port.into(),
                ]);
                v
            };
            let first_line = |args: Vec<String>| {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = portfw(&lab, &refs);
                assert!(out.status.success(), "{}", text(&out));
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            let from_file = first_line(args(true));
            let from_kernel = first_line(args(false));
            assert_eq!(from_file, from_kernel, "explain {source} -> {port}");
        }
    }
}

#[test]
fn detaching_from_an_interface_the_filter_is_not_on_says_so_and_changes_nothing() {
    let mut lab = root_lab("nt-detach-other");
    lab.start_responder(&[8080], &[]).expect("responder");
    let policy = PolicyFile::new("detach-other.yaml", POLICY);
    apply(&lab, &policy, &[]);
    // `lo` exists in every namespace, and the filter was applied to the veth only.
    let out = portfw(&lab, &["detach", "--iface", "lo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr.contains("not attached to `lo`"),
        "stderr must name lo as not attached: {}",
        text(&out)
    );
    assert!(!stderr.contains("internal error"), "{}", text(&out));

    let status = portfw(&lab, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(
        json["attachments"][0]["iface"],
        lab.server_iface(),
        "{json}"
    );
    assert_eq!(json["attachments"][0]["live"], true, "{json}");
    assert!(
        lab.pin_dir().exists(),
        "pins in {}",
        lab.pin_dir().display()
    );
    assert!(
        !nc_connects(&lab, lab.server_v4().into(), 8080),
        "8080 still blocked: the filter stays attached"
    );
}
