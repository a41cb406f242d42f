//! `portfw events`: stream the running filter's drop and allow events.
use std::{
    fs,
    io::{self, Write as _},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use portfw_common::{Event, GENERATIONS};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::Instant,
};

use super::{EXIT_OK, EventsArgs};
use crate::{
    events::{decode, human_line, mono_to_wall_offset},
    loader::{self, Paths, State},
};

/// The rule names of each generation's policy, as `apply` recorded them.
#[derive(Debug, Default, PartialEq, Eq)]
struct NamesByGeneration([Vec<Option<String>>; GENERATIONS as usize]);

impl NamesByGeneration {
    fn from_state(state: &State) -> Self {
        Self(std::array::from_fn(|generation| {
            state
                .record(generation as u32)
                .map(|p| p.rules.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default()
        }))
    }

    /// The name of rule `index` (0-based) of the policy loaded into `generation`.
    fn get(&self, generation: u8, index: u32) -> Option<String> {
        self.0
            .get(usize::from(generation))?
            .get(index as usize)
            .cloned()
            .flatten()
    }
}

/// Rule names by generation, re-read when the state file changes (a new apply). An event
/// names the generation that judged its packet, so events still buffered when a new policy
/// goes in are labelled from the policy that decided them. Only a generation that was
/// rewritten twice (two applies) before its events were read is labelled from the newer
/// policy: the state keeps one record per generation.
struct RuleNames {
    paths: Paths,
    modified: Option<SystemTime>,
    names: NamesByGeneration,
}

impl RuleNames {
    fn new(paths: Paths) -> Self {
        let mut names = Self {
            paths,
            modified: None,
            names: NamesByGeneration::default(),
        };
        names.refresh();
        names
    }

    fn refresh(&mut self) {
        let modified = fs::metadata(&self.paths.state)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.modified {
            return;
        }
        self.modified = modified;
        self.names = State::read(&self.paths.state)
            .ok()
            .flatten()
            .map(|state| NamesByGeneration::from_state(&state))
            .unwrap_or_default();
    }

    fn get(&self, generation: u8, index: u32) -> Option<String> {
        self.names.get(generation, index)
    }
}

/// Interface names by index. Resolving one costs a socket and an ioctl, which at event rates
/// was most of the reader's time; names are re-resolved each second in case an interface was
/// renamed or replaced.
#[derive(Default)]
struct IfNames {
    names: std::collections::HashMap<u32, (Option<String>, std::time::Instant)>,
}

impl IfNames {
    fn name(&mut self, index: u32) -> Option<String> {
        let now = std::time::Instant::now();
        let fresh = |at: &std::time::Instant| now.duration_since(*at) < Duration::from_secs(1);
        if let Some((name, at)) = self.names.get(&index)
            && fresh(at)
        {
            return name.clone();
        }
        let name = loader::ifname(index);
        self.names.insert(index, (name.clone(), now));
        name
    }
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(stream(args))
}

async fn stream(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let (ring, paths) = loader::open_events()?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let offset = mono_to_wall_offset();
    let mut rules = RuleNames::new(paths);
    let mut ifnames = IfNames::default();
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let deadline = args
        .timeout
        .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
    let never = Instant::now() + Duration::from_secs(100 * 365 * 86400);
    let mut seen = 0u64;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if args.count == Some(0) {
        return Ok(ExitCode::from(EXIT_OK));
    }

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep_until(deadline.unwrap_or(never)) => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                rules.refresh();
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() < size_of::<Event>() {
                        continue;
                    }
                    // SAFETY: the record is at least as long as an Event, which is plain data;
                    // read_unaligned makes no alignment assumption.
                    let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    drop(item);
                    let iface = ifnames.name(event.ifindex);
                    let view = decode(
                        &event,
                        offset,
                        |_| iface.clone(),
                        |i| rules.get(event.generation, i),
                    );
                    let line = if args.json {
                        serde_json::to_string(&view)?
                    } else {
                        human_line(&view)
                    };
                    if writeln!(out, "{line}").is_err() {
                        // The reader went away (for example `| head`): stop quietly.
                        return Ok(ExitCode::from(EXIT_OK));
                    }
                    seen += 1;
                    if args.count.is_some_and(|n| seen >= n) {
                        let _ = out.flush();
                        return Ok(ExitCode::from(EXIT_OK));
                    }
                }
                guard.clear_ready();
                if out.flush().is_err() {
                    return Ok(ExitCode::from(EXIT_OK));
                }
            }
        }
    }
    let _ = out.flush();
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{PolicyRecord, RuleRecord};

    fn record(names: &[Option<&str>]) -> PolicyRecord {
        PolicyRecord {
            file: "/etc/portfw/p.yaml".into(),
            sha256: String::new(),
            applied_at: 0,
            default: "drop".into(),
            rules: names
                .iter()
                .map(|name| RuleRecord {
                    name: name.map(str::to_owned),
                    summary: String::new(),
                    line: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn each_event_is_named_from_the_generation_that_judged_it() {
        let state = State {
            generations: [
                Some(record(&[Some("ssh"), None, Some("web")])),
                Some(record(&[Some("dns"), Some("web")])),
            ],
            ..State::default()
        };
        let names = NamesByGeneration::from_state(&state);
        assert_eq!(names.get(0, 0).as_deref(), Some("ssh"));
        assert_eq!(names.get(1, 0).as_deref(), Some("dns"));
        assert_eq!(names.get(0, 2).as_deref(), Some("web"));
        assert_eq!(names.get(1, 1).as_deref(), Some("web"));
        // An unnamed rule, a rule past the end, and a generation that does not exist.
        assert_eq!(names.get(0, 1), None);
        assert_eq!(names.get(1, 2), None);
        assert_eq!(names.get(2, 0), None);
        assert_eq!(names.get(u8::MAX, 0), None);
    }

    #[test]
    fn a_generation_not_on_file_has_no_names() {
        let state = State {
            generations: [None, Some(record(&[Some("dns")]))],
            ..State::default()
        };
        let names = NamesByGeneration::from_state(&state);
        assert_eq!(names.get(0, 0), None);
        assert_eq!(names.get(1, 0).as_deref(), Some("dns"));
        assert_eq!(NamesByGeneration::default().get(1, 0), None);
    }
}
