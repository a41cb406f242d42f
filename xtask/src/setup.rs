//! `cargo xtask setup`: installs what the build and the tests need, and is a quick no-op when all is there.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use portfw_lab::toolchain::{self, LLVM_MAJOR, PINNED_NIGHTLY};

use crate::util::{self, run_checked};

/// Debian packages for the build (LLVM for bpf-linker) and for the lab and tests.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links libLLVM-22 dynamically; llvm-22-dev brings llvm-config
    // and the shared library, so libpolly-22-dev is not needed.
    "llvm-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iputils-ping",
    "nmap",
    "ncat",
    "netcat-openbsd",
    "curl",
    "socat",
    "tcpdump",
    "python3",
    "python3-scapy",
    "xdp-tools",
    "nftables",
    "iptables",
    "hping3",
    "netsniff-ng",
    // tests/defences: knockd's `knock` client against the knock sequences (the knockd
    // daemon it brings is not started: Debian ships it disabled).
    "knockd",
    // `cargo xtask bench`: veth offloads and the plots of BENCHMARKS.md.
    "ethtool",
    "python3-matplotlib",
    "linux-perf",
    "util-linux",
    "procps",
    // `cargo xtask package --check`: man -l renders the man pages, systemd-analyze verifies
    // the unit, and kubernetes-validate lives in a venv of Debian's python.
    "man-db",
    "groff-base",
    "systemd",
    "python3-venv",
];

/// Packages that are nice to have but not on every Debian mirror snapshot.
const OPTIONAL_APT_PACKAGES: &[&str] = &["bpftool"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// For the dependency audit in .ci/run (`cargo deny check advisories`).
const CARGO_DENY_VERSION: &str = "0.20.2";
/// Builds target/debian/*.deb (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Validates deploy/kubernetes/ offline: it ships the schemas of each Kubernetes release.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const BPFFS: &str = "/sys/fs/bpf";
/// As portfw itself mounts it (`BPFFS_MOUNT_OPTIONS` in portfw-user's loader): a default
/// bpffs is mode 1777, where any user may plant directories and links for root to trip on.
const BPFFS_OPTIONS: &str = "mode=0700";

/// Whether to install what is missing or only report it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    Check,
}

/// Runs every step; in check mode fails at the end if anything is missing.
pub fn run(mode: Mode) -> Result<()> {
    let steps: [(&str, Step); 9] = [
        ("root", step_root),
        ("apt packages", step_apt),
        ("rust components", step_stable_components),
        ("rust nightly", step_nightly),
        ("bpf-linker", step_bpf_linker),
        ("cargo-deny", step_cargo_deny),
        ("bpffs", step_bpffs),
        ("cargo-deb", step_cargo_deb),
        ("kubernetes-validate", step_kubernetes_validate),
    ];
    run_steps(mode, &steps)
}

/// Only what `cargo xtask package` needs beyond a build: cargo-deb, and with `validator`
/// kubernetes-validate. Unlike [`run`] it needs no root.
pub fn packaging_tools(mode: Mode, validator: bool) -> Result<()> {
    let mut steps: Vec<(&str, Step)> = vec![("cargo-deb", step_cargo_deb)];
    if validator {
        steps.push(("kubernetes-validate", step_kubernetes_validate));
    }
    run_steps(mode, &steps)
}

