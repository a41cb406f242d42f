//! Attaching to interfaces: the XDP program on the way in and the TC egress program on the
//! way out, each through a `bpf_link` pinned beside the program, so the filter outlives the
//! command (or, for the egress program on a kernel without tcx, a clsact filter, which
//! outlives it by itself); and removing them.
use std::{io, os::fd::AsFd as _, path::Path};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::FdLink,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact},
    xdp::XdpLink,
};
use aya_obj::programs::XdpAttachType;

use super::{
    bpffs::Paths,
    bpfsys,
    error::{LoaderError, io_err, program_err},
    fsafe::Dir,
    iface::{Link, ifindex, interfaces, link_type},
    state::{AttachMode, Attachment, Egress, EgressMode},
    tc::{self, Hook},
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

/// The environment variable that chooses how the egress program is attached: `tcx`,
/// `clsact`, or `auto` (the default: tcx, and clsact where the kernel has no tcx).
pub const EGRESS_ATTACH_ENV: &str = "PORTFW_EGRESS_ATTACH";

/// How to attach the egress program, from [`EGRESS_ATTACH_ENV`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressAttach {
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl EgressAttach {
    /// The mode [`EGRESS_ATTACH_ENV`] asks for; an unknown value is an error naming it.
    pub fn from_env() -> Result<Self, LoaderError> {
        match std::env::var_os(EGRESS_ATTACH_ENV) {
            None => Ok(Self::Auto),
            Some(value) => Self::parse(&value.to_string_lossy()),
        }
    }

    fn parse(value: &str) -> Result<Self, LoaderError> {
        match value {
            "" | "auto" => Ok(Self::Auto),
            "tcx" => Ok(Self::Tcx),
            "clsact" => Ok(Self::Clsact),
            other => Err(LoaderError::EgressAttachEnv {
                value: other.to_string(),
            }),
        }
    }

    /// An interface whose egress program is attached in `mode` satisfies this request.
    pub(super) fn accepts(self, mode: EgressMode) -> bool {
        match self {
            Self::Auto => true,
            Self::Tcx => mode == EgressMode::Tcx,
            Self::Clsact => mode == EgressMode::Clsact,
        }
    }
}

/// portfw's place on a clsact egress hook. Other filters (other priorities or handles, or
/// another program under these) are never touched. Low, so that the recording runs before
/// filters that tc numbers itself (from 49152 down), which might end the packet's walk; the
/// program hands every packet on (`TC_ACT_UNSPEC`).
pub(super) const CLSACT_PRIORITY: u16 = 247;
/// "pfw".
pub(super) const CLSACT_HANDLE: u32 = 0x0070_6677;

/// portfw's clsact egress filter on `iface`, as a link to replace or detach.
fn our_clsact_filter(iface: &str) -> Result<SchedClassifierLink, LoaderError> {
    SchedClassifierLink::attached(
        iface,
        TcAttachType::Egress,
        CLSACT_PRIORITY,
        TcHandle::from(CLSACT_HANDLE),
        None,
    )
    .map_err(io_err(format!("finding portfw's clsact filter on {iface}")))
}

/// A filter on a clsact hook is portfw's: a BPF program of portfw's egress pair (the
/// kernel keeps 15 bytes of a program's name, `portfw_egress_l`).
pub(super) fn is_portfw_filter(filter: &tc::Filter) -> bool {
    filter.kind == "bpf"
        && filter
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("portfw_egress"))
}

/// A filter sits at portfw's place on the clsact egress hook, whoever's it is.
fn at_portfw_place(filter: &tc::Filter) -> bool {
    filter.priority == CLSACT_PRIORITY && filter.handle == CLSACT_HANDLE
}

/// Whether the clsact egress hook of interface `index` holds portfw's filter at portfw's
/// place; `false` when that cannot be asked.
fn portfw_filter_on(index: u32) -> bool {
    tc::filters(index, Hook::Egress).is_ok_and(|filters| {
        filters
            .iter()
            .any(|f| at_portfw_place(f) && is_portfw_filter(f))
    })
}

