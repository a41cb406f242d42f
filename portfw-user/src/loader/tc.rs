//! The clsact side of TC, asked over rtnetlink: which filters an interface's clsact hooks
//! hold and what they run, whether it has a clsact qdisc, and removing that qdisc. aya 0.14
//! adds the qdisc and attaches, replaces and detaches filters, but lists them only by name
//! and only inside the crate, and cannot remove the qdisc.
use std::io;

use aya_obj::generated::{
    TC_H_CLSACT, TC_H_MIN_EGRESS, TC_H_MIN_INGRESS, TCA_BPF_FLAG_ACT_DIRECT, TCA_BPF_FLAGS,
    TCA_BPF_ID, TCA_BPF_NAME, TCA_KIND, TCA_OPTIONS,
};

use super::netlink::{self, align4, message, u16_at, u32_at};

/// One of clsact's two hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> u32 {
        (TC_H_CLSACT & 0xffff_0000)
            | match self {
                Self::Ingress => TC_H_MIN_INGRESS,
                Self::Egress => TC_H_MIN_EGRESS,
            }
    }
}

/// A filter on a clsact hook, as the kernel lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The classifier (`bpf` for a BPF program).
    pub kind: String,
    /// A BPF filter's program name, as the loader gave it.
    pub name: Option<String>,
    /// A BPF filter's program id.
    pub program_id: Option<u32>,
    /// A BPF filter's program returns the verdict itself.
    pub direct_action: bool,
}

const TCMSG: usize = 20;
/// `struct nlattr`'s type bits, without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A request of `kind` with `flags` about a TC object of interface `ifindex`.
fn request(kind: u16, flags: u16, ifindex: u32, handle: u32, parent: u32) -> Vec<u8> {
    let mut tcmsg = Vec::with_capacity(TCMSG);
    // tcmsg: family (AF_UNSPEC) and padding, ifindex, handle, parent, info.
    tcmsg.extend_from_slice(&[0; 4]);
    tcmsg.extend_from_slice(&ifindex.to_ne_bytes());
    tcmsg.extend_from_slice(&handle.to_ne_bytes());
    tcmsg.extend_from_slice(&parent.to_ne_bytes());
    tcmsg.extend_from_slice(&0u32.to_ne_bytes());
    message(kind, flags, &tcmsg)
}

/// The attributes in `bytes`, as (type, payload).
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while let (Some(len), Some(kind)) = (u16_at(bytes, 0), u16_at(bytes, 2)) {
        let len = usize::from(len);
        let Some(payload) = bytes.get(4..len) else {
            break;
        };
        found.push((kind & NLA_TYPE_MASK, payload));
        bytes = bytes.get(align4(len)..).unwrap_or_default();
    }
    found
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One rtnetlink request and its replies of type `want`.
fn exchange(msg: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
    netlink::exchange(libc::NETLINK_ROUTE, msg, want)
}

/// The filters on `hook` of interface `ifindex` (none without a clsact qdisc).
pub(super) fn filters(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let msg = request(
        libc::RTM_GETTFILTER,
        libc::NLM_F_DUMP as u16,
        ifindex,
        0,
        hook.parent(),
    );
    let replies = match exchange(&msg, libc::RTM_NEWTFILTER) {
        Ok(replies) => replies,
        // No clsact qdisc, so no hook to list.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !has_clsact(ifindex)? => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for reply in replies {
        let (Some(index), Some(handle), Some(parent), Some(info)) = (
            u32_at(&reply, 4),
            u32_at(&reply, 8),
            u32_at(&reply, 12),
            u32_at(&reply, 16),
        ) else {
            continue;
        };
        // Handle 0 is the priority's classifier itself, not a filter in it.
        if index != ifindex || parent != hook.parent() || handle == 0 {
            continue;
        }
        let mut filter = Filter {
            priority: (info >> 16) as u16,
            handle,
            ..Filter::default()
        };
        for (kind, payload) in attributes(reply.get(TCMSG..).unwrap_or_default()) {
            if kind == TCA_KIND as u16 {
                filter.kind = c_string(payload);
            } else if kind == TCA_OPTIONS as u16 {
                for (option, value) in attributes(payload) {
                    if option == TCA_BPF_NAME as u16 {
                        filter.name = Some(c_string(value));
                    } else if option == TCA_BPF_ID as u16 {
                        filter.program_id = u32_at(value, 0);
                    } else if option == TCA_BPF_FLAGS as u16 {
                        filter.direct_action =
                            u32_at(value, 0).is_some_and(|f| f & TCA_BPF_FLAG_ACT_DIRECT != 0);
                    }
                }
            }
        }
        found.push(filter);
    }
    Ok(found)
}

/// The clsact qdisc's handle (`ffff:`).
const CLSACT_HANDLE: u32 = 0xffff_0000;

/// Whether interface `ifindex` has a clsact qdisc.
pub(super) fn has_clsact(ifindex: u32) -> io::Result<bool> {
    let msg = request(libc::RTM_GETQDISC, libc::NLM_F_DUMP as u16, ifindex, 0, 0);
    Ok(exchange(&msg, libc::RTM_NEWQDISC)?.iter().any(|reply| {
        u32_at(reply, 4) == Some(ifindex)
            && u32_at(reply, 12) == Some(TC_H_CLSACT)
            && attributes(reply.get(TCMSG..).unwrap_or_default())
                .iter()
                .any(|&(kind, value)| kind == TCA_KIND as u16 && c_string(value) == "clsact")
    }))
}

/// Removes the clsact qdisc of interface `ifindex`, and with it every filter it holds.
pub(super) fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let msg = request(
        libc::RTM_DELQDISC,
        libc::NLM_F_ACK as u16,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
    );
    exchange(&msg, libc::RTM_NEWQDISC).map(drop)
}

#[cfg(test)]
mod tests {
    use super::{Hook, align4, attributes, c_string};

    #[test]
    fn hooks_are_clsacts_minor_handles() {
        assert_eq!(Hook::Ingress.parent(), 0xffff_fff2);
        assert_eq!(Hook::Egress.parent(), 0xffff_fff3);
    }

    #[test]
    fn attributes_are_walked_at_four_byte_strides() {
        let mut bytes = Vec::new();
        // TCA_KIND "bpf\0" (len 8), then a nested attribute with a 1-byte payload (len 5,
        // padded to 8).
        bytes.extend_from_slice(&8u16.to_ne_bytes());
        bytes.extend_from_slice(&1u16.to_ne_bytes());
        bytes.extend_from_slice(b"bpf\0");
        bytes.extend_from_slice(&5u16.to_ne_bytes());
        bytes.extend_from_slice(&(2u16 | 0x8000).to_ne_bytes());
        bytes.extend_from_slice(&[7, 0, 0, 0]);
        let found = attributes(&bytes);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 1);
        assert_eq!(c_string(found[0].1), "bpf");
        assert_eq!(found[1], (2, &[7u8][..]));
        assert_eq!(align4(5), 8);
        // A length past the buffer ends the walk rather than reading beyond it.
        assert!(attributes(&[200, 0, 1, 0]).is_empty());
    }
}
