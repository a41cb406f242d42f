//! The scan guard and manual blocks: python and nmap scans block their source (every port,
//! allowed ones too, until the block expires) while other sources still connect; an
//! excepted source is never blocked; `portfw block` and `portfw unblock` by hand.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{Rig, block_of, counter, list, parallel, seconds, wait_for};

/// The allowed port, where the responder answers.
const SSH: u16 = 22;
/// How long a scan block lasts in these tests.
const BLOCK_SECS: f64 = 5.0;

/// A scan guard blocking at 8 distinct dropped ports within 5 s for 5 s; `except` the
/// lab's `excepted` address.
fn policy(excepted: Ipv4Addr) -> String {
    format!(
        "default: drop\n\
         log: drops\n\
         scan:\n  ports: 8\n  within: 5s\n  block: 5s\n  except: [{excepted}/32]\n\
         rules:\n  - allow: ssh\n"
    )
}

fn rig(tag: &str) -> Rig {
    let mut rig = Rig::new(tag, 4);
    rig.lab.start_responder(&[SSH], &[]).expect("responder");
    rig
}

/// The ports the scans try: 20 dropped ones and the allowed one.
const SCANNED: &str = "1000-1019,22";

/// Checks `src` is blocked (listed with reason `reason`, its allowed port silent) while
/// `other` still reaches it; returns when the block ends.
fn assert_blocked(rig: &Rig, src: Ipv4Addr, other: Ipv4Addr, reason: &str, what: &str) -> Instant {
    let asked = Instant::now();
    let status = rig.status();
    let block = block_of(&status, &src.to_string()).unwrap_or_else(|| {
        panic!(
            "{what}: {src} is not in the block table: {:#}",
            status["blocks"]
        )
    });
    assert!(
        block["reason"]
            .as_str()
            .is_some_and(|r| r.to_lowercase().contains(reason)),
        "{what}: the block's reason should say {reason}: {block}"
    );
    let left = seconds(&block["expires_in"])
        .unwrap_or_else(|| panic!("{what}: expires_in of {block} is not a duration"));
    assert!(
        left > 0.0 && left <= BLOCK_SECS + 0.5,
        "{what}: expires_in {left} for a {BLOCK_SECS} s block: {block}"
    );
    let [blocked, reached] = parallel(vec![
        Box::new(|| rig.silent(src, SSH)),
        Box::new(|| rig.reaches(other, SSH)),
    ])[..] else {
        unreachable!()
    };
    assert!(
        blocked,
        "{what}: {src} still reaches ssh although it is blocked"
    );
    assert!(
        reached,
        "{what}: {other}, which did not scan, cannot reach ssh"
    );
    asked + Duration::from_secs_f64(left)
}

/// Waits out a block ending at `ends`, then `src` reaches ssh again and is no longer listed.
fn assert_expires(rig: &Rig, src: Ipv4Addr, ends: Instant, what: &str) {
    thread::sleep(ends.saturating_duration_since(Instant::now()) + Duration::from_millis(300));
    assert!(
        rig.reaches(src, SSH),
        "{what}: {src} still cannot reach ssh after its block expired"
    );
    wait_for(
        Duration::from_secs(3),
        &format!("{what}: the expired block of {src} leaves status"),
        || block_of(&rig.status(), &src.to_string()).is_none(),
    );
}

#[test]
fn a_python_scan_blocks_its_source_until_the_block_expires() {
    let rig = rig("df-scan-py");
    let (scanner, other, excepted) = (rig.src(1), rig.src(2), rig.src(4));
    let _policy = rig.apply("scan.yaml", &policy(excepted));
    assert!(rig.reaches(scanner, SSH), "ssh before the scan");
    let before = rig.status();
    assert!(
        list(&before, "blocks").is_empty(),
        "no blocks yet: {before:#}"
    );

    let seen = rig.tool("scan", scanner, &["--ports", SCANNED, "--timeout", "0.8"]);
    assert!(
        seen["open"]
            .as_array()
            .is_some_and(|o| o.len() <= 1 && o.iter().all(|p| p == SSH)),
        "only ssh may answer the scan: {seen}"
    );
    let ends = assert_blocked(&rig, scanner, other, "scan", "after a python scan");
    let after = rig.status();
    assert_eq!(
        counter(&after, "scan_blocks") - counter(&before, "scan_blocks"),
        1,
        "one source blocked"
    );
    assert!(
        counter(&after, "drop_blocked") > counter(&before, "drop_blocked"),
        "the blocked source's packets count as drop_blocked"
    );
    assert_expires(&rig, scanner, ends, "a python scan");

    // A UDP scan counts its ports too.
    let udp_scanner = rig.src(3);
    rig.tool("scan", udp_scanner, &["--ports", "3000-3019", "--udp"]);
    wait_for(
        Duration::from_secs(2),
        "a UDP scan blocks its source",
        || block_of(&rig.status(), &udp_scanner.to_string()).is_some(),
    );
    assert!(rig.silent(udp_scanner, SSH), "the UDP scanner is blocked");
}