/// The error of an attach of `mode` to `iface` that the kernel refused.
fn refused<'a>(
    iface: &'a str,
    mode: &'static str,
) -> impl Fn(String, Option<ProgramError>) -> LoaderError + 'a {
    move |reason, source| LoaderError::Attach {
        iface: iface.to_string(),
        mode,
        reason,
        source: source.map(Box::new),
    }
}

/// Attaches both programs to `iface`, pinning the XDP link at `xdp_pin` and a tcx egress
/// link at `egress_pin`. Either both are attached or, on error, neither. portfw's clsact
/// filter, if the interface has one, is replaced in place (clsact, auto) or removed once the
/// tcx link is attached (tcx); `qdisc_ours` says whether portfw created its qdisc.
pub(super) fn attach_interface(
    programs: Programs<'_>,
    iface: &str,
    link: Link,
    mode: Mode,
    (xdp_pin, egress_pin): (&Path, &Path),
    qdisc_ours: bool,
) -> Result<Attachment, LoaderError> {
    let request = EgressAttach::from_env()?;
    let mut attachment = attach_xdp(programs.xdp, iface, mode, xdp_pin)?;
    attachment.link = link;
    match attach_egress(programs.egress, iface, egress_pin, request, qdisc_ours) {
        Ok(egress) => attachment.egress = egress,
        Err(e) => {
            let _ = unpin_link(xdp_pin);
            return Err(e);
        }
    }
    // Forced onto tcx, an interface loses the clsact filter an earlier attach gave it, which
    // would record every flow twice. (Under auto such a filter is kept and replaced instead.)
    if request == EgressAttach::Tcx {
        let _ = remove_clsact_filter(iface, attachment.ifindex, qdisc_ours);
    }
    Ok(attachment)
}

/// Whether a tcx attach failed because the kernel has no tcx (before Linux 6.6 the attach
/// type is unknown to `BPF_LINK_CREATE`).
fn tcx_unsupported(e: &ProgramError) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(e, ProgramError::SyscallError(s) if matches!(
        s.io_error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | ENOTSUPP)
    ))
}

/// Attaches the egress program to `iface` as `request` says: with tcx (after any program
/// already there), its link pinned at `pin`, or through a clsact filter, or (auto) tcx
/// falling back to clsact on a kernel without tcx, and clsact where portfw's clsact filter
/// is already there.
fn attach_egress(
    program: &mut SchedClassifier,
    iface: &str,
    pin: &Path,
    request: EgressAttach,
    qdisc_ours: bool,
) -> Result<Egress, LoaderError> {
    // Under auto, portfw's clsact filter already there (from a kernel without tcx, or an
    // operator's choice) is replaced in place rather than swapped for a tcx link.
    if request == EgressAttach::Clsact
        || (request == EgressAttach::Auto && portfw_filter_present(iface))
    {
        return attach_clsact(program, iface, qdisc_ours);
    }
    let failed = refused(iface, "tcx egress");
    let link_id = match program.attach_with_options(
        iface,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    ) {
        Ok(id) => id,
        Err(e) if request == EgressAttach::Auto && tcx_unsupported(&e) => {
            return attach_clsact(program, iface, qdisc_ours);
        }
        Err(e) => {
            return Err(failed(
                "the kernel refused the tcx egress link that records the host's flows \
                 (tcx needs Linux 6.6 or newer)"
                    .into(),
                Some(e),
            ));
        }
    };
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
    Ok(Egress::Tcx)
}

/// Whether `iface` has portfw's filter on its clsact egress hook; `false` when that cannot
/// be asked.
fn portfw_filter_present(iface: &str) -> bool {
    ifindex(iface).is_ok_and(portfw_filter_on)
}

