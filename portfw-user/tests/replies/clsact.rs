//! The egress program attached through a clsact qdisc and a netlink filter, as on kernels
//! without tcx (forced here with `PORTFW_EGRESS_ATTACH=clsact`, since this kernel has tcx):
//! the host's own TCP and UDP get their replies, a re-apply (in place, and a fresh reload
//! that replaces the filter's program) goes on recording flows with one filter, status and
//! its health check know the attachment, and detach removes the filter and the qdisc
//! portfw added, and nothing that is not portfw's.

use std::{process::Output, time::Duration};

use serde_json::Value;

use crate::{
    ANSWER, HOST,
    common::e2e::{
        PolicyFile, apply,
        lab::{Lab, Proto, Side},
        portfw, root_lab, text, wait_for,
    },
    curl_out, host_with, peer_ips, probe_out, status,
};

const ENV: &str = "PORTFW_EGRESS_ATTACH";
/// portfw's place on the clsact egress hook, as `tc` prints it.
const PRIORITY: &str = "pref 247";
const HANDLE: &str = "handle 0x706677";

/// `portfw ARGS` in the lab's server namespace with `PORTFW_EGRESS_ATTACH=mode`.
fn portfw_with(lab: &Lab, mode: &str, args: &[&str]) -> Output {
    lab.server(std::iter::once(crate::common::e2e::PORTFW).chain(args.iter().copied()))
        .env(ENV, mode)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run portfw")
}

/// `portfw apply POLICY --iface <server iface> EXTRA` with the egress attach `mode`.
fn try_apply_with(lab: &Lab, mode: &str, policy: &PolicyFile, extra: &[&str]) -> Output {
    let path = policy.path();
    let mut args = vec!["apply", path.as_str(), "--iface", lab.server_iface()];
    args.extend_from_slice(extra);
    portfw_with(lab, mode, &args)
}

/// Applies `policy` to the server interface with the egress attach `mode`; must succeed.
fn apply_with(lab: &Lab, mode: &str, policy: &PolicyFile, extra: &[&str]) -> Output {
    let out = try_apply_with(lab, mode, policy, extra);
    assert!(out.status.success(), "apply ({ENV}={mode}): {}", text(&out));
    out
}

/// Portfw's is the one filter on the egress hook.
fn one_portfw_filter(lab: &Lab) {
    assert_eq!(
        portfw_filters(lab).len(),
        1,
        "{}",
        tc(lab, "filter", "egress")
    );
}

/// `tc ARGS dev <server iface> HOOK`'s output, e.g. `tc(lab, "filter", "egress")`.
fn tc(lab: &Lab, what: &str, hook: &str) -> String {
    let iface = lab.server_iface();
    let mut args = vec!["tc", what, "show", "dev", iface];
    if !hook.is_empty() {
        args.push(hook);
    }
    lab.run(Side::Server, args).expect("tc show")
}

/// The lines of `tc filter show ... egress` that are portfw's filter.
fn portfw_filters(lab: &Lab) -> Vec<String> {
    tc(lab, "filter", "egress")
        .lines()
        .filter(|l| l.contains("portfw_egress"))
        .map(str::to_string)
        .collect()
}

fn has_clsact(lab: &Lab) -> bool {
    tc(lab, "qdisc", "").contains("qdisc clsact")
}

/// The server interface's entry in `status --json`.
fn attachment(json: &Value) -> Value {
    json["attachments"][0].clone()
}

/// The host's TCP (curl) and UDP exchanges with its peer, in both families, get their
/// replies through `default: drop`.
fn outbound_works(lab: &Lab, when: &str) {
    for ip in peer_ips(lab) {
        assert_eq!(
            curl_out(lab, ip, 8080, ANSWER).as_deref(),
            Some("portfw-ok\n"),
            "{when}: curl {ip}:8080"
        );
        assert!(
            probe_out(lab, Proto::Udp, ip, 5300, ANSWER).is_open(),
            "{when}: udp {ip}:5300"
        );
    }
}

fn created(json: &Value) -> u64 {
    json["flows"]["created"].as_u64().unwrap_or(0)
}

