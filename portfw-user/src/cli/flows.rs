//! `portfw flows`: the flows the host opened, tracked for their replies.
use std::{
    io::{self, Write as _},
    process::ExitCode,
};

use super::{EXIT_OK, FlowsArgs};
use crate::loader;

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
            f.iface.as_deref().unwrap_or("-"),
        )?;
    }
    writeln!(
        out,
        "{} flow{}",
        flows.len(),
        if flows.len() == 1 { "" } else { "s" }
    )
}
