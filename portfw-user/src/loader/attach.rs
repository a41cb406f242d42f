//! Attaching to interfaces: the XDP program on the way in and the TC egress program on the
//! way out, each through a `bpf_link` pinned beside the program, so the filter outlives the
//! command; and removing such a link.
use std::{io, os::fd::AsFd as _, path::Path};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink,
    tc::TcAttachOptions, xdp::XdpLink,
};
use aya_obj::programs::XdpAttachType;

use super::{
    bpffs::Paths,
    bpfsys,
    error::{LoaderError, io_err, program_err},
    fsafe::Dir,
    iface::{Link, ifindex, link_type},
    state::{AttachMode, Attachment},
};

/// How to attach: native (driver) XDP, generic (skb) XDP, or native with generic fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Auto,
    Native,
    Generic,
}

impl Mode {
    /// The attach modes to try, in order.
    fn tries(self) -> &'static [AttachMode] {
        match self {
            Self::Auto => &[AttachMode::Native, AttachMode::Generic],
            Self::Native => &[AttachMode::Native],
            Self::Generic => &[AttachMode::Generic],
        }
    }

    /// An interface already attached in `mode` satisfies this request.
    pub(super) fn accepts(self, mode: AttachMode) -> bool {
        self.tries().contains(&mode)
    }
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    }
}

/// The two programs an interface gets, for its link type.
pub(super) struct Programs<'a> {
    pub xdp: &'a mut Xdp,
    pub egress: &'a mut SchedClassifier,
}

/// Attaches both programs to `iface`, pinning the links at `xdp_pin` and `egress_pin`.
/// Either both are attached or, on error, neither.
pub(super) fn attach_interface(
    programs: Programs<'_>,
    iface: &str,
    link: Link,
    mode: Mode,
    xdp_pin: &Path,
    egress_pin: &Path,
) -> Result<Attachment, LoaderError> {
    let mut attachment = attach_xdp(programs.xdp, iface, mode, xdp_pin)?;
    attachment.link = link;
    if let Err(e) = attach_egress(programs.egress, iface, egress_pin) {
        let _ = unpin_link(xdp_pin);
        return Err(e);
    }
    Ok(attachment)
}

/// Attaches the egress program to `iface` with tcx (Linux 6.6+), after any program already
/// there, and pins the link at `pin`.
fn attach_egress(
    program: &mut SchedClassifier,
    iface: &str,
    pin: &Path,
) -> Result<(), LoaderError> {
    let failed = |reason: String, source: Option<ProgramError>| LoaderError::Attach {
        iface: iface.to_string(),
        mode: "tcx egress",
        reason,
        source: source.map(Box::new),
    };
    let link_id = program
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| {
            failed(
                "the kernel refused the tcx egress link that records the host's flows \
                 (tcx needs Linux 6.6 or newer)"
                    .into(),
                Some(e),
            )
        })?;
    let link = program
        .take_link(link_id)
        .map_err(program_err("taking the tcx link"))?;
    let fd_link = FdLink::try_from(link)
        .map_err(|_| failed("the kernel attached without a bpf_link".into(), None))?;
    fd_link
        .pin(pin)
        .map_err(io::Error::other)
        .map_err(io_err(format!(
            "pinning the egress link of {iface} at {}",
            pin.display()
        )))?;
    Ok(())
}

/// Attaches `program` to `iface` and pins the link at `pin`.
fn attach_xdp(
    program: &mut Xdp,
    iface: &str,
    mode: Mode,
    pin: &Path,
) -> Result<Attachment, LoaderError> {
    let index = ifindex(iface)?;
    let mut last_err = None;
    for &attach_mode in mode.tries() {
        match program.attach_to_if_index(index, xdp_mode(attach_mode)) {
            Ok(link_id) => {
                let link: XdpLink = program
                    .take_link(link_id)
                    .map_err(program_err("taking the XDP link"))?;
                let fd_link = FdLink::try_from(link).map_err(|_| LoaderError::Attach {
                    iface: iface.to_string(),
                    mode: attach_mode.name(),
                    reason: "the kernel attached without a bpf_link (needs Linux 5.9 or newer), \
                             so the filter could not outlive this command"
                        .into(),
                    source: None,
                })?;
                fd_link
                    .pin(pin)
                    .map_err(io::Error::other)
                    .map_err(io_err(format!(
                        "pinning the link of {iface} at {}",
                        pin.display()
                    )))?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    ifindex: index,
                    mode: attach_mode,
                    link: Link::Ethernet,
                });
            }
            Err(e) => last_err = Some((attach_mode, e)),
        }
    }
    let (attach_mode, source) =
        last_err.ok_or_else(|| LoaderError::Internal("no attach mode".into()))?;
    let busy = matches!(&source, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EBUSY));
    let reason = if busy {
        format!(
            "another XDP program is already attached; remove it first (for example `ip link set dev {iface} xdp off`)"
        )
    } else {
        "the kernel refused".to_string()
    };
    Err(LoaderError::Attach {
        iface: iface.to_string(),
        mode: attach_mode.name(),
        reason,
        source: Some(Box::new(source)),
    })
}

/// Detaches the link pinned as `name` in `dir` now, best effort: removing its pin only drops
/// a reference, which bpffs lets go of a grace period later, and attaching again before then
/// would find the old link still there.
pub(super) fn detach_pinned_link(dir: &Dir, name: &str) {
    if let Ok(Some(fd)) = dir.open_pin(name) {
        let _ = bpfsys::link_detach(fd.as_fd());
    }
}

/// Detaches the link pinned at `path` (if any) and removes the pin. The pin's directory is
/// checked and the pin opened and removed relative to it, so a link planted in its place is
/// refused, never followed.
pub(super) fn unpin_link(path: &Path) -> Result<(), LoaderError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(LoaderError::Internal(format!(
            "link pin {} has no directory",
            path.display()
        )));
    };
    let Some(dir) = Dir::open(dir)? else {
        return Ok(());
    };
    if let Some(fd) = dir.open_pin(name)? {
        bpfsys::link_detach(fd.as_fd())
            .map_err(io_err(format!("detaching the link {}", path.display())))?;
    }
    dir.remove_file(name)
}

/// Attaches the pinned programs of the filter at `paths` to `iface`, pinning the links.
pub(super) fn attach_pinned(
    paths: &Paths,
    iface: &str,
    mode: Mode,
) -> Result<Attachment, LoaderError> {
    let link = link_type(iface)?;
    let prog = paths.prog_for(link);
    let mut xdp = Xdp::from_pin(&prog, XdpAttachType::Interface)
        .map_err(program_err(format!("reopening {}", prog.display())))?;
    let prog = paths.egress_prog_for(link);
    let mut egress = SchedClassifier::from_pin(&prog)
        .map_err(program_err(format!("reopening {}", prog.display())))?;
    attach_interface(
        Programs {
            xdp: &mut xdp,
            egress: &mut egress,
        },
        iface,
        link,
        mode,
        &paths.link(iface),
        &paths.egress_link(iface),
    )
}