#[test]
fn clsact_egress_records_flows_through_reapplies_and_detach_removes_its_filter_and_qdisc() {
    let mut lab = root_lab("rp-clsact");
    lab.start_responder_on(Side::Client, &[8080], &[5300])
        .expect("peer responder");
    let lab = &lab;
    assert!(!has_clsact(lab), "a fresh veth has no clsact qdisc");
    let policy = PolicyFile::new("host.yaml", HOST);
    let out = apply_with(lab, "clsact", &policy, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("egress clsact"),
        "{}",
        text(&out)
    );

    // portfw's filter, where portfw puts it, in direct-action mode; no tcx link.
    let filters = portfw_filters(lab);
    assert_eq!(filters.len(), 1, "{}", tc(lab, "filter", "egress"));
    for part in [PRIORITY, HANDLE, "direct-action"] {
        assert!(filters[0].contains(part), "{part}: {filters:?}");
    }
    assert!(
        !lab.pin_dir()
            .join(format!("egress-link-{}", lab.server_iface()))
            .exists(),
        "a clsact attachment pins no egress link"
    );

    // status says so, and the health check finds the filter.
    let json = status(lab);
    let a = attachment(&json);
    assert_eq!(a["egress_mode"], "clsact", "{json}");
    assert_eq!(a["egress"]["created-qdisc"], true, "{json}");
    assert_eq!(a["filtered"], true, "{json}");
    assert_eq!(a["mode"], "native", "the existing fields stay: {json}");
    let program = a["egress"]["program-id"].as_u64().unwrap_or(0);
    assert!(
        filters[0].contains(&format!("id {program} ")),
        "the recorded program runs: {filters:?} {json}"
    );
    let out = portfw(lab, &["status", "--check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("egress clsact filter priority 247 {HANDLE})")),
        "{}",
        text(&out)
    );

    outbound_works(lab, "after apply");
    let before = created(&status(lab));
    assert!(
        before >= 4,
        "the clsact program records the flows: {before}"
    );

    // A re-apply swaps the tables: the filter (and its program) stay, and a flow opened
    // after it is recorded and gets its replies. Without the variable (auto), the clsact
    // attachment is kept as it is.
    let changed = PolicyFile::new("host2.yaml", &format!("{HOST}  - allow: 443/tcp\n"));
    for mode in ["clsact", "auto"] {
        let out = apply_with(lab, mode, &changed, &[]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("updated program"),
            "an in-place update: {}",
            text(&out)
        );
        let filters = portfw_filters(lab);
        assert_eq!(filters.len(), 1, "one filter after a re-apply: {filters:?}");
        assert!(
            filters[0].contains(&format!("id {program} ")),
            "{filters:?}"
        );
    }
    outbound_works(lab, "after a re-apply");
    let json = status(lab);
    assert!(created(&json) >= before + 4, "{json}");
    assert_eq!(attachment(&json)["egress_mode"], "clsact", "{json}");

    // Another XDP mode attaches the interface again: under auto the clsact filter is
    // replaced in place, not swapped for a tcx link.
    apply(lab, &changed, &["--mode", "generic"]);
    let json = status(lab);
    assert_eq!(attachment(&json)["mode"], "generic", "{json}");
    assert_eq!(attachment(&json)["egress_mode"], "clsact", "{json}");
    assert_eq!(attachment(&json)["filtered"], true, "{json}");
    one_portfw_filter(lab);

    // A fresh reload (the flow table resized) replaces the filter's program in place: still
    // one filter, now running the new program, which records what leaves next. Under auto
    // too: portfw's filter is there, so it stays a filter.
    let resized = PolicyFile::new("host3.yaml", &host_with("flows: {max: 4096}\n"));
    let out = apply_with(lab, "auto", &resized, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("loaded program"),
        "a fresh load: {}",
        text(&out)
    );
    let json = status(lab);
    let a = attachment(&json);
    let reloaded = a["egress"]["program-id"].as_u64().unwrap_or(0);
    assert_ne!(reloaded, program, "a new program: {json}");
    assert_eq!(
        a["egress"]["created-qdisc"], true,
        "still portfw's qdisc: {json}"
    );
    let filters = portfw_filters(lab);
    assert_eq!(filters.len(), 1, "{filters:?}");
    assert!(
        filters[0].contains(&format!("id {reloaded} ")),
        "{filters:?}"
    );
    let before = created(&json);
    outbound_works(lab, "after a fresh reload");
    assert!(
        created(&status(lab)) >= before + 4,
        "the new program records"
    );

    // detach removes the filter and the qdisc portfw added.
    let out = portfw(lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        portfw_filters(lab).is_empty(),
        "{}",
        tc(lab, "filter", "egress")
    );
    assert!(!has_clsact(lab), "{}", tc(lab, "qdisc", ""));
    assert!(!lab.pin_dir().exists(), "no pins left");
}

