//! Crafted frames on a real attached interface: `xtask/lab/craft.py` sends QinQ, IPv6 with
//! extension headers, IPv4 with options, fragment trains (tiny first fragments and ports split
//! across fragments included) and truncated frames from the client namespace over a packet
//! socket, a capture on the server interface records what got past XDP, and each frame must
//! have met the verdict the README documents. Needs root; the lab is removed on drop.
mod common;

use std::{collections::HashSet, fs, path::PathBuf, time::Duration};

use common::{
    builder::{hex, unhex},
    e2e::{PolicyFile, apply, lab::Lab, portfw, root_lab, text},
    reference::{self, Class},
};
use portfw::policy::{self, Action};

/// Fragments are allowed and non-IP frames too (their defaults); other IP protocols follow
/// the default, drop.
const POLICY: &str = "\
default: drop
rules:
  - allow: [22/tcp, 53/udp]
";

const PASS: Action = Action::Allow;
const DROP: Action = Action::Drop;

/// Each case of craft.py and what its frames, in the order sent, must meet at XDP.
const EXPECTED: &[(&str, &[Action])] = &[
    ("qinq-88a8-tcp-22", &[PASS]),
    ("qinq-88a8-tcp-8000", &[DROP]),
    ("qinq-9100-udp-53", &[PASS]),
    ("qinq-v6-udp-53", &[PASS]),
    ("three-tags", &[DROP]),
    ("v6-ext-tcp-22", &[PASS]),
    ("v6-ext-tcp-8000", &[DROP]),
    ("v6-ext-nine", &[DROP]),
    ("v4-options-tcp-22", &[PASS]),
    ("v4-options-tcp-8000", &[DROP]),
    // The first fragment is judged by its ports; the later ones by `fragments:` (allow).
    ("v4-frag-udp-53", &[PASS, PASS, PASS]),
    ("v4-frag-udp-5353", &[DROP, PASS, PASS]),
    // Tiny first fragment (malformed), then offset 1 of TCP (RFC 1858), then a plain one.
    ("v4-tiny-tcp-22", &[DROP, DROP, PASS]),
    ("v4-split-ports-udp-53", &[DROP, PASS]),
    ("v6-frag-udp-53", &[PASS, PASS, PASS]),
    ("v6-frag-udp-5353", &[DROP, PASS, PASS]),
    // RFC 1858's overlap rule is IPv4's: an IPv6 fragment at offset 1 is just a fragment.
    ("v6-tiny-tcp-22", &[DROP, PASS]),
    ("v6-split-ports-udp-53", &[DROP, PASS]),
    ("truncated-v4-tcp", &[DROP]),
    ("truncated-v6-ext", &[DROP]),
    ("truncated-vlan", &[DROP]),
    ("icmp-echo", &[PASS]),
    ("lldp", &[PASS]),
    ("gre", &[DROP]),
    ("tcp-source-port-0", &[DROP]),
];

/// Temporary files of this test, removed on drop.
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn file(&mut self, name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("portfw-crafted-{}-{name}", std::process::id()));
        self.0.push(path.clone());
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

fn read_json(path: &PathBuf) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `counters` of `portfw status --json` in the server namespace, by name.
fn status_counter(lab: &Lab, name: &str) -> u64 {
    let out = portfw(lab, &["status", "--json"]);
    assert!(out.status.success(), "portfw status: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    json["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {json}"))
}

/// Starts the capture, sends every crafted case and waits for the capture to end; returns
/// the manifest of what was sent and the hex of every frame that arrived.
fn exchange(
    lab: &mut Lab,
    scratch: &mut Scratch,
    run: &str,
) -> (serde_json::Value, HashSet<String>) {
    let capture = scratch.file(&format!("{run}-capture.json"));
    let manifest = scratch.file(&format!("{run}-manifest.json"));
    let sniffer = lab
        .start_craft_sniffer(&capture, Duration::from_secs(15))
        .expect("sniffer");
    let sent = lab.send_crafted(&manifest).expect("send");
    println!("crafted, {run}: {}", sent.trim());
    let status = lab.wait(sniffer, Duration::from_secs(30)).expect("sniffer");
    assert!(status.success(), "craft sniffer: {status}");
    let arrived = read_json(&capture)
        .as_array()
        .expect("capture is a list")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    (read_json(&manifest), arrived)
}

#[test]
fn crafted_frames_meet_their_documented_verdicts_on_a_real_interface() {
    let mut lab = root_lab("crafted");
    let mut scratch = Scratch(Vec::new());
    // Without the filter every crafted frame must arrive: then a frame missing later is
    // the filter's doing, not the veth's or the capture's.
    let (_, unfiltered) = exchange(&mut lab, &mut scratch, "unfiltered");
    apply(&lab, &PolicyFile::new("crafted.yaml", POLICY), &[]);
    let policy = policy::parse(POLICY, "crafted.yaml")
        .expect("policy parses")
        .policy;
    let (manifest, arrived) = exchange(&mut lab, &mut scratch, "filtered");
    let cases = manifest["cases"].as_array().expect("manifest cases");
    let mut failures = Vec::new();
    let (mut frames, mut passed, mut malformed) = (0, 0, 0u64);
    let mut named = HashSet::new();
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let description = case["description"].as_str().unwrap_or(name);
        named.insert(name.to_owned());
        let Some((_, expected)) = EXPECTED.iter().find(|(n, _)| *n == name) else {
            failures.push(format!(
                "{name}: craft.py sends a case this test has no verdicts for"
            ));
            continue;
        };
        let sent: Vec<&str> = case["frames"]
            .as_array()
            .expect("case frames")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        if sent.len() != expected.len() {
            failures.push(format!(
                "{name}: {} frames sent, {} verdicts expected",
                sent.len(),
                expected.len()
            ));
            continue;
        }
        for (i, (frame_hex, want)) in sent.iter().zip(expected.iter()).enumerate() {
            frames += 1;
            let bytes = unhex(frame_hex);
            let what = format!("{name} frame {} ({description})", i + 1);
            // The table and the reference classifier must agree on every frame.
            let model = reference::classify(&bytes, &policy);
            if model.action != *want {
                failures.push(format!(
                    "{what}: the reference says {:?} ({:?}), the table {want:?}\n{}",
                    model.action,
                    model.class,
                    hex(&bytes)
                ));
            }
            if matches!(model.class, Class::Malformed(_)) {
                malformed += 1;
            }
            if !unfiltered.contains(*frame_hex) {
                failures.push(format!("{what}: did not arrive even without the filter"));
            }
            let got_through = arrived.contains(*frame_hex);
            if got_through {
                passed += 1;
            }
            if got_through != (*want == PASS) {
                failures.push(format!(
                    "{what}: expected {want:?} but it {} the server interface\n{}",
                    if got_through {
                        "reached"
                    } else {
                        "never reached"
                    },
                    hex(&bytes)
                ));
            }
        }
    }
    for (name, _) in EXPECTED {
        if !named.contains(*name) {
            failures.push(format!(
                "{name}: expected by this test but craft.py did not send it"
            ));
        }
    }
    println!("crafted: {frames} frames, {passed} got past XDP, {malformed} malformed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The lab's own traffic (ARP, neighbour discovery, replies) is never malformed, so the
    // kernel's count is exactly the crafted malformed frames.
    assert_eq!(
        status_counter(&lab, "malformed"),
        malformed,
        "the malformed counter counts exactly the malformed crafted frames"
    );
    assert!(passed > 0 && malformed > 0, "a run must see both verdicts");
    lab.close().expect("lab teardown");
}
