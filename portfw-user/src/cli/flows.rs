//! `portfw flows`: the flows the host opened, tracked for their replies.
use std::{
    io::{self, Write as _},
    process::ExitCode,
};

use super::{EXIT_OK, FlowsArgs};
use crate::{loader, policy::escape};

pub fn run(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    let flows = loader::flows()?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &flows)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out, &flows)
    };
    match written.and_then(|()| out.flush()) {
        // The reader went away (for example `| head`): not an error.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::from(EXIT_OK)),
    }
}

fn table(out: &mut impl io::Write, flows: &[loader::FlowRecord]) -> io::Result<()> {
    writeln!(
        out,
        "{:<7} {:<44} {:<44} {:<12} {:>9} {:>9}  iface",
        "proto", "local", "remote", "state", "age", "expires"
    )?;
    for f in flows {
        let local = match f.echo_id {
            Some(id) => format!("{} id {id}", f.local),
            None => f.local.clone(),
        };
        writeln!(
            out,
            "{:<7} {:<44} {:<44} {:<12} {:>8.0}s {:>8.0}s  {}",
            f.protocol,
            local,
            f.remote,
            f.state,
            f.age_s,
            f.expires_in_s,
            // Linux allows control characters in interface names.
            escape(f.iface.as_deref().unwrap_or("-")),
        )?;
    }
    writeln!(
        out,
        "{} flow{}",
        flows.len(),
        if flows.len() == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn interface_names_are_escaped() {
        let flow = loader::FlowRecord {
            protocol: "tcp".into(),
            local: "10.0.0.1:40000".into(),
            remote: "10.0.0.2:443".into(),
            local_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            local_port: Some(40000),
            remote_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            remote_port: Some(443),
            echo_id: None,
            state: "established",
            age_s: 1.0,
            expires_in_s: 2.0,
            iface: Some("ev\u{1b}[2J\u{7}".into()),
            ifindex: 9,
        };
        let mut out = Vec::new();
        table(&mut out, &[flow]).unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.contains("  ev\\u{1b}[2J\\u{7}\n"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
