//! Atomic policy replacement, end to end: re-applying under load never misjudges traffic
//! that both policies agree on, and an apply killed at any moment leaves one whole policy in
//! force. Needs root.
mod common;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use common::e2e::{
    PORTFW, PolicyFile, apply,
    lab::{Lab, PYTHON, Side, script},
    portfw, root_lab, text,
};

/// Both policies allow KEEP and drop SHUT; they disagree on FLIP and use different source
/// rules, so every apply really changes the port table and the source tries.
const KEEP: u16 = 5001;
const SHUT: u16 = 5002;
const FLIP: u16 = 5003;

fn policy_a(client: IpAddr) -> String {
    format!(
        "default: drop\nlog: none\nrules:\n  - allow: {KEEP}/udp\n    from: [{client}, 198.18.0.0/15]\n  - allow: {FLIP}/udp\n  - drop: {SHUT}/udp\n  - allow: 22/tcp\n"
    )
}

fn policy_b(client: IpAddr) -> String {
    format!(
        "default: drop\nlog: none\nrules:\n  - drop: {SHUT}/udp\n  - allow: {KEEP}/udp\n    from: {client}\n  - drop: {FLIP}/udp\n  - allow: 80/tcp\n"
    )
}

/// nftables counters in the server namespace, after XDP: what really got through.
fn count_after_xdp(lab: &Lab) {
    let mut script_text = String::from(
        "add table inet pfwtest\nadd chain inet pfwtest input { type filter hook input priority 0; }\n",
    );
    for port in [KEEP, SHUT] {
        script_text.push_str(&format!(
            "add rule inet pfwtest input udp dport {port} counter comment \"p{port}\"\n"
        ));
    }
    let file = PolicyFile::new("counters.nft", &script_text);
    lab.run(Side::Server, ["nft", "-f", &file.path()])
        .expect("nft counters");
}

fn counters(lab: &Lab) -> HashMap<u16, u64> {
    let json = lab
        .run(
            Side::Server,
            ["nft", "-j", "list", "table", "inet", "pfwtest"],
        )
        .expect("nft list");
    let value: serde_json::Value = serde_json::from_str(&json).expect("nft json");
    let mut out = HashMap::new();
    for item in value["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(comment) = rule["comment"].as_str() else {
            continue;
        };
        let port: u16 = comment
            .trim_start_matches('p')
            .parse()
            .expect("port comment");
        let packets = rule["expr"]
            .as_array()
            .and_then(|e| e.iter().find_map(|x| x["counter"]["packets"].as_u64()))
            .expect("counter");
        out.insert(port, packets);
    }
    out
}

/// The two tests here each load the machine; run alone, neither starves the other's traffic.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The filter's verdict counters, from `portfw status --json`.
fn verdict_counters(lab: &Lab) -> HashMap<String, u64> {
    let out = portfw(lab, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair[0].as_str()?.to_string(), pair[1].as_u64()?)))
        .collect()
}

#[test]
fn reapplying_a_thousand_times_under_load_misjudges_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = root_lab("rp-load");
    let client: IpAddr = lab.client_v4().into();
    let a = PolicyFile::new("a.yaml", &policy_a(client));
    let b = PolicyFile::new("b.yaml", &policy_b(client));
    apply(&lab, &a, &[]);
    count_after_xdp(&lab);
    // Before the sender starts, so every datagram it sends is in the deltas.
    let before = verdict_counters(&lab);

    let blast = lab.client([
        PYTHON.to_string(),
        script("udp_blast.py").display().to_string(),
        "--dst".into(),
        lab.server_v4().to_string(),
        "--ports".into(),
        format!("{KEEP},{SHUT}"),
        "--rate".into(),
        "4000".into(),
        "--seconds".into(),
        "600".into(),
    ]);
    let mut blast = blast;
    blast.stdin(Stdio::null()).stdout(Stdio::piped());
    let id = lab.spawn(blast).expect("blaster");
    let stdout = lab
        .child_mut(id)
        .and_then(|c| c.stdout.take())
        .expect("blaster stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));

    let started = Instant::now();
    let applies = 1000;
    for i in 0..applies {
        let policy = if i % 2 == 0 { &b } else { &a };
        let out = portfw(
            &lab,
            &["apply", &policy.path(), "--iface", lab.server_iface()],
        );
        assert!(out.status.success(), "apply {i}: {}", text(&out));
    }
    let elapsed = started.elapsed();
    // Let the last packets land, then stop the sender and read what it sent.
    thread::sleep(Duration::from_millis(200));
    lab.interrupt(id, Duration::from_secs(10)).ok();
    let sent: HashMap<String, u64> = lines
        .map_while(Result::ok)
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_default();
    thread::sleep(Duration::from_millis(200));
    let seen = counters(&lab);
    let after = verdict_counters(&lab);
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    println!(
        "{applies} applies in {elapsed:?} ({:.1} ms each); sent {sent:?}, got past XDP {seen:?}; \
         XDP allowed by rule {}, dropped by rule {}, by default {}",
        elapsed.as_secs_f64() * 1e3 / f64::from(applies),
        delta("allow_rule"),
        delta("drop_rule"),
        delta("drop_default"),
    );
    let keep_sent = sent.get(&KEEP.to_string()).copied().unwrap_or(0);
    assert!(keep_sent > 1000, "the sender barely ran: {sent:?}");
    // Nothing both policies drop got past XDP.
    assert_eq!(
        seen.get(&SHUT),
        Some(&0),
        "traffic both policies drop got through"
    );
    // Nothing both policies allow was dropped: in either policy the only rule naming KEEP
    // allows it and the only rule naming SHUT drops it, so a packet judged by a mix of the
    // two policies, or by neither, would fall to the default and be counted there.
    assert_eq!(
        delta("drop_default"),
        0,
        "packets fell to the default during re-applies"
    );
    assert_eq!(delta("allow_default"), 0);
    // The kernel's verdicts account for every KEEP packet the stack then saw, and (bar a
    // datagram sent as the sender was interrupted, before it counted it) hardly any went
    // missing on the way.
    let keep_seen = seen.get(&KEEP).copied().unwrap_or(0);
    assert!(
        keep_seen <= delta("allow_rule") && keep_seen * 1000 >= keep_sent * 999,
        "allowed {keep_seen} of {keep_sent} KEEP datagrams (XDP allowed {})",
        delta("allow_rule")
    );
}