/// Attaches the egress program to `iface` as a direct-action filter on its clsact qdisc
/// (added when missing) at portfw's priority and handle. portfw's filter already there (an
/// earlier program's) is replaced in one netlink change, so that something records the
/// host's flows throughout. `qdisc_ours`: portfw's records say it added the interface's
/// clsact qdisc.
fn attach_clsact(
    program: &mut SchedClassifier,
    iface: &str,
    qdisc_ours: bool,
) -> Result<Egress, LoaderError> {
    let failed = refused(iface, "clsact egress");
    let index = ifindex(iface)?;
    let asking = || format!("listing the clsact egress filters of {iface}");
    let present = tc::filters(index, Hook::Egress)
        .map_err(io_err(asking()))?
        .into_iter()
        .find(at_portfw_place);
    let (link_id, created_qdisc) = match present {
        Some(filter) if is_portfw_filter(&filter) => {
            let link = our_clsact_filter(iface)?;
            let id = program.attach_to_link(link).map_err(|e| {
                failed(
                    "the kernel refused to replace portfw's clsact egress filter".into(),
                    Some(e),
                )
            })?;
            (id, qdisc_ours)
        }
        Some(filter) => {
            return Err(LoaderError::ClsactTaken {
                iface: iface.to_string(),
                priority: CLSACT_PRIORITY,
                handle: CLSACT_HANDLE,
                holder: match (&filter.name, filter.program_id) {
                    (Some(name), Some(id)) if !name.is_empty() => {
                        format!("{} filter {name}, program {id}", filter.kind)
                    }
                    _ => format!("a {} filter", filter.kind),
                },
            });
        }
        None => {
            // A qdisc portfw added earlier (its filter went missing) is still portfw's.
            let created = if tc::has_clsact(index).map_err(io_err(asking()))? {
                qdisc_ours
            } else {
                match qdisc_add_clsact(iface) {
                    Ok(()) => true,
                    // Added meanwhile by someone else: theirs.
                    Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                        false
                    }
                    Err(e) => {
                        return Err(failed(
                            "the kernel refused to add a clsact qdisc".into(),
                            Some(e.into()),
                        ));
                    }
                }
            };
            let attached = program.attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: CLSACT_PRIORITY,
                    handle: TcHandle::from(CLSACT_HANDLE),
                    classid: None,
                }),
            );
            match attached {
                Ok(id) => (id, created),
                Err(e) => {
                    if created {
                        let _ = tc::delete_clsact(index);
                    }
                    return Err(failed(
                        "the kernel refused the clsact egress filter that records the host's \
                         flows"
                            .into(),
                        Some(e),
                    ));
                }
            }
        }
    };
    let link = program
        .take_link(link_id)
        .map_err(program_err("taking the clsact filter"))?;
    // The filter outlives this command as long as its qdisc: dropping the link would detach
    // it, and it holds no resource (an interface, a priority and a handle).
    std::mem::forget(link);
    let program_id = program
        .info()
        .map_err(program_err("asking the egress program's id"))?
        .id();
    Ok(Egress::Clsact {
        priority: CLSACT_PRIORITY,
        handle: CLSACT_HANDLE,
        program_id,
        created_qdisc,
    })
}

/// Removes portfw's filter at portfw's priority and handle from the clsact egress hook of
/// `iface` (index `index`), if there is one, and then the qdisc when `qdisc_ours` (portfw
/// added it) and it holds no other filter. Filters that are not portfw's stay, and so does
/// a qdisc that holds any.
pub(super) fn remove_clsact_filter(
    iface: &str,
    index: u32,
    qdisc_ours: bool,
) -> Result<(), LoaderError> {
    // Gone, or another device under the name now: its filters went with it.
    if ifindex(iface).ok() != Some(index) {
        return Ok(());
    }
    let asking = || format!("listing the clsact filters of {iface}");
    let egress = tc::filters(index, Hook::Egress).map_err(io_err(asking()))?;
    if egress
        .iter()
        .any(|f| at_portfw_place(f) && is_portfw_filter(f))
    {
        let link = our_clsact_filter(iface)?;
        aya::programs::links::Link::detach(link).map_err(program_err(format!(
            "removing portfw's clsact egress filter from {iface}"
        )))?;
    }
    if qdisc_ours && tc::has_clsact(index).map_err(io_err(asking()))? {
        let others = tc::filters(index, Hook::Egress)
            .map_err(io_err(asking()))?
            .len()
            + tc::filters(index, Hook::Ingress)
                .map_err(io_err(asking()))?
                .len();
        if others == 0 {
            tc::delete_clsact(index).map_err(io_err(format!(
                "removing the clsact qdisc portfw added to {iface}"
            )))?;
        }
    }
    Ok(())
}