fn run_steps(mode: Mode, steps: &[(&str, Step)]) -> Result<()> {
    let mut missing = Vec::new();
    for &(name, step) in steps {
        match step(mode).with_context(|| format!("setup step `{name}` failed"))? {
            Status::Ok(detail) => println!("setup: {name} … ok{}", with_detail(&detail)),
            Status::Warn(detail) => println!("setup: {name} … WARNING: {detail}"),
            Status::Missing(detail) => {
                println!("setup: {name} … MISSING: {detail}");
                missing.push(name);
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "setup --check: missing: {}; run `cargo xtask setup` as root",
            missing.join(", ")
        );
    }
    Ok(())
}

/// One setup step: checks, and installs unless in check mode.
type Step = fn(Mode) -> Result<Status>;

enum Status {
    Ok(String),
    Warn(String),
    /// Only returned in check mode.
    Missing(String),
}

fn with_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn step_root(_mode: Mode) -> Result<Status> {
    if util::is_root() {
        Ok(Status::Ok(String::new()))
    } else {
        // Only a warning here: a non-root user can still check, and `test`
        // and `demo` refuse to start on their own.
        Ok(Status::Warn(
            "not running as root: installing, XDP attach and the namespace tests need root"
                .to_owned(),
        ))
    }
}

fn step_apt(mode: Mode) -> Result<Status> {
    let mut missing = not_installed(APT_PACKAGES)?;
    let missing_optional = not_installed(OPTIONAL_APT_PACKAGES)?;
    if missing.is_empty() && missing_optional.is_empty() {
        return Ok(Status::Ok(format!(
            "{} packages",
            APT_PACKAGES.len() + OPTIONAL_APT_PACKAGES.len()
        )));
    }
    if mode == Mode::Check {
        let all: Vec<_> = missing.iter().chain(&missing_optional).cloned().collect();
        if missing.is_empty() {
            return Ok(Status::Warn(format!(
                "optional not installed: {}",
                all.join(" ")
            )));
        }
        return Ok(Status::Missing(all.join(" ")));
    }
    if !util::is_root() {
        if missing.is_empty() {
            return Ok(Status::Warn(format!(
                "optional not installed (needs root): {}",
                missing_optional.join(" ")
            )));
        }
        bail!(
            "need root to install {}",
            missing
                .iter()
                .chain(&missing_optional)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "setup: apt packages … installing {}",
        missing
            .iter()
            .chain(&missing_optional)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    run_checked(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )?;
    let mut skipped = Vec::new();
    for package in missing_optional {
        if has_candidate(&package)? {
            missing.push(package);
        } else {
            skipped.push(package);
        }
    }
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )?;
    let still = not_installed(&missing.iter().map(String::as_str).collect::<Vec<_>>())?;
    if !still.is_empty() {
        bail!(
            "apt-get reported success but these are not installed: {}",
            still.join(" ")
        );
    }
    if skipped.is_empty() {
        Ok(Status::Ok(format!("installed {}", missing.join(" "))))
    } else {
        Ok(Status::Warn(format!(
            "installed {}; not available here: {}",
            missing.join(" "),
            skipped.join(" ")
        )))
    }
}

/// The packages of `packages` that dpkg does not list as installed, in one query.
fn not_installed(packages: &[&str]) -> Result<Vec<String>> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    // dpkg-query exits 1 when a package was never installed but still prints
    // the others, so its status code is not the answer.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    Ok(packages
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| (*p).to_owned())
        .collect())
}

fn has_candidate(package: &str) -> Result<bool> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .with_context(|| format!("running apt-cache policy {package}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Candidate:"))
        .any(|candidate| candidate.trim() != "(none)"))
}

/// rustfmt and clippy for `cargo xtask lint`; a minimal rustup profile lacks them.
fn step_stable_components(mode: Mode) -> Result<Status> {
    let missing: Vec<&str> = [("rustfmt", "rustfmt"), ("cargo-clippy", "clippy")]
        .into_iter()
        .filter(|(binary, _)| {
            !Command::new("rustup")
                .args(["which", binary])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(Status::Ok("rustfmt, clippy".to_owned()));
    }
    if mode == Mode::Check {
        return Ok(Status::Missing(missing.join(" ")));
    }
    println!("setup: rust components … installing {}", missing.join(" "));
    run_checked(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )?;
    Ok(Status::Ok(format!("installed {}", missing.join(" "))))
}

fn step_nightly(mode: Mode) -> Result<Status> {
    let installed = toolchain::installed_toolchains().context("running `rustup toolchain list`")?;
    let chosen = if installed.iter().any(|t| toolchain::is_pinned(t)) {
        Some(PINNED_NIGHTLY)
    } else if installed.iter().any(|t| toolchain::is_plain_nightly(t))
        && toolchain::llvm_major("nightly") == Some(LLVM_MAJOR)
    {
        Some("nightly")
    } else {
        None
    };
    let Some(chosen) = chosen else {
        if mode == Mode::Check {
            return Ok(Status::Missing(format!(
                "no nightly with LLVM {LLVM_MAJOR} (would install {PINNED_NIGHTLY})"
            )));
        }
        println!("setup: rust nightly … installing {PINNED_NIGHTLY} with rust-src");
        // The pinned date, never `nightly`: a newer LLVM than bpf-linker's breaks the link.
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            PINNED_NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(Status::Ok(format!("installed {PINNED_NIGHTLY}")));
    };
    let llvm = toolchain::llvm_major(chosen);
    if llvm != Some(LLVM_MAJOR) {
        bail!(
            "toolchain {chosen} reports LLVM {llvm:?}, bpf-linker needs LLVM {LLVM_MAJOR}; \
             remove it or install {PINNED_NIGHTLY}"
        );
    }
    if has_rust_src(chosen)? {
        return Ok(Status::Ok(format!("{chosen}, LLVM {LLVM_MAJOR}, rust-src")));
    }
    if mode == Mode::Check {
        return Ok(Status::Missing(format!("rust-src for {chosen}")));
    }
    println!("setup: rust nightly … adding rust-src to {chosen}");
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        chosen,
    ]))?;
    Ok(Status::Ok(format!(
        "{chosen}, LLVM {LLVM_MAJOR}, added rust-src"
    )))
}

