//! What the Debian package and deploy/ promise, checked without root: the completions
//! source in bash, the man pages render, the packaged policy filters nothing, the unit and
//! the manifests carry the choices docs/operations.md documents. `cargo xtask package
//! --check` (CI) then builds, inspects, installs and removes the real .deb.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use yaml_rust2::{Yaml, YamlLoader};

const PORTFW: &str = env!("CARGO_BIN_EXE_portfw");

/// Commands every page and completion must name; others (such as `agent`) join them
/// through [`visible_commands`], which reads them off `portfw --help`.
const COMMANDS: &[&str] = &[
    "apply",
    "check",
    "status",
    "detach",
    "events",
    "explain",
    "flows",
    "completions",
];

/// The commands `portfw --help` lists, without clap's `help`: what a user can see, so what
/// the man pages and completions cover. Hidden ones (`manpage`) are not among them.
fn visible_commands() -> Vec<String> {
    let help = portfw(&["--help"]);
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues deeper in.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    for command in COMMANDS {
        assert!(
            listed.iter().any(|l| l == command),
            "portfw --help lacks {command}: {help}"
        );
    }
    assert!(
        !listed.iter().any(|l| l == "manpage"),
        "manpage must stay hidden"
    );
    listed
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("portfw-user sits in the workspace")
        .to_path_buf()
}

fn read(path: &str) -> String {
    let path = root().join(path);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("starting {cmd:?}: {err}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("utf-8 output")
}

fn portfw(args: &[&str]) -> String {
    stdout(Command::new(PORTFW).args(args))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portfw-package-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bash_completion_sources_cleanly_and_registers_portfw() {
    // Exactly as a user tries it, with stderr kept: a syntax error would show there.
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "set -e; source <('{PORTFW}' completions bash); complete -p portfw"
    )));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("-F _portfw portfw"),
        "complete -p portfw: {said}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And it completes the commands: COMP_WORDS as bash sets them for `portfw a<TAB>`.
    let words = stdout(Command::new("bash").arg("-c").arg(format!(
        "source <('{PORTFW}' completions bash); COMP_WORDS=(portfw ''); COMP_CWORD=1; \
         COMP_LINE='portfw '; COMP_POINT=7; _portfw portfw '' portfw; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )));
    let offered: BTreeSet<&str> = words.lines().collect();
    for command in &visible_commands() {
        assert!(
            offered.contains(command.as_str()),
            "`portfw <TAB>` does not offer {command}: {offered:?}"
        );
    }
    assert!(
        !offered.contains("manpage"),
        "the hidden manpage command is offered"
    );
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for (shell, check) in [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])] {
        let script = portfw(&["completions", shell]);
        for command in &visible_commands() {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
        assert!(
            !script.contains("manpage"),
            "{shell} completion offers the hidden manpage"
        );
        // The shells themselves are not on every machine; their parsers check where they are.
        if have(check[0]) {
            let dir = TempDir::new(shell);
            let file = dir.0.join("portfw-completion");
            fs::write(&file, &script).expect("writing the script");
            run(Command::new(check[0]).arg(check[1]).arg(&file));
        }
    }
}

#[test]
fn completions_refuse_an_unknown_shell() {
    let out = Command::new(PORTFW)
        .args(["completions", "tcsh"])
        .output()
        .expect("running portfw");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: bash, zsh, fish"));
}

/// groff with every warning on must say nothing, and `man -l` must show the title.
fn assert_renders(page: &Path, title: &str) {
    if have("groff") {
        let out = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(page));
        assert!(
            out.stderr.is_empty(),
            "groff warns on {}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if have("man") {
        let shown = stdout(
            Command::new("man")
                .arg("-l")
                .arg(page)
                .env("MANPAGER", "cat"),
        );
        assert!(
            shown.contains(&format!("{title}(8)")),
            "man -l {}:\n{shown}",
            page.display()
        );
    }
}

#[test]
fn man_page_is_section_8_and_lists_every_command() {
    let page = portfw(&["manpage"]);
    assert!(
        page.contains("\n.TH PORTFW 8 "),
        "no `.TH PORTFW 8`:\n{page}"
    );
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "SUBCOMMANDS",
        "FILES",
        "EXAMPLES",
        "\"SEE ALSO\"",
    ] {
        assert!(
            page.contains(&format!("\n.SH {section}\n")),
            "no {section} section"
        );
    }
    for command in &visible_commands() {
        // roff escapes every hyphen, the command's own (`knock-key`) too.
        let escaped = command.replace('-', "\\-");
        assert!(
            page.contains(&format!("portfw\\-{escaped}(8)")),
            "portfw.8 does not list {command}"
        );
    }
    assert!(
        !page.contains("manpage"),
        "portfw.8 lists the hidden manpage command"
    );
    assert!(
        page.contains("/etc/portfw/policy.yaml"),
        "FILES lacks the packaged policy"
    );
    let dir = TempDir::new("man");
    let file = dir.0.join("portfw.8");
    fs::write(&file, page).expect("writing portfw.8");
    assert_renders(&file, "PORTFW");
}