/// Detaches the egress program of `attachment`: its tcx link's pin in `paths`, or its
/// clsact filter (and the qdisc, if portfw made it and nothing else uses it).
pub(super) fn detach_egress(paths: &Paths, attachment: &Attachment) -> Result<(), LoaderError> {
    unpin_link(&paths.egress_link(&attachment.iface))?;
    if attachment.egress.mode() == EgressMode::Clsact {
        remove_clsact_filter(
            &attachment.iface,
            attachment.ifindex,
            attachment.egress.created_qdisc(),
        )?;
    }
    Ok(())
}

/// Removes portfw's clsact filters from the interfaces of this namespace that `recorded`
/// does not list: a fresh apply killed after attaching leaves them, and no pin holds them.
/// Their qdiscs stay (whether portfw added them went unrecorded). Returns the interfaces.
pub(super) fn remove_unrecorded_clsact_filters(recorded: &[Attachment]) -> Vec<String> {
    let mut removed = Vec::new();
    for (index, name) in interfaces() {
        if recorded
            .iter()
            .any(|a| a.iface == name && a.egress.mode() == EgressMode::Clsact)
        {
            continue;
        }
        if portfw_filter_on(index) && remove_clsact_filter(&name, index, false).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Whether portfw created the clsact qdisc of `iface`, as `attachments` record it.
pub(super) fn qdisc_ours(attachments: &[Attachment], iface: &str) -> bool {
    attachments
        .iter()
        .any(|a| a.iface == iface && a.egress.created_qdisc())
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
                    egress: Egress::Tcx,
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

/// Attaches the pinned programs of the filter at `paths` to `iface`, pinning the links;
/// `qdisc_ours` as for [`attach_interface`].
pub(super) fn attach_pinned(
    paths: &Paths,
    iface: &str,
    mode: Mode,
    qdisc_ours: bool,
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
        (&paths.link(iface), &paths.egress_link(iface)),
        qdisc_ours,
    )
}

#[cfg(test)]
mod tests {
    use super::{EgressAttach, EgressMode};
    use crate::loader::LoaderError;

    #[test]
    fn the_egress_attach_variable_names_three_modes_and_refuses_the_rest() {
        assert_eq!(EgressAttach::parse("auto").ok(), Some(EgressAttach::Auto));
        assert_eq!(EgressAttach::parse("").ok(), Some(EgressAttach::Auto));
        assert_eq!(EgressAttach::parse("tcx").ok(), Some(EgressAttach::Tcx));
        assert_eq!(
            EgressAttach::parse("clsact").ok(),
            Some(EgressAttach::Clsact)
        );
        let Err(e @ LoaderError::EgressAttachEnv { .. }) = EgressAttach::parse("TCX") else {
            panic!("an unknown mode must be refused");
        };
        let message = e.to_string();
        assert!(
            message.contains("PORTFW_EGRESS_ATTACH=\"TCX\""),
            "{message}"
        );
        assert!(EgressAttach::Auto.accepts(EgressMode::Clsact));
        assert!(EgressAttach::Auto.accepts(EgressMode::Tcx));
        assert!(!EgressAttach::Tcx.accepts(EgressMode::Clsact));
        assert!(!EgressAttach::Clsact.accepts(EgressMode::Tcx));
    }

    #[test]
    fn auto_falls_back_only_when_the_kernel_does_not_know_tcx() {
        let refused = |errno| {
            super::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_mprog_attach",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, 524] {
            assert!(super::tcx_unsupported(&refused(errno)), "errno {errno}");
        }
        // Refusals that clsact would meet as well (no permission, no memory) are reported.
        for errno in [libc::EPERM, libc::ENOMEM, libc::EBUSY] {
            assert!(!super::tcx_unsupported(&refused(errno)), "errno {errno}");
        }
    }
}