#[test]
fn nmap_syn_and_connect_scans_get_their_sources_blocked() {
    let rig = rig("df-scan-nmap");
    let (syn, connect, other, excepted) = (rig.src(1), rig.src(2), rig.src(3), rig.src(4));
    let _policy = rig.apply("scan.yaml", &policy(excepted));

    // A SYN scan from raw sockets, its source chosen with -S.
    let server = rig.server.to_string();
    let out = nmap(&rig, &["-sS", "-S", &syn.to_string(), &server]);
    assert!(
        out.contains("22/open") || out.contains("Ports:"),
        "nmap -sS ran: {out}"
    );
    let ends = assert_blocked(&rig, syn, other, "scan", "after nmap -sS");

    // A connect scan through the kernel's sockets, its source chosen by the route.
    rig.route_from(connect);
    let out = nmap(&rig, &["-sT", &server]);
    assert!(out.contains("Ports:"), "nmap -sT ran: {out}");
    assert_blocked(&rig, connect, other, "scan", "after nmap -sT");
    assert_eq!(
        counter(&rig.status(), "scan_blocks"),
        2,
        "two scanners blocked"
    );
    assert_expires(&rig, syn, ends, "nmap -sS");
}

#[test]
fn an_excepted_source_scans_and_is_never_blocked() {
    let rig = rig("df-scan-except");
    let (excepted, scanner) = (rig.src(4), rig.src(1));
    let _policy = rig.apply("scan.yaml", &policy(excepted));
    let before = rig.status();
    rig.tool("scan", excepted, &["--ports", SCANNED, "--timeout", "0.8"]);
    rig.route_from(excepted);
    let server = rig.server.to_string();
    nmap(&rig, &["-sT", &server]);
    let status = rig.status();
    assert!(
        block_of(&status, &excepted.to_string()).is_none(),
        "an excepted source was blocked: {:#}",
        status["blocks"]
    );
    assert_eq!(
        counter(&status, "scan_blocks"),
        counter(&before, "scan_blocks"),
        "no block for the excepted source"
    );
    assert!(
        rig.reaches(excepted, SSH),
        "the excepted source reaches ssh"
    );
    // The same scan from anyone else blocks.
    rig.tool("scan", scanner, &["--ports", SCANNED, "--timeout", "0.8"]);
    assert_blocked(&rig, scanner, excepted, "scan", "the control scan");
}

