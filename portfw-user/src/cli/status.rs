//! `portfw status`: what is loaded in this network namespace, and its counters.
use std::{
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{EXIT_ERROR, EXIT_NOT_FILTERED, EXIT_OK, StatusArgs};
use crate::{events::datetime, loader, policy::escape};

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = loader::status()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_text(&status);
    }
    for dir in &status.half_built {
        eprintln!(
            "portfw: an interrupted apply left a half-built filter in {}; run `portfw detach` \
             or apply again",
            dir.display()
        );
    }
    if !status.half_built.is_empty() {
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if args.check && !status.all_filtered() {
        let unfiltered: Vec<String> = status
            .attachments
            .iter()
            .filter(|a| !a.filtered)
            .map(|a| escape(&a.attachment.iface).to_string())
            .collect();
        eprintln!(
            "portfw: NOT FILTERED: {}; apply again",
            unfiltered.join(", ")
        );
        return Ok(ExitCode::from(EXIT_NOT_FILTERED));
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn print_text(status: &loader::Status) {
    println!(
        "portfw filter in network namespace {} (pins {})",
        status.netns,
        status.pins.display()
    );
    println!(
        "program id {}, policy generation {}",
        status.program_id, status.generation
    );
    if status.audit {
        println!(
            "enforce: false: AUDIT MODE, nothing is dropped; would-drops are counted and logged"
        );
    }
    if let Some(t) = &status.trial {
        print_trial(t);
    }
    if status.attachments.is_empty() {
        println!("interfaces: none");
    }
    // Names and paths are escaped: Linux allows control characters in interface names, and
    // the policy's file name and rule summaries come from the policy's author.
    for a in &status.attachments {
        println!(
            "interface {} (ifindex {}, {} mode, egress {}{}){}",
            escape(&a.attachment.iface),
            a.attachment.ifindex,
            a.attachment.mode,
            match a.attachment.egress {
                loader::Egress::Tcx => "tcx".to_string(),
                loader::Egress::Clsact {
                    priority, handle, ..
                } => format!("clsact filter priority {priority} handle {handle:#x}"),
            },
            match a.attachment.link {
                loader::Link::Ethernet => "",
                loader::Link::Ip => ", frames start at the IP header",
            },
            match &a.problem {
                None => String::new(),
                Some(problem) => format!(" NOT FILTERED: {}; apply again", escape(problem)),
            }
        );
    }
    match &status.policy {
        None => println!("policy: unknown (no record of the active generation)"),
        Some(p) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            println!("policy {} (sha256 {})", escape(&p.file), p.sha256);
            println!(
                "applied {} ({} ago), default {}",
                datetime(p.applied_at),
                ago(now.saturating_sub(p.applied_at)),
                p.default
            );
            if !p.rules.is_empty() {
                println!("{:>5}  {:>12}  {:<16}  rule", "#", "packets", "name");
            }
            for (i, rule) in p.rules.iter().enumerate() {
                println!(
                    "{:>5}  {:>12}  {:<16}  {} (line {})",
                    i + 1,
                    status.rule_hits.get(i).copied().unwrap_or(0),
                    escape(rule.name.as_deref().unwrap_or("-")),
                    escape(&rule.summary),
                    rule.line
                );
            }
        }
    }
    print_defences(status);
    let f = &status.flows;
    println!(
        "flows: {} live, {} entries of {} (replies {}); {} recorded since load, {} evicted",
        f.live,
        f.entries,
        f.max,
        if f.tracking {
            "allow"
        } else {
            "drop: not tracking"
        },
        f.created,
        f.evicted
    );
    println!("counters (packets since load):");
    for (name, value) in &status.counters {
        println!("  {name:<16} {value}");
    }
}

/// Blocks shown in text; `--json` lists them all.
const BLOCKS_SHOWN: usize = 100;

fn print_defences(status: &loader::Status) {
    if !status.host_except.is_empty() {
        println!(
            "scan guard: never blocks the {} addresses the host depends on (gateways, \
             nameservers, own addresses): {}",
            status.host_except.len(),
            status.host_except.join(", ")
        );
    }
    if !status.blocks.is_empty() {
        println!("blocked sources: {}", status.blocks.len());
        for b in status.blocks.iter().take(BLOCKS_SHOWN) {
            let until = match b.expires_in {
                None => "until `portfw unblock`".to_string(),
                Some(secs) => format!("expires in {}", ago(secs.ceil() as u64)),
            };
            println!("  {:<43} {:<7} {until}", b.address, b.reason);
        }
        if status.blocks.len() > BLOCKS_SHOWN {
            println!(
                "  ... and {} more (`portfw status --json` lists them all)",
                status.blocks.len() - BLOCKS_SHOWN
            );
        }
    }
    if !status.doors.is_empty() {
        println!("open knock doors: {}", status.doors.len());
        for d in &status.doors {
            println!(
                "  {:<16} for {:<39} closes in {}",
                // The door's name comes from the policy's author.
                escape(&d.door),
                d.source,
                ago(d.expires_in.ceil() as u64)
            );
        }
    }
}

fn print_trial(t: &loader::TrialStatus) {
    let rollback = match (t.rollback_to, &t.rollback_file) {
        (None, _) => "the filter is removed (there was none before the trial)".to_string(),
        (Some(g), Some(file)) => format!("generation {g} ({file}) is switched back in"),
        (Some(g), None) => format!("generation {g} is switched back in"),
    };
    if t.seconds_left > 0 {
        println!(
            "TRIAL: {} is on trial until {} ({} left); then {rollback}, unless `portfw confirm` \
             is run before",
            t.file,
            datetime(t.deadline),
            ago(t.seconds_left)
        );
    } else {
        println!(
            "TRIAL OVERDUE: the trial of {} expired at {}; its rollback ({rollback}) is due{}",
            t.file,
            datetime(t.deadline),
            if t.watchdog_alive {
                ""
            } else {
                ": the watchdog is gone, so the agent or the next `portfw apply` or \
                 `portfw confirm` performs it"
            }
        );
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86400, (secs % 86400) / 3600),
    }
}