/// Looks in the sysroot rather than asking `rustup component list`, which is slow.
fn has_rust_src(toolchain: &str) -> Result<bool> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .with_context(|| format!("running `rustup run {toolchain} rustc --print sysroot`"))?;
    if !out.status.success() {
        bail!(
            "`rustup run {toolchain} rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file())
}

fn step_bpf_linker(mode: Mode) -> Result<Status> {
    let found = bpf_linker_version();
    let llvm = found.as_ref().and_then(|_| bpf_linker_llvm_major());
    match (&found, llvm) {
        (Some(version), None) => return Ok(Status::Ok(version.clone())),
        (Some(version), Some(major)) if major == LLVM_MAJOR => {
            return Ok(Status::Ok(format!("{version}, LLVM {major}")));
        }
        _ => {}
    }
    let problem = match llvm {
        Some(major) => {
            format!("bpf-linker links LLVM {major}, the nightly needs LLVM {LLVM_MAJOR}")
        }
        None => "bpf-linker not found in PATH".to_owned(),
    };
    if mode == Mode::Check {
        return Ok(Status::Missing(problem));
    }
    println!(
        "setup: bpf-linker … {problem}; installing {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} \
         (takes a few minutes)"
    );
    let llvm_bin = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin");
    if !Path::new(&llvm_bin).join("llvm-config").exists() {
        bail!(
            "{llvm_bin}/llvm-config not found; the apt step should have installed llvm-{LLVM_MAJOR}-dev"
        );
    }
    // bpf-linker's build script finds LLVM through the first llvm-config in PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![PathBuf::from(&llvm_bin)];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths).context("building PATH for cargo install")?;
    run_checked(
        Command::new(util::cargo())
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("PATH", path),
    )?;
    match bpf_linker_version() {
        Some(version) => Ok(Status::Ok(format!("installed {version}"))),
        None => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not run; \
             is cargo's bin directory (~/.cargo/bin) in PATH?"
        ),
    }
}

/// The LLVM major version a dynamically linked bpf-linker loads, from ldd;
/// `None` when that cannot be told (for instance a static build).
fn bpf_linker_llvm_major() -> Option<u32> {
    let binary = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("bpf-linker"))
        .find(|path| path.is_file())?;
    let out = Command::new("ldd").arg(&binary).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|word| {
            // libLLVM.so.22.1 (Debian) or libLLVM-22.so (LLVM's own naming).
            let rest = word
                .strip_prefix("libLLVM.so.")
                .or_else(|| word.strip_prefix("libLLVM-"))?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// cargo-deny from crates.io, for the dependency audit of .ci/run. Only a warning when it
/// cannot be installed: the audit is then skipped, and says so, rather than a registry
/// hiccup failing every build and test.
fn step_cargo_deny(mode: Mode) -> Result<Status> {
    if let Some(version) = cargo_deny_version() {
        return Ok(Status::Ok(version));
    }
    if mode == Mode::Check {
        return Ok(Status::Missing("cargo-deny not found in PATH".to_owned()));
    }
    println!(
        "setup: cargo-deny … installing {CARGO_DENY_VERSION} from crates.io (once; takes \
         several minutes)"
    );
    let installed = run_checked(Command::new(util::cargo()).args([
        "install",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--locked",
    ]));
    Ok(match (installed, cargo_deny_version()) {
        (Ok(()), Some(version)) => Status::Ok(format!("installed {version}")),
        (Ok(()), None) => Status::Warn(
            "cargo-deny was installed but `cargo deny --version` does not run; is cargo's bin \
             directory (~/.cargo/bin) in PATH? The dependency audit will be skipped"
                .to_owned(),
        ),
        (Err(error), _) => Status::Warn(format!(
            "could not install cargo-deny ({error:#}); the dependency audit will be skipped"
        )),
    })
}

fn cargo_deny_version() -> Option<String> {
    let out = Command::new("cargo-deny")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn step_bpffs(mode: Mode) -> Result<Status> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, kind) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && kind == Some("bpf")
    });
    if mounted {
        return Ok(Status::Ok(BPFFS.to_owned()));
    }
    if mode == Mode::Check {
        return Ok(Status::Missing(format!("no bpf filesystem at {BPFFS}")));
    }
    if !util::is_root() {
        bail!("need root to mount the bpf filesystem at {BPFFS}");
    }
    println!("setup: bpffs … mounting at {BPFFS} ({BPFFS_OPTIONS})");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run_checked(Command::new("mount").args(["-t", "bpf", "-o", BPFFS_OPTIONS, "bpf", BPFFS]))?;
    Ok(Status::Ok(format!("mounted {BPFFS} ({BPFFS_OPTIONS})")))
}