#[test]
fn manual_blocks_and_unblocks() {
    let rig = rig("df-block");
    let (target, other, net_a, net_b) = (rig.src(1), rig.src(2), rig.src(3), rig.src(4));
    // No scan guard: manual blocks work on any policy.
    let _policy = rig.apply("block.yaml", "default: drop\nrules:\n  - allow: ssh\n");
    assert!(rig.reaches(target, SSH), "ssh before any block");

    let t = target.to_string();
    rig.portfw_ok(&["block", &t, "--for", "5s"]);
    let ends = assert_blocked(&rig, target, other, "manual", "portfw block --for 5s");
    let shown = rig.status_text();
    assert!(
        shown.contains(&t),
        "portfw status does not show the block of {t}:\n{shown}"
    );
    let left = ends.saturating_duration_since(Instant::now());
    assert!(
        left > Duration::from_secs(2),
        "a fresh 5 s block has {left:?} left"
    );
    rig.portfw_ok(&["unblock", &t]);
    assert!(rig.reaches(target, SSH), "unblocked at once");
    assert!(
        block_of(&rig.status(), &t).is_none(),
        "portfw unblock removed the block"
    );

    // A timed block expires by itself.
    rig.portfw_ok(&["block", &t, "--for", "2s"]);
    assert!(rig.silent(target, SSH), "blocked for 2 s");
    thread::sleep(Duration::from_millis(2300));
    assert!(rig.reaches(target, SSH), "the 2 s block expired");

    // A block without --for stays until unblocked.
    rig.portfw_ok(&["block", &t]);
    let status = rig.status();
    let block = block_of(&status, &t).expect("the untimed block is listed");
    assert!(
        !seconds(&block["expires_in"]).is_some_and(|s| s < 60.0),
        "an untimed block does not expire soon: {block}"
    );
    assert!(rig.silent(target, SSH), "the untimed block holds");
    rig.portfw_ok(&["unblock", &t]);
    assert!(rig.reaches(target, SSH), "unblocked");

    // A prefix: both addresses of a /31 are blocked, their neighbour is not.
    assert_eq!(net_a.octets()[3], 12, "the rig's .12 and .13 share a /31");
    let prefix = format!("{net_a}/31");
    let in_prefix = [net_a, net_b];
    rig.portfw_ok(&["block", &prefix, "--for", "30s"]);
    assert!(
        block_of(&rig.status(), &prefix).is_some(),
        "the prefix block is listed: {:#}",
        rig.status()["blocks"]
    );
    for a in &in_prefix {
        assert!(rig.silent(*a, SSH), "{a} is inside the blocked {prefix}");
    }
    assert!(rig.reaches(other, SSH), "{other} is outside {prefix}");
    rig.portfw_ok(&["unblock", &prefix]);
    for a in &in_prefix {
        assert!(rig.reaches(*a, SSH), "{a} after unblocking {prefix}");
    }
    assert!(
        list(&rig.status(), "blocks").is_empty(),
        "nothing left blocked"
    );
}