/// A policy whose apply takes a while (a big address set), to be killed part-way.
fn slow_policy(port: u16) -> String {
    let mut y = String::from("default: drop\nlog: none\nsets:\n  big:\n");
    for i in 0..60_000u32 {
        y.push_str(&format!(
            "    - 10.{}.{}.0/24\n",
            100 + i / 65536,
            (i / 256) % 256
        ));
        let _ = i;
    }
    y.push_str(&format!(
        "rules:\n  - drop: any\n    from: $big\n  - allow: {port}/tcp\n  - allow: 22/tcp\n"
    ));
    y
}

#[test]
fn an_apply_killed_at_any_moment_leaves_one_whole_policy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = root_lab("rp-kill");
    lab.start_responder(&[22, 81, 82], &[]).expect("responder");
    let old = PolicyFile::new("old.yaml", &slow_policy(81));
    let new = PolicyFile::new("new.yaml", &slow_policy(82));
    let status_sha = |lab: &Lab| -> Option<String> {
        let out = portfw(lab, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["policy"]["file"].as_str().map(str::to_owned)
    };
    let server: IpAddr = lab.server_v4().into();
    apply(&lab, &old, &[]);
    let mut outcomes = HashMap::new();
    for delay_ms in [0u64, 20, 50, 100, 150, 200, 300, 400, 600, 900] {
        let mut cmd = lab.server([PORTFW, "apply", &new.path(), "--iface", lab.server_iface()]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let id = lab.spawn(cmd).expect("apply");
        thread::sleep(Duration::from_millis(delay_ms));
        let ended = lab.kill(id);
        // Whichever policy is on record must be the one the kernel applies, whole.
        let file = status_sha(&lab).expect("a policy is always in force");
        let reach81 = common::e2e::nc_connects(&lab, server, 81);
        let reach82 = common::e2e::nc_connects(&lab, server, 82);
        let is_new = file.ends_with("new.yaml");
        assert_eq!(
            (reach81, reach82),
            (!is_new, is_new),
            "killed after {delay_ms} ms ({ended}): status says {file}, but 81 reachable={reach81}, 82 reachable={reach82}"
        );
        assert!(
            common::e2e::nc_connects(&lab, server, 22),
            "22 is allowed by both"
        );
        *outcomes.entry(is_new).or_insert(0) += 1;
        // Back to the old policy for the next round.
        apply(&lab, &old, &[]);
    }
    println!("kill outcomes (new policy in force?): {outcomes:?}");
    // A kill of a fresh load (nothing loaded yet) leaves nothing half-attached either.
    let out = portfw(&lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    for delay_ms in [5u64, 50, 150] {
        let mut cmd = lab.server([PORTFW, "apply", &new.path(), "--iface", lab.server_iface()]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let id = lab.spawn(cmd).expect("apply");
        thread::sleep(Duration::from_millis(delay_ms));
        lab.kill(id);
        // The next apply cleans up whatever the killed one left, and works.
        apply(&lab, &old, &[]);
        assert!(common::e2e::nc_connects(&lab, server, 81));
        assert!(!common::e2e::nc_connects(&lab, server, 82));
        let leftovers: Vec<String> = std::fs::read_dir("/sys/fs/bpf/portfw")
            .expect("pin root")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("tmp-{}-", lab.server_netns_inode())))
            .collect();
        assert!(
            leftovers.is_empty(),
            "abandoned pins left behind: {leftovers:?}"
        );
        let out = portfw(&lab, &["detach"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}