fn step_cargo_deb(mode: Mode) -> Result<Status> {
    if let Some(version) = cargo_deb_version() {
        return Ok(Status::Ok(version));
    }
    if mode == Mode::Check {
        return Ok(Status::Missing(format!(
            "cargo-deb not found (would install {CARGO_DEB_VERSION})"
        )));
    }
    println!("setup: cargo-deb … installing {CARGO_DEB_VERSION} (takes a minute or two)");
    run_checked(Command::new(util::cargo()).args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))?;
    match cargo_deb_version() {
        Some(version) => Ok(Status::Ok(format!("installed {version}"))),
        None => bail!(
            "cargo-deb was installed but `cargo deb --version` does not run; \
             is cargo's bin directory (~/.cargo/bin) in PATH?"
        ),
    }
}

fn cargo_deb_version() -> Option<String> {
    let out = Command::new(util::cargo())
        .args(["deb", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The kubernetes-validate of `cargo xtask package --check`, in a venv of its own (Debian's
/// python refuses `pip install` outside one, PEP 668) that outlives clones and `cargo clean`:
/// ~/.local/share/portfw/kubernetes-validate.
pub fn kubernetes_validate() -> PathBuf {
    kubernetes_validate_venv().join("bin/kubernetes-validate")
}

fn kubernetes_validate_venv() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/portfw/kubernetes-validate")
}

/// Where root's setup links the venv's command, so that `kubernetes-validate` runs from any
/// shell as well.
const KUBERNETES_VALIDATE_LINK: &str = "/usr/local/bin/kubernetes-validate";

/// Points KUBERNETES_VALIDATE_LINK at the venv, unless something else is there already.
fn link_kubernetes_validate() -> Result<Option<String>> {
    let link = Path::new(KUBERNETES_VALIDATE_LINK);
    let target = kubernetes_validate();
    match fs::read_link(link) {
        Ok(current) if current == target => return Ok(None),
        // A link of ours to an older place: replace it.
        Ok(current) if current.ends_with("bin/kubernetes-validate") => {
            fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
        }
        Ok(_) => {
            return Ok(Some(format!(
                "{} is another program's; left alone",
                link.display()
            )));
        }
        Err(_) if link.exists() => {
            return Ok(Some(format!(
                "{} is another program's; left alone",
                link.display()
            )));
        }
        Err(_) => {}
    }
    if !util::is_root() {
        return Ok(Some(format!(
            "not linked to {} (needs root)",
            link.display()
        )));
    }
    std::os::unix::fs::symlink(&target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    Ok(None)
}

fn kubernetes_validate_version() -> Option<String> {
    let out = Command::new(kubernetes_validate())
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn step_kubernetes_validate(mode: Mode) -> Result<Status> {
    let found = kubernetes_validate_version();
    if found.as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        if mode == Mode::Check {
            return Ok(Status::Ok(KUBERNETES_VALIDATE_VERSION.to_owned()));
        }
        return Ok(match link_kubernetes_validate()? {
            None => Status::Ok(KUBERNETES_VALIDATE_VERSION.to_owned()),
            Some(warning) => Status::Warn(format!("{KUBERNETES_VALIDATE_VERSION}; {warning}")),
        });
    }
    let problem = match &found {
        Some(version) => {
            format!("kubernetes-validate {version}, want {KUBERNETES_VALIDATE_VERSION}")
        }
        None => "kubernetes-validate not installed".to_owned(),
    };
    if mode == Mode::Check {
        return Ok(Status::Missing(problem));
    }
    let venv = kubernetes_validate_venv();
    println!(
        "setup: kubernetes-validate … {problem}; installing {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    if !venv.join("bin/pip").exists() {
        run_checked(
            Command::new(portfw_lab::PYTHON)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )
        .context("creating the venv (Debian's python3-venv provides `python3 -m venv`)")?;
    }
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            ))
            .stdin(Stdio::null()),
    )?;
    match kubernetes_validate_version() {
        Some(version) => Ok(match link_kubernetes_validate()? {
            None => Status::Ok(format!("installed {version}")),
            Some(warning) => Status::Warn(format!("installed {version}; {warning}")),
        }),
        None => bail!(
            "kubernetes-validate was installed but `{} --version` does not run",
            kubernetes_validate().display()
        ),
    }
}