/// Runs a bounded nmap scan of [`SCANNED`] from the client (`-e` its veth, no host
/// discovery, no DNS, one retry, at most 20 s) and returns its grepable output.
fn nmap(rig: &Rig, args: &[&str]) -> String {
    let mut full = vec![
        "timeout",
        "30",
        "nmap",
        "-n",
        "-Pn",
        "-e",
        rig.lab.client_iface(),
        "-p",
        SCANNED,
        "--max-retries",
        "1",
        "--host-timeout",
        "20s",
        "-T4",
        "-oG",
        "-",
    ];
    full.extend_from_slice(args);
    let out = rig
        .lab
        .client(&full)
        .stdin(Stdio::null())
        .output()
        .expect("run nmap");
    assert!(
        out.status.success(),
        "nmap {}: {}",
        args.join(" "),
        crate::text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `block` is of the /64 of `addr` (listed as the /64, or as an address in it).
fn blocks_64_of(block: &serde_json::Value, addr: Ipv6Addr) -> bool {
    let Some(listed) = block["address"].as_str() else {
        return false;
    };
    let bare = listed.split('/').next().unwrap_or(listed);
    bare.parse::<Ipv6Addr>()
        .is_ok_and(|b| b.segments()[..4] == addr.segments()[..4])
}

#[test]
fn ipv6_scanners_are_blocked_by_their_64() {
    let rig = rig("df-scan-v6");
    let [scanner, neighbour, other] = rig.v6_sources();
    let _policy = rig.apply("scan.yaml", &policy(rig.src(4)));
    assert!(rig.reaches(neighbour, SSH), "ssh over IPv6 before the scan");
    rig.tool("scan", scanner, &["--ports", SCANNED, "--timeout", "0.8"]);
    let status = rig.status();
    let blocks = list(&status, "blocks");
    assert!(
        blocks.iter().any(|b| blocks_64_of(b, scanner)),
        "no block for the /64 of {scanner}: {blocks:#?}"
    );
    let [a, b, c] = parallel(vec![
        Box::new(|| rig.silent(scanner, SSH)),
        Box::new(|| rig.silent(neighbour, SSH)),
        Box::new(|| rig.reaches(other, SSH)),
    ])[..] else {
        unreachable!()
    };
    assert!(a, "the IPv6 scanner still reaches ssh");
    assert!(b, "{neighbour}, in the scanner's /64, still reaches ssh");
    assert!(c, "{other}, in another /64, cannot reach ssh");

    // A manual block of an IPv6 address, and its unblock.
    let o = other.to_string();
    rig.portfw_ok(&["block", &o, "--for", "30s"]);
    assert!(rig.silent(other, SSH), "{other} after portfw block");
    rig.portfw_ok(&["unblock", &o]);
    assert!(rig.reaches(other, SSH), "{other} after portfw unblock");
}

#[test]
fn replies_allowed_ports_and_the_gateway_never_count_for_the_scan_guard() {
    let mut rig = rig("df-scan-spare");
    let (replier, allowed_scanner, control) = (rig.src(1), rig.src(2), rig.src(3));
    let gateway = rig.src(0);
    // The client's own address is the server's default gateway: a scan "from" it must not
    // cut the host off.
    rig.lab
        .run(
            crate::Side::Server,
            ["ip", "route", "add", "default", "via", &gateway.to_string()],
        )
        .expect("a default route");
    rig.lab
        .start_responder_on(
            crate::Side::Client,
            &[5000, 5001, 5002, 5003, 5004, 5005],
            &[],
        )
        .expect("client responder");
    let _policy = rig.apply(
        "scan.yaml",
        "default: drop\nscan:\n  ports: 4\n  within: 10s\n  block: 1m\n\
         rules:\n  - allow: ssh\n  - allow: 8000-8019/tcp\n",
    );
    let status = rig.status();
    assert!(
        list(&status, "host_except")
            .iter()
            .any(|a| a.as_str().map(crate::host) == Some(&gateway.to_string())),
        "the gateway is not among the addresses the scan guard spares: {:#}",
        status["host_except"]
    );

    // The host's own connections to six ports of one peer, and to six closed ones: their
    // replies (and resets) pass through the flow table and count for nothing.
    for port in 5000..5006u16 {
        let seen = rig
            .lab
            .probe(
                crate::Side::Server,
                portfw_lab::Proto::Tcp,
                replier.into(),
                port,
                crate::ANSWER,
            )
            .expect("probe");
        assert!(
            seen.is_open(),
            "the host's connection to {replier}:{port}: {seen:?}"
        );
    }
    for port in 5100..5106u16 {
        rig.lab
            .probe(
                crate::Side::Server,
                portfw_lab::Proto::Tcp,
                replier.into(),
                port,
                Duration::from_secs(2),
            )
            .expect("probe");
    }
    // A scan of allowed ports only (nothing listens: resets come back) counts for nothing.
    rig.tool(
        "scan",
        allowed_scanner,
        &["--ports", "8000-8019", "--timeout", "0.8"],
    );
    // Nor does the gateway's scan of dropped ports.
    rig.tool("scan", gateway, &["--ports", SCANNED, "--timeout", "0.8"]);
    let status = rig.status();
    assert!(
        list(&status, "blocks").is_empty(),
        "replies, allowed ports or the gateway's scan blocked someone: {:#}",
        status["blocks"]
    );
    let [a, b, c] = parallel(vec![
        Box::new(|| rig.reaches(replier, SSH)),
        Box::new(|| rig.reaches(allowed_scanner, SSH)),
        Box::new(|| rig.reaches(gateway, SSH)),
    ])[..] else {
        unreachable!()
    };
    assert!(
        a && b && c,
        "[replier, allowed-port scanner, gateway] reach ssh: {a} {b} {c}"
    );
    // The same scan from anyone else blocks.
    rig.tool("scan", control, &["--ports", SCANNED, "--timeout", "0.8"]);
    assert!(
        block_of(&rig.status(), &control.to_string()).is_some(),
        "the control scan did not block"
    );
}

#[test]
fn a_scan_slower_than_the_window_is_not_blocked() {
    let rig = rig("df-scan-slow");
    let (slow, fast) = (rig.src(1), rig.src(2));
    let _policy = rig.apply(
        "scan.yaml",
        "default: drop\nscan:\n  ports: 4\n  within: 2s\n  block: 1m\nrules:\n  - allow: ssh\n",
    );
    // Six dropped ports a second apart: never four within 2 s.
    for port in 4000..4006u16 {
        rig.tool("scan", slow, &["--ports", &port.to_string(), "--udp"]);
        thread::sleep(Duration::from_millis(1000));
    }
    assert!(
        block_of(&rig.status(), &slow.to_string()).is_none(),
        "a scan of one port a second blocked its source under `ports: 4, within: 2s`"
    );
    assert!(rig.reaches(slow, SSH), "the slow scanner reaches ssh");
    // The same ports at once block.
    rig.tool("scan", fast, &["--ports", "4000-4005", "--udp"]);
    assert!(
        block_of(&rig.status(), &fast.to_string()).is_some(),
        "four ports at once did not block"
    );
}
