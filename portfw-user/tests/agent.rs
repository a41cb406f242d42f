//! `portfw agent`, end to end in a lab namespace: it applies its policy file, re-applies it
//! when the file is edited in place or renamed over, refuses a broken edit (with `file:line:col`
//! in its log) while the old policy keeps filtering real traffic, serves Prometheus metrics
//! that move under traffic, re-attaches to an interface that was deleted and re-created, and
//! leaves the filter in force when stopped with SIGTERM. A scrape with 16,384 rules answers
//! within 50 ms. Needs root.
mod common;

use std::{collections::HashMap, fs, net::IpAddr, path::PathBuf, process::Stdio, time::Duration};

use common::e2e::{
    Logged, PORTFW, PolicyFile, apply,
    lab::{Lab, Side},
    nc_connects, portfw, root_lab, text, wait_for,
};

const METRICS: &str = "127.0.0.1:9713";

fn only(iface: &str, port: u16) -> String {
    format!(
        "default: drop\nlog: drops\ninterfaces: [{iface}]\nrules:\n  - name: web\n    allow: {port}/tcp\n  - drop: 22/tcp\n"
    )
}

fn reaches(lab: &Lab, port: u16) -> bool {
    nc_connects(lab, IpAddr::V4(lab.server_v4()), port)
}

/// Starts `portfw agent` in the server namespace with `args`, its log collected.
fn start_agent(lab: &mut Lab, args: &[&str]) -> Logged {
    let mut full = vec![PORTFW, "agent", "--metrics-listen", METRICS];
    full.extend_from_slice(args);
    let cmd = lab.server(&full);
    Logged::spawn(lab, cmd, "the agent")
}

const APPLIED: &str = "level=info msg=\"applied ";

/// The response of `curl` inside the server namespace: (status code, body, seconds).
fn http_get(lab: &Lab, path: &str) -> (u16, String, f64) {
    let url = format!("http://{METRICS}{path}");
    let out = lab
        .server([
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{time_total} %{content_type}",
            &url,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url}: {}", text(&out));
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = all.rsplit_once('\n').expect("curl trailer");
    let mut fields = trailer.splitn(3, ' ');
    let code = fields
        .next()
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let seconds = fields.next().and_then(|s| s.parse().ok()).expect("time");
    if path == "/metrics" {
        assert_eq!(
            fields.next(),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "content type"
        );
    }
    (code, body.to_string(), seconds)
}

/// Every sample of a Prometheus text exposition, by `name{labels}`.
fn parse_metrics(body: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    out
}

fn scrape(lab: &Lab) -> HashMap<String, f64> {
    let (code, body, _) = http_get(lab, "/metrics");
    assert_eq!(code, 200, "{body}");
    parse_metrics(&body)
}

fn sample(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    *metrics
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {metrics:#?}"))
}

/// Writes `text` over the file in place (same inode), as most editors do.
fn write_in_place(path: &PathBuf, text: &str) {
    fs::write(path, text).expect("write policy");
}

/// Writes `text` to a new file and renames it over `path`, as vim and `sed -i` do.
fn write_and_rename(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    fs::write(&tmp, text).expect("write new policy");
    fs::rename(&tmp, path).expect("rename over the policy");
}

fn sha256_of(path: &PathBuf) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Deletes the lab's veth pair and makes it again under the same names and addresses: a new
/// interface (new index) that only the agent can put the filter back on.
fn recreate_veth(lab: &Lab) {
    lab.run(Side::Server, ["ip", "link", "del", lab.server_iface()])
        .expect("delete the veth");
    let status = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            lab.server_iface(),
            "address",
            lab.mac(Side::Server),
            "netns",
            lab.server_ns(),
            "type",
            "veth",
            "peer",
            "name",
            lab.client_iface(),
            "address",
            lab.mac(Side::Client),
            "netns",
            lab.client_ns(),
        ])
        .status()
        .expect("ip link add");
    assert!(status.success(), "re-creating the veth");
    for (side, v4, v6) in [
        (Side::Server, lab.server_v4(), lab.server_v6()),
        (Side::Client, lab.client_v4(), lab.client_v6()),
    ] {
        let iface = lab.iface(side);
        lab.run(
            side,
            ["ip", "addr", "add", &format!("{v4}/24"), "dev", iface],
        )
        .expect("v4 address");
        lab.run(
            side,
            [
                "ip",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                iface,
                "nodad",
            ],
        )
        .expect("v6 address");
        lab.run(side, ["ip", "link", "set", iface, "up"])
            .expect("link up");
    }
}

