//! Updates and the world around them: an update whose attach fails changes nothing, a
//! re-created interface is reported until applied again, and portfw mounts bpffs itself once
//! with mode 0700.

use std::process::{Child, Stdio};

use crate::{
    ALLOW_ALL, PORTFW, Pair, PolicyFile, Sandbox, hardening::tun::Tun, lone_netns, shared,
    status_json, stderr, text,
};

#[test]
fn an_update_whose_attach_fails_changes_nothing() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("attachfail", 74);
    let ino = pair.server.inode();
    let tun = Tun::new(&pair.server, "tun0");
    pair.server.ip(&["link", "set", "tun0", "up"]);
    let a = PolicyFile::new(ALLOW_ALL);
    let b = PolicyFile::new("default: allow\nrules:\n  - drop: 7778/udp\n");
    let out = sandbox.portfw(&pair.server, &["apply", a.path(), "--iface", "s0"]);
    assert!(out.status.success(), "{}", text(&out));
    // A tun device has no native XDP: the new interface cannot be attached.
    let out = sandbox.portfw(
        &pair.server,
        &[
            "apply",
            b.path(),
            "--iface",
            "s0",
            "--iface",
            "tun0",
            "--mode",
            "native",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot attach to `tun0` in native mode"),
        "{}",
        text(&out)
    );
    let status = status_json(&sandbox, &pair.server);
    assert_eq!(
        status["policy"]["file"],
        a.path(),
        "the new policy went live: {status}"
    );
    assert_eq!(
        status["attachments"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["attachments"][0]["iface"], "s0", "{status}");
    assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
    assert!(!sandbox.exists(&format!("/sys/fs/bpf/portfw/{ino}/link-tun0")));
    assert!(!pair.udp_arrives(7777), "the old policy still drops 7777");
    assert!(pair.udp_arrives(7778), "the old policy still allows 7778");
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(tun);
}

#[test]
fn a_re_created_interface_is_reported_not_filtered_until_applied_again() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("recreate", 75);
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "s0"];
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!pair.udp_arrives(7777));
    let check = sandbox.portfw(&pair.server, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    // Deleted and re-created under the same name, with the same ifindex even.
    pair.server.ip(&["link", "del", "s0"]);
    pair.join();
    assert!(pair.udp_arrives(7777), "the new s0 is not filtered");
    let out = sandbox.portfw(&pair.server, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("NOT FILTERED: `s0` was re-created") && shown.contains("apply again"),
        "{}",
        text(&out)
    );
    let status = status_json(&sandbox, &pair.server);
    assert_eq!(status["attachments"][0]["filtered"], false, "{status}");
    let check = sandbox.portfw(&pair.server, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        stderr(&check).contains("NOT FILTERED: s0"),
        "{}",
        text(&check)
    );

    // Applying again attaches to the new device (an update, not a reload).
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("updated program"),
        "{}",
        text(&out)
    );
    assert!(!pair.udp_arrives(7777), "filtered again");
    let check = sandbox.portfw(&pair.server, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn portfw_mounts_bpffs_itself_once_with_mode_0700() {
    let _shared = shared();
    let sandbox = Sandbox::without_bpffs();
    assert_eq!(sandbox.bpffs_mounts(), 0);
    let policy = PolicyFile::new(ALLOW_ALL);
    let namespaces = [lone_netns("mount-a"), lone_netns("mount-b")];
    // Two first applies at once, in two namespaces: one mount between them.
    let children: Vec<Child> = namespaces
        .iter()
        .map(|ns| {
            sandbox
                .command(
                    Some(ns),
                    None,
                    &[PORTFW, "apply", policy.path(), "--iface", "v0"],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("portfw apply")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("apply");
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(sandbox.bpffs_mounts(), 1, "two applies stacked two mounts");
    // bpffs adds the sticky bit to whatever mode it is given.
    assert_eq!(sandbox.stat("%U %a", "/sys/fs/bpf"), "root 1700");
    for ns in &namespaces {
        let out = sandbox.portfw(ns, &["detach"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}