/// Deletes whatever filter sits at portfw's place on the egress hook (priority 247, handle
/// 0x706677), behind portfw's back.
fn del_filter_at_portfws_place(lab: &Lab, what: &str) {
    lab.run(
        Side::Server,
        [
            "tc",
            "filter",
            "del",
            "dev",
            lab.server_iface(),
            "egress",
            "prio",
            "247",
            "handle",
            "0x706677",
            "bpf",
        ],
    )
    .expect(what);
}

/// A classic BPF filter that matches nothing: someone else's, on the clsact hook `hook`.
fn add_foreign_filter(lab: &Lab, hook: &str, priority: &str, handle: &str) {
    lab.run(
        Side::Server,
        [
            "tc",
            "filter",
            "add",
            "dev",
            lab.server_iface(),
            hook,
            "prio",
            priority,
            "handle",
            handle,
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    )
    .expect("add someone else's filter");
}

#[test]
fn a_clsact_qdisc_that_is_not_portfws_and_its_filters_stay() {
    let mut lab = root_lab("rp-clsact-own");
    lab.start_responder_on(Side::Client, &[8080], &[5300])
        .expect("peer responder");
    let lab = &lab;
    lab.run(
        Side::Server,
        ["tc", "qdisc", "add", "dev", lab.server_iface(), "clsact"],
    )
    .expect("add a clsact qdisc");
    add_foreign_filter(lab, "egress", "10", "1");

    // Someone else's filter at portfw's priority and handle is refused, not replaced.
    add_foreign_filter(lab, "egress", "247", "0x706677");
    let policy = PolicyFile::new("host.yaml", HOST);
    let out = try_apply_with(lab, "clsact", &policy, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not portfw's"),
        "{}",
        text(&out)
    );
    assert!(
        tc(lab, "filter", "egress").contains(HANDLE),
        "the stranger's filter stays"
    );
    assert!(!lab.pin_dir().exists(), "a refused apply leaves no filter");
    del_filter_at_portfws_place(lab, "remove the stranger's filter");

    apply_with(lab, "clsact", &policy, &[]);
    let json = status(lab);
    assert_eq!(
        attachment(&json)["egress"]["created-qdisc"],
        false,
        "the qdisc was there: {json}"
    );
    outbound_works(lab, "beside another filter");

    let out = portfw(lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    let egress = tc(lab, "filter", "egress");
    assert!(!egress.contains("portfw_egress"), "{egress}");
    assert!(
        egress.contains("pref 10 "),
        "the other filter stays: {egress}"
    );
    assert!(has_clsact(lab), "a qdisc portfw did not add stays");
}

#[test]
fn a_clsact_qdisc_portfw_added_stays_while_it_holds_another_filter() {
    let lab = root_lab("rp-clsact-shared");
    let lab = &lab;
    let policy = PolicyFile::new("host.yaml", HOST);
    apply_with(lab, "clsact", &policy, &[]);
    add_foreign_filter(lab, "ingress", "10", "1");
    let out = portfw(lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        portfw_filters(lab).is_empty(),
        "{}",
        tc(lab, "filter", "egress")
    );
    assert!(has_clsact(lab), "the qdisc holds someone else's filter");
    assert!(
        tc(lab, "filter", "ingress").contains("pref 10 "),
        "and that filter stays"
    );
}

#[test]
fn a_missing_clsact_filter_shows_as_not_filtered_and_apply_puts_it_back() {
    let lab = root_lab("rp-clsact-gone");
    let lab = &lab;
    let policy = PolicyFile::new("host.yaml", HOST);
    apply_with(lab, "clsact", &policy, &[]);
    del_filter_at_portfws_place(lab, "remove portfw's filter behind its back");
    let out = portfw(lab, &["status", "--check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let json = status(lab);
    let a = attachment(&json);
    assert_eq!(a["filtered"], false, "{json}");
    assert!(
        a["problem"]
            .as_str()
            .is_some_and(|p| p.contains("clsact egress filter") && p.contains("missing")),
        "{json}"
    );
    // Applying again attaches it again, on the qdisc portfw added.
    apply_with(lab, "clsact", &policy, &[]);
    one_portfw_filter(lab);
    let out = portfw(lab, &["status", "--check"]);
    assert!(out.status.success(), "{}", text(&out));
    let json = status(lab);
    assert_eq!(attachment(&json)["egress"]["created-qdisc"], true, "{json}");
    // Forcing tcx moves the interface to a tcx link: the clsact filter and the qdisc
    // portfw added go.
    apply_with(lab, "tcx", &policy, &[]);
    assert!(
        portfw_filters(lab).is_empty(),
        "{}",
        tc(lab, "filter", "egress")
    );
    assert!(!has_clsact(lab), "{}", tc(lab, "qdisc", ""));
    let json = status(lab);
    assert_eq!(attachment(&json)["egress_mode"], "tcx", "{json}");
    assert_eq!(attachment(&json)["filtered"], true, "{json}");
}

#[test]
fn an_unknown_egress_attach_mode_is_refused_naming_the_variable() {
    let lab = root_lab("rp-clsact-bad");
    let lab = &lab;
    let policy = PolicyFile::new("host.yaml", HOST);
    let out = try_apply_with(lab, "netlink", &policy, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PORTFW_EGRESS_ATTACH=\"netlink\"")
            && stderr.contains("tcx, clsact or auto"),
        "{stderr}"
    );
    assert!(!lab.pin_dir().exists(), "nothing was loaded");
}

#[test]
fn the_clsact_filter_of_a_killed_apply_is_removed_by_detach() {
    use std::io::{BufRead as _, BufReader};

    let mut lab = root_lab("rp-clsact-kill");
    let policy = PolicyFile::new("host.yaml", HOST);
    let path = policy.path();
    let mut cmd = lab.server([
        crate::common::e2e::PORTFW,
        "apply",
        path.as_str(),
        "--iface",
        lab.server_iface(),
    ]);
    cmd.env(ENV, "clsact")
        .env("PORTFW_TEST_PAUSE_AT", "fresh-attached")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let id = lab.spawn(cmd).expect("portfw apply");
    let stderr = lab
        .child_mut(id)
        .and_then(|c| c.stderr.take())
        .expect("apply's stderr");
    let paused = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("paused at fresh-attached"));
    assert!(paused, "the apply never paused");
    let pid = lab.child_mut(id).map(|c| c.id()).expect("pid");
    lab.run(Side::Server, ["kill", "-KILL", &pid.to_string()])
        .expect("kill the apply");
    let _ = lab.wait(id, std::time::Duration::from_secs(10));
    let lab = &lab;
    assert_eq!(portfw_filters(lab).len(), 1, "the killed apply's filter");
    let out = portfw(lab, &["status"]);
    assert_eq!(out.status.code(), Some(1), "half-built: {}", text(&out));

    let out = portfw(lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        portfw_filters(lab).is_empty(),
        "{}",
        tc(lab, "filter", "egress")
    );
}

#[test]
fn a_trial_rolled_back_puts_the_clsact_attachment_back() {
    let mut lab = root_lab("rp-clsact-try");
    lab.start_responder_on(Side::Client, &[8080], &[5300])
        .expect("peer responder");
    let lab = &lab;
    let policy = PolicyFile::new("host.yaml", HOST);
    apply_with(lab, "clsact", &policy, &[]);
    // On trial in another XDP mode: the interface is attached again, its filter replaced in
    // place; the rollback (by the watchdog, which runs under auto) puts the native mode
    // back, and the filter with it.
    let changed = PolicyFile::new("host2.yaml", &format!("{HOST}  - allow: 443/tcp\n"));
    apply_with(lab, "auto", &changed, &["--mode", "generic", "--try", "2"]);
    let json = status(lab);
    assert_eq!(attachment(&json)["mode"], "generic", "{json}");
    assert_eq!(attachment(&json)["egress_mode"], "clsact", "{json}");
    wait_for(Duration::from_secs(20), "the trial's rollback", || {
        status(lab)["trial"].is_null()
    });
    let json = status(lab);
    let a = attachment(&json);
    assert_eq!(a["mode"], "native", "{json}");
    assert_eq!(a["egress_mode"], "clsact", "{json}");
    assert_eq!(a["filtered"], true, "{json}");
    one_portfw_filter(lab);
    outbound_works(lab, "after the rollback");
    let out = portfw(lab, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!has_clsact(lab), "{}", tc(lab, "qdisc", ""));
}