/// The two tests run one after the other: the scrape test times scrapes, which the other's
/// applies and traffic on this 2-CPU machine would slow, and which must answer within 50 ms.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn the_agent_keeps_its_policy_file_in_force() {
    let _alone = one_at_a_time();
    let mut lab = root_lab("ag-keep");
    lab.start_responder(&[22, 80, 8080], &[])
        .expect("responder");
    let iface = lab.server_iface().to_string();
    let file = PolicyFile::new("policy.yaml", &only(&iface, 80));
    let path = PathBuf::from(file.path());
    let agent = start_agent(&mut lab, &["--policy", &file.path()]);
    agent.wait_lines(APPLIED, 1, Duration::from_secs(30));
    assert!(
        reaches(&lab, 80) && !reaches(&lab, 8080),
        "the first policy"
    );
    let first = agent.lines().join("\n");
    assert!(
        first.contains(&format!("msg=\"applied {}\" generation=", file.path())),
        "{first}"
    );
    assert!(
        first.contains(&format!("sha256={}", sha256_of(&path))),
        "{first}"
    );
    assert!(!first.contains('\u{1b}'), "no colours in the log");

    // Edited in place.
    write_in_place(&path, &only(&iface, 8080));
    agent.wait_lines(APPLIED, 2, Duration::from_secs(10));
    assert!(
        reaches(&lab, 8080) && !reaches(&lab, 80),
        "after the edit in place"
    );

    // Replaced by a rename.
    write_and_rename(&path, &only(&iface, 80));
    agent.wait_lines(APPLIED, 3, Duration::from_secs(10));
    assert!(
        reaches(&lab, 80) && !reaches(&lab, 8080),
        "after the rename"
    );
    let (code, body, _) = http_get(&lab, "/ready");
    assert_eq!(code, 200, "ready: {body}");

    // Broken: refused with the usual diagnostics; the running policy stays.
    write_in_place(
        &path,
        &format!("default: drop\ninterfaces: [{iface}]\nrules:\n  - allow: 70000/tcp\n"),
    );
    agent.wait_lines(
        "the running policy stays in force",
        1,
        Duration::from_secs(10),
    );
    let log = agent.lines().join("\n");
    assert!(
        log.contains(&format!(
            "level=error msg=\"{}:4:12: port 70000 is out of range 0-65535\"",
            file.path()
        )),
        "{log}"
    );
    assert_eq!(agent.count(APPLIED), 3, "nothing applied: {log}");
    assert!(
        reaches(&lab, 80) && !reaches(&lab, 8080),
        "the old policy still filters"
    );
    let metrics = scrape(&lab);
    assert_eq!(sample(&metrics, "portfw_agent_policy_in_sync"), 0.0);
    assert_eq!(sample(&metrics, "portfw_agent_policy_refused_total"), 1.0);
    let (code, body, _) = http_get(&lab, "/ready");
    assert_eq!(code, 503, "not ready with a refused edit: {body}");

    // Fixed.
    write_and_rename(&path, &only(&iface, 8080));
    agent.wait_lines(APPLIED, 4, Duration::from_secs(10));
    assert!(reaches(&lab, 8080) && !reaches(&lab, 80), "after the fix");

    // Metrics under traffic.
    let before = scrape(&lab);
    assert_eq!(sample(&before, "portfw_agent_policy_in_sync"), 1.0);
    assert_eq!(sample(&before, "portfw_filter_loaded"), 1.0);
    assert_eq!(sample(&before, "portfw_policy_enforced"), 1.0);
    assert_eq!(
        sample(
            &before,
            &format!(
                "portfw_policy_info{{file=\"{}\",sha256=\"{}\"}}",
                file.path(),
                sha256_of(&path)
            )
        ),
        1.0
    );
    assert!(
        before
            .keys()
            .any(|k| k.starts_with(&format!("portfw_interfaces{{iface=\"{iface}\",mode=\""))),
        "{before:#?}"
    );
    for _ in 0..3 {
        assert!(reaches(&lab, 8080));
        assert!(!reaches(&lab, 9000));
        assert!(!reaches(&lab, 22));
    }
    let after = scrape(&lab);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(moved("portfw_packets_total{verdict=\"allow\",reason=\"rule\"}") >= 3.0);
    assert!(moved("portfw_packets_total{verdict=\"drop\",reason=\"default\"}") >= 3.0);
    assert!(moved("portfw_packets_total{verdict=\"drop\",reason=\"rule\"}") >= 3.0);
    assert!(moved("portfw_rule_packets_total{rule=\"web\"}") >= 3.0);
    assert!(moved("portfw_rule_packets_total{rule=\"#2\"}") >= 3.0);
    assert_eq!(moved("portfw_events_lost_total"), 0.0);
    for series in [
        "portfw_policy_generation",
        "portfw_flows",
        "portfw_flows_max",
        "portfw_flows_evicted_total",
        "portfw_trial_pending",
    ] {
        sample(&after, series);
    }
    assert!(sample(&after, "portfw_flows_max") >= 262_144.0);
    // No address or port ever becomes a label.
    for series in after.keys() {
        let labels = series.split_once('{').map_or("", |(_, l)| l);
        for forbidden in [lab.client_v4().to_string(), "8080".to_string()] {
            assert!(
                !labels.contains(&forbidden),
                "{forbidden} in a label: {series}"
            );
        }
    }

    // The interface is deleted and re-created: the agent puts the filter back on it.
    let applied = agent.count(APPLIED);
    recreate_veth(&lab);
    agent.wait_lines(
        "interface appeared or was re-created",
        1,
        Duration::from_secs(15),
    );
    agent.wait_lines(APPLIED, applied + 1, Duration::from_secs(15));
    wait_for(Duration::from_secs(20), "8080 through the new veth", || {
        reaches(&lab, 8080)
    });
    assert!(!reaches(&lab, 80), "the new interface is filtered");
    let status = portfw(&lab, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(json["attachments"][0]["live"], true, "{json}");

    // SIGTERM: the agent exits cleanly and the filter stays.
    // SAFETY: a signal to the agent this test started.
    assert_eq!(
        unsafe { libc::kill(agent.pid as libc::pid_t, libc::SIGTERM) },
        0
    );
    let exit = lab
        .wait(agent.id, Duration::from_secs(10))
        .expect("agent exit");
    assert!(exit.success(), "agent exit: {exit}");
    agent.wait_lines(
        "stopping on SIGTERM; the filter stays in force",
        1,
        Duration::from_secs(5),
    );
    let status = portfw(&lab, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    assert!(
        json["policy"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("policy.yaml")),
        "{json}"
    );
    assert!(
        reaches(&lab, 8080) && !reaches(&lab, 80),
        "filtered after the agent left"
    );
}

#[test]
fn a_scrape_of_sixteen_thousand_rules_answers_within_50_ms() {
    let _alone = one_at_a_time();
    let mut lab = root_lab("ag-scale");
    let mut yaml = String::from("default: drop\nlog: none\nrules:\n");
    for i in 0..16_384u32 {
        // Every rule its own port, half of them named.
        let port = 1024 + i;
        if i % 2 == 0 {
            yaml.push_str(&format!("  - name: r{i}\n    allow: {port}/tcp\n"));
        } else {
            yaml.push_str(&format!("  - allow: {port}/udp\n"));
        }
    }
    let policy = PolicyFile::new("big.yaml", &yaml);
    apply(&lab, &policy, &[]);
    // Without --policy, the agent serves the metrics of the filter applied by hand.
    let agent = start_agent(&mut lab, &[]);
    agent.wait_lines("serving metrics", 1, Duration::from_secs(20));
    wait_for(Duration::from_secs(20), "the metrics endpoint", || {
        lab.server([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            &format!("http://{METRICS}/healthz"),
        ])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    });
    // The first scrape parses the state file, which later ones keep while it is unchanged:
    // the median of the next five is what a scraper sees.
    http_get(&lab, "/metrics");
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..5 {
        let (code, text, seconds) = http_get(&lab, "/metrics");
        assert_eq!(code, 200);
        times.push(seconds);
        body = text;
    }
    times.sort_by(f64::total_cmp);
    let median = times[2];
    eprintln!(
        "scrapes of 16,384 rules: median {:.1} ms (of {:?})",
        median * 1e3,
        times
    );
    let metrics = parse_metrics(&body);
    let rules = metrics
        .keys()
        .filter(|k| k.starts_with("portfw_rule_packets_total{"))
        .count();
    assert_eq!(rules, 16_384);
    sample(&metrics, "portfw_rule_packets_total{rule=\"r0\"}");
    sample(&metrics, "portfw_rule_packets_total{rule=\"#2\"}");
    assert!(
        median < 0.050,
        "a scrape with 16,384 rules took {:.1} ms",
        median * 1e3
    );
    let (code, body, _) = http_get(&lab, "/ready");
    assert_eq!(code, 200, "{body}");
}