#[test]
fn manpage_dir_writes_one_page_per_command() {
    let dir = TempDir::new("mandir");
    let listed = portfw(&["manpage", "--dir", dir.0.to_str().expect("utf-8 path")]);
    let commands = visible_commands();
    let mut want: BTreeSet<String> = commands.iter().map(|c| format!("portfw-{c}.8")).collect();
    want.insert("portfw.8".to_owned());
    let written: BTreeSet<String> = fs::read_dir(&dir.0)
        .expect("reading the page directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(written, want);
    assert_eq!(
        listed.lines().count(),
        want.len(),
        "it prints each path it writes"
    );
    for command in &commands {
        let file = dir.0.join(format!("portfw-{command}.8"));
        let title = format!("PORTFW-{}", command.to_uppercase());
        let page = fs::read_to_string(&file).expect("reading a page");
        assert!(
            page.contains(&format!("\n.TH {title} 8 ")),
            "{}: no .TH {title} 8",
            file.display()
        );
        assert!(
            page.contains("portfw(8)"),
            "{} does not point back to portfw(8)",
            file.display()
        );
        assert_renders(&file, &title);
    }
}

/// The default-drop variant the packaged policy carries in its comments, uncommented.
fn commented_variant(policy: &str) -> String {
    let start = policy
        .find("# default: drop")
        .expect("the packaged policy carries a commented default-drop variant");
    policy[start..]
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .unwrap_or(line.strip_prefix('#').unwrap_or(line))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn packaged_policy_filters_nothing_and_its_variant_keeps_ssh() {
    let path = root().join("policies/packaged.yaml");
    let path = path.to_str().expect("utf-8 path");
    let summary = portfw(&["check", "--strict", path]);
    assert!(summary.contains("0 rules"), "{summary}");
    assert!(summary.contains("default allow"), "{summary}");
    // No interface: the service refuses to start until the operator names one.
    assert!(summary.contains("interfaces: (none listed)"), "{summary}");

    let dir = TempDir::new("variant");
    let variant = dir.0.join("variant.yaml");
    fs::write(&variant, commented_variant(&read("policies/packaged.yaml"))).expect("writing");
    let variant = variant.to_str().expect("utf-8 path");
    let summary = portfw(&["check", "--strict", variant]);
    assert!(summary.contains("default drop"), "{summary}");
    let ssh = portfw(&[
        "explain",
        variant,
        "--from",
        "203.0.113.9",
        "--to",
        "22/tcp",
    ]);
    assert!(ssh.contains("allow by rule 1 (ssh)"), "{ssh}");
}

/// `Key=value` lines of a unit file; a key may repeat.
fn unit_entries(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn unit_runs_the_agent_early_sandboxed_and_stops_without_detaching() {
    let unit = read("deploy/systemd/portfw.service");
    let entries = unit_entries(&unit);
    let values = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        match values(key).as_slice() {
            [value] => value,
            other => panic!("{key} is set {} times: {other:?}", other.len()),
        }
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/sbin/portfw agent --policy /etc/portfw/policy.yaml"
    );
    assert_eq!(one("Type"), "simple");
    assert!(
        one("Before")
            .split_whitespace()
            .any(|u| u == "network-pre.target")
    );
    assert!(
        one("Wants")
            .split_whitespace()
            .any(|u| u == "network-pre.target")
    );
    // Stop leaves the filter in force: nothing detaches on stop.
    for key in ["ExecStop", "ExecStopPost"] {
        assert!(
            values(key).is_empty(),
            "{key} is set: stop must leave the filter in force"
        );
    }
    assert!(
        !unit
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("detach"))
    );
    assert_eq!(values("ExecReload").len(), 2, "check, then SIGHUP");
    let caps: BTreeSet<&str> = one("CapabilityBoundingSet").split_whitespace().collect();
    assert_eq!(
        caps,
        BTreeSet::from(["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON"])
    );
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/sys/fs/bpf"),
        ("RuntimeDirectory", "portfw"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("SystemCallArchitectures", "native"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LimitMEMLOCK", "infinity"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
}

#[test]
fn unit_verifies_with_systemd_analyze() {
    if !have("systemd-analyze") {
        eprintln!("skipped: no systemd-analyze (CI's `cargo xtask package --check` verifies)");
        return;
    }
    // A root holding the system's units, the unit and the binary where the package puts
    // them; the man page check needs the installed page, which the package check has.
    let dir = TempDir::new("verify");
    let units = dir.0.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).expect("creating the unit directory");
    fs::create_dir_all(dir.0.join("usr/sbin")).expect("creating usr/sbin");
    run(Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system/.")
        .arg(&units));
    fs::copy(
        root().join("deploy/systemd/portfw.service"),
        units.join("portfw.service"),
    )
    .expect("copying the unit");
    fs::copy(PORTFW, dir.0.join("usr/sbin/portfw")).expect("copying the binary");
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", dir.0.display()))
        .arg("portfw.service"));
    // Unknown keys and bad values are warnings with exit status 0: any output fails.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn package_metadata_never_enables_or_starts_the_unit() {
    let manifest = read("portfw-user/Cargo.toml");
    let deb = &manifest[manifest
        .find("[package.metadata.deb]")
        .expect("deb metadata")..];
    let units = deb
        .lines()
        .find(|l| l.starts_with("systemd-units"))
        .expect("systemd-units");
    assert!(units.contains("enable = false"), "{units}");
    assert!(units.contains("start = false"), "{units}");
    assert!(
        deb.contains(r#"revision = """#),
        "the .deb name has no Debian revision"
    );
    for (source, dest) in [
        ("target/release/portfw", "usr/sbin/"),
        ("../policies/packaged.yaml", "etc/portfw/policy.yaml"),
        (
            "target/release/package-assets/man/*.8.gz",
            "usr/share/man/man8/",
        ),
        (
            "target/release/package-assets/completions/portfw.bash",
            "usr/share/bash-completion/completions/portfw",
        ),
        (
            "target/release/package-assets/completions/_portfw",
            "usr/share/zsh/vendor-completions/_portfw",
        ),
        (
            "target/release/package-assets/completions/portfw.fish",
            "usr/share/fish/vendor_completions.d/portfw.fish",
        ),
    ] {
        assert!(
            deb.contains(&format!(r#"["{source}", "{dest}""#)),
            "no asset {source} -> {dest}"
        );
    }
    // The sources that are not built must exist (cargo deb would fail late otherwise).
    for source in [
        "policies/packaged.yaml",
        "docs/operations.md",
        "docs/policy.md",
        "README.md",
    ] {
        assert!(root().join(source).is_file(), "{source} is missing");
    }
    let prerm = read("deploy/debian/prerm");
    assert!(
        prerm.contains("#DEBHELPER#"),
        "prerm must keep cargo-deb's snippet"
    );
    assert!(
        prerm.contains(r#"[ "$1" = "remove" ]"#),
        "prerm detaches on removal only"
    );
}

fn manifests() -> Vec<(String, Yaml)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("reading deploy/kubernetes")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            let text = fs::read_to_string(file).expect("reading a manifest");
            YamlLoader::load_from_str(&text)
                .unwrap_or_else(|err| panic!("{}: {err}", file.display()))
                .into_iter()
                .map(|doc| (doc["kind"].as_str().unwrap_or_default().to_owned(), doc))
        })
        .collect()
}

fn find<'a>(docs: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    let found: Vec<_> = docs.iter().filter(|(k, _)| k == kind).collect();
    assert_eq!(found.len(), 1, "want one {kind}");
    &found[0].1
}

#[test]
fn configmap_policy_is_a_valid_portfw_policy() {
    let docs = manifests();
    let map = find(&docs, "ConfigMap");
    let policy = map["data"]["policy.yaml"]
        .as_str()
        .expect("data.policy.yaml");
    let dir = TempDir::new("configmap");
    let file = dir.0.join("policy.yaml");
    fs::write(&file, policy).expect("writing the policy");
    let summary = portfw(&["check", "--strict", file.to_str().expect("utf-8 path")]);
    assert!(
        summary.contains("default allow"),
        "the fleet example must not drop by default"
    );
}

#[test]
fn daemonset_runs_the_agent_on_the_node_network_with_capabilities() {
    let docs = manifests();
    let kinds: BTreeSet<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"])
    );
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["serviceAccountName"].as_str(), Some("portfw"));
    assert!(
        pod["tolerations"]
            .as_vec()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_badvalue()),
        "tolerates every taint"
    );
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let agent = &containers[0];
    let argv: Vec<&str> = agent["command"]
        .as_vec()
        .into_iter()
        .chain(agent["args"].as_vec())
        .flatten()
        .map(|a| a.as_str().expect("string argument"))
        .collect();
    assert_eq!(
        argv,
        [
            "/usr/sbin/portfw",
            "agent",
            "--policy",
            "/etc/portfw/policy.yaml",
            "--metrics-listen",
            "0.0.0.0:9109"
        ]
    );
    let port = &agent["ports"][0];
    assert_eq!(port["containerPort"].as_i64(), Some(9109));
    let probe = &agent["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/metrics"));
    assert_eq!(probe["port"].as_str(), port["name"].as_str());
    let security = &agent["securityContext"];
    assert_ne!(
        security["privileged"].as_bool(),
        Some(true),
        "capabilities, not privileged"
    );
    let added: BTreeSet<&str> = security["capabilities"]["add"]
        .as_vec()
        .expect("capabilities.add")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"])
    );
    for limit in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                agent["resources"][limit][resource].as_str().is_some(),
                "resources.{limit}.{resource}"
            );
        }
    }

    // Volumes: the node's bpffs and state directory, and the ConfigMap as a directory (a
    // subPath mount would never see an update).
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let host_path = |path: &str| {
        volumes
            .iter()
            .find(|v| v["hostPath"]["path"].as_str() == Some(path))
            .and_then(|v| v["name"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"))
    };
    let mounts = agent["volumeMounts"].as_vec().expect("volumeMounts");
    let mounted_at = |name: &str| {
        let mount = mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name} is not mounted"));
        assert!(
            mount["subPath"].is_badvalue(),
            "{name} is mounted with subPath"
        );
        mount["mountPath"].as_str().expect("mountPath").to_owned()
    };
    assert_eq!(mounted_at(host_path("/sys/fs/bpf")), "/sys/fs/bpf");
    assert_eq!(mounted_at(host_path("/run/portfw")), "/run/portfw");
    let policy = volumes
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some("portfw-policy"))
        .expect("the policy ConfigMap volume");
    assert_eq!(
        mounted_at(policy["name"].as_str().expect("name")),
        "/etc/portfw"
    );
    assert_eq!(
        find(&docs, "ConfigMap")["metadata"]["name"].as_str(),
        Some("portfw-policy")
    );
}

#[test]
fn containerfile_installs_the_deb_and_runs_the_agent_as_the_daemonset_does() {
    let file = read("deploy/Containerfile");
    let directives: Vec<&str> = file
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.starts_with(' '))
        .collect();
    assert_eq!(directives.first(), Some(&"FROM debian:12-slim"));
    assert!(
        directives.contains(&"COPY portfw_*.deb /tmp/"),
        "{directives:?}"
    );
    assert!(file.contains("apt-get install -y --no-install-recommends /tmp/portfw_*.deb"));
    assert!(directives.contains(&r#"ENTRYPOINT ["/usr/sbin/portfw"]"#));
    assert!(
        directives
            .iter()
            .any(|d| d.starts_with("CMD [\"agent\"") && d.contains("0.0.0.0:9109"))
    );
    // The build context is target/debian, where cargo xtask package leaves the .deb.
    assert!(file.contains("target/debian"));
}
