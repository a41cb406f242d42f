//! State across a re-apply: blocks (scan and manual), open doors and limit buckets survive a
//! re-apply that keeps what made them; a policy without `scan:` lifts the scan blocks but not
//! the manual ones, and one without the door closes it; `detach` removes them all. And in
//! audit mode a block only counts: the blocked source still connects.

use std::time::Duration;

use crate::{Rig, block_of, counter, door_of, list, parallel};

const SSH: u16 = 22;
const OPENS: u16 = 2222;
const LIMITED: u16 = 8022;

const RULES: &str = "\
rules:
  - allow: ssh
  - allow: 8022/tcp
    limit: 5/1m
";

const SCAN: &str = "scan:\n  ports: 8\n  within: 5s\n  block: 1m\n";

const DOOR: &str = "\
knock:
  - name: door
    sequence: [7001/udp, 7002/tcp, 7003/udp]
    within: 5s
    opens: 2222/tcp
    for: 1m
";

fn policy(scan: bool, door: bool, extra_rule: bool) -> String {
    let mut yaml = String::from("default: drop\nlog: drops\n");
    if scan {
        yaml.push_str(SCAN);
    }
    yaml.push_str(RULES);
    if extra_rule {
        yaml.push_str("  - allow: 8080/tcp\n");
    }
    if door {
        yaml.push_str(DOOR);
    }
    yaml
}

#[test]
fn blocks_doors_and_limits_survive_a_reapply_that_keeps_them() {
    let mut rig = Rig::new("df-carry", 5);
    rig.lab
        .start_responder(&[SSH, LIMITED], &[])
        .expect("responder");
    rig.start_echo(OPENS);
    let [scanner, manual, knocker, limited, other] = [1, 2, 3, 4, 5].map(|i| rig.src(i));
    let _first = rig.apply("carry.yaml", &policy(true, true, false));

    rig.tool(
        "scan",
        scanner,
        &["--ports", "1000-1019", "--timeout", "0.8"],
    );
    rig.portfw_ok(&["block", &manual.to_string(), "--for", "1m"]);
    rig.tool(
        "knock",
        knocker,
        &["--sequence", "7001/udp,7002/tcp,7003/udp"],
    );
    let burst = rig.tool(
        "burst",
        limited,
        &[
            "--port",
            &LIMITED.to_string(),
            "--count",
            "6",
            "--timeout",
            "0.9",
        ],
    );
    assert_eq!(burst["connected"], 5, "limit 5/1m on a burst of 6: {burst}");
    let status = rig.status();
    assert!(
        block_of(&status, &scanner.to_string()).is_some(),
        "scan block: {status:#}"
    );
    assert!(
        block_of(&status, &manual.to_string()).is_some(),
        "manual block: {status:#}"
    );
    assert!(
        door_of(&status, "door", &knocker.to_string()).is_some(),
        "open door: {status:#}"
    );

    // The same defences, one more rule.
    let _second = rig.apply("carry.yaml", &policy(true, true, true));
    let status = rig.status();
    assert!(
        block_of(&status, &scanner.to_string()).is_some(),
        "the scan block did not survive a re-apply: {:#}",
        status["blocks"]
    );
    assert!(
        block_of(&status, &manual.to_string()).is_some(),
        "the manual block did not survive a re-apply: {:#}",
        status["blocks"]
    );
    assert!(
        door_of(&status, "door", &knocker.to_string()).is_some(),
        "the open door did not survive a re-apply: {:#}",
        status["doors"]
    );
    let results = parallel(vec![
        Box::new(|| rig.silent(scanner, SSH)),
        Box::new(|| rig.silent(manual, SSH)),
        Box::new(|| rig.reaches(knocker, OPENS)),
        Box::new(|| rig.silent(limited, LIMITED)),
        Box::new(|| rig.reaches(other, LIMITED)),
    ]);
    assert_eq!(
        results, [true; 5],
        "after a re-apply: [scanner blocked, manual block holds, door open, limit bucket \
         still empty, another source connects]"
    );

    // No scan guard and no door: the scan block goes, the manual one stays, the door shuts.
    let _third = rig.apply("carry.yaml", &policy(false, false, true));
    let status = rig.status();
    assert!(
        block_of(&status, &scanner.to_string()).is_none(),
        "a scan block outlived the scan guard: {:#}",
        status["blocks"]
    );
    assert!(
        block_of(&status, &manual.to_string()).is_some(),
        "a manual block went with the scan guard: {:#}",
        status["blocks"]
    );
    assert!(
        list(&status, "doors").is_empty(),
        "a door outlived its policy: {:#}",
        status["doors"]
    );
    let results = parallel(vec![
        Box::new(|| rig.reaches(scanner, SSH)),
        Box::new(|| rig.silent(manual, SSH)),
        Box::new(|| rig.silent(knocker, OPENS)),
    ]);
    assert_eq!(
        results, [true; 3],
        "[scanner unblocked, manual block holds, door closed]"
    );

    // detach removes the state with the filter.
    rig.portfw_ok(&["detach"]);
    let _fourth = rig.apply("carry.yaml", &policy(true, true, false));
    let status = rig.status();
    assert!(
        list(&status, "blocks").is_empty() && list(&status, "doors").is_empty(),
        "state outlived detach: {status:#}"
    );
    assert!(rig.reaches(manual, SSH), "the manual block outlived detach");
}

#[test]
fn in_audit_mode_a_blocked_source_still_connects_and_is_counted() {
    let mut rig = Rig::new("df-audit", 1);
    rig.lab.start_responder(&[SSH], &[]).expect("responder");
    let blocked = rig.src(1);
    let _policy = rig.apply(
        "audit.yaml",
        "default: drop\nenforce: false\nlog: drops\nrules:\n  - allow: ssh\n",
    );
    rig.portfw_ok(&["block", &blocked.to_string(), "--for", "1m"]);
    let before = rig.status();
    assert!(
        rig.connects(blocked, SSH, Duration::from_secs(3)),
        "audit mode dropped a blocked source's connection"
    );
    let after = rig.status();
    assert!(
        counter(&after, "would_drop_blocked") > counter(&before, "would_drop_blocked"),
        "a blocked source's packets in audit mode count as would_drop_blocked"
    );
    assert_eq!(
        counter(&after, "drop_blocked"),
        counter(&before, "drop_blocked"),
        "nothing dropped in audit mode"
    );
}
