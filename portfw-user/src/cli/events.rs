//! `portfw events`: stream the running filter's drop and allow events, with the kernel's
//! aggregated counts, the events its rate cap suppressed, and the quiet keys it still held.
use std::{
    fs,
    io::{self, Write},
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
    events::{
        SuppressedSummary, decode, flushed_event, human_line, mono_to_wall_offset,
        pinned::{Aggregation, Suppressed, active_generation, log_rate},
    },
    loader::{self, Paths, State, monotonic_ns},
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

/// How often quiet aggregation keys are flushed and suppressed events summed up.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Whether to go on reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// `--count` reached, or the reader of our output went away.
    Stop,
}

/// Everything that turns kernel records into lines.
struct Printer<W: Write> {
    out: W,
    json: bool,
    offset: i128,
    rules: RuleNames,
    ifnames: IfNames,
    suppressed: Suppressed,
    /// Suppressed packets read from the counter and not yet reported.
    unreported: u64,
    aggregation: Aggregation,
    paths: Paths,
    /// Records printed, against `--count`.
    seen: u64,
    count: Option<u64>,
}

impl<W: Write> Printer<W> {
    fn write(&mut self, line: &str) -> Flow {
        if writeln!(self.out, "{line}").is_err() {
            // The reader went away (for example `| head`): stop quietly.
            return Flow::Stop;
        }
        self.seen += 1;
        if self.count.is_some_and(|n| self.seen >= n) {
            let _ = self.out.flush();
            return Flow::Stop;
        }
        Flow::Go
    }

    /// Reads the suppressed counter's growth into `unreported`.
    fn read_suppressed(&mut self) {
        self.unreported = self.unreported.saturating_add(self.suppressed.take());
    }

    fn event(&mut self, event: &Event, flushed: bool) -> anyhow::Result<Flow> {
        let iface = if flushed {
            None
        } else {
            self.ifnames.name(event.ifindex)
        };
        let rules = &self.rules;
        let mut view = decode(
            event,
            self.offset,
            |_| iface.clone(),
            |i| rules.get(event.generation, i),
        );
        if flushed {
            view.mark_flushed();
        }
        if self.unreported > 0 {
            view.suppressed = Some(std::mem::take(&mut self.unreported));
        }
        let line = if self.json {
            serde_json::to_string(&view)?
        } else {
            human_line(&view)
        };
        Ok(self.write(&line))
    }

    /// Once a second, and when stopping (`all`): flushes the aggregation keys gone quiet
    /// (all that hold packets, when stopping), then reports what was suppressed and no event
    /// carried.
    fn flush(&mut self, all: bool) -> anyhow::Result<Flow> {
        self.read_suppressed();
        if self.aggregation.exists() {
            let now = monotonic_ns();
            let flushed = self.aggregation.flush(now, all);
            if !flushed.is_empty() {
                self.rules.refresh();
                let generation = active_generation(&self.paths).unwrap_or(0);
                // A flushed event is an event under `log-limit` like the kernel's: one round
                // (a second) prints at most the cap's worth, and the rest are counted as
                // suppressed, so that many keys going quiet at once stay a bounded stream.
                let mut budget = log_rate(&self.paths).unwrap_or(u64::MAX);
                for f in flushed {
                    if budget == 0 {
                        self.unreported = self.unreported.saturating_add(u64::from(f.pending));
                        continue;
                    }
                    budget -= 1;
                    let event = flushed_event(&f.key, f.pending, now, generation);
                    if self.event(&event, true)? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                }
            }
        }
        if self.unreported > 0 {
            let time_ns = (i128::from(monotonic_ns()) + self.offset).max(0) as u64;
            let summary = SuppressedSummary::new(time_ns, std::mem::take(&mut self.unreported));
            let line = if self.json {
                serde_json::to_string(&summary)?
            } else {
                summary.human_line()
            };
            if self.write(&line) == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        Ok(if self.out.flush().is_err() {
            Flow::Stop
        } else {
            Flow::Go
        })
    }
}

async fn stream(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let (ring, paths) = loader::open_events()?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let deadline = args
        .timeout
        .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
    let never = Instant::now() + Duration::from_secs(100 * 365 * 86400);
    if args.count == Some(0) {
        return Ok(ExitCode::from(EXIT_OK));
    }
    let mut printer = Printer {
        out: io::BufWriter::new(io::stdout().lock()),
        json: args.json,
        offset: mono_to_wall_offset(),
        rules: RuleNames::new(paths.clone()),
        ifnames: IfNames::default(),
        suppressed: Suppressed::open(&paths),
        unreported: 0,
        aggregation: Aggregation::open(&paths),
        paths,
        seen: 0,
        count: args.count,
    };
    let mut flush = tokio::time::interval_at(Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep_until(deadline.unwrap_or(never)) => break,
            _ = flush.tick() => {
                if printer.flush(false)? == Flow::Stop {
                    return Ok(ExitCode::from(EXIT_OK));
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                printer.rules.refresh();
                // Once per batch rather than per event: the growth rides on the batch's
                // first event.
                printer.read_suppressed();
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() < size_of::<Event>() {
                        continue;
                    }
                    // SAFETY: the record is at least as long as an Event, which is plain data;
                    // read_unaligned makes no alignment assumption.
                    let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    drop(item);
                    if printer.event(&event, false)? == Flow::Stop {
                        return Ok(ExitCode::from(EXIT_OK));
                    }
                }
                guard.clear_ready();
                if printer.out.flush().is_err() {
                    return Ok(ExitCode::from(EXIT_OK));
                }
            }
        }
    }
    // What is still pending in the kernel, and suppressed, is reported before leaving, so
    // that the counts and suppressed totals of a run add up to the packets logged.
    printer.flush(true)?;
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
