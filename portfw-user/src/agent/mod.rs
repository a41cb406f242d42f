//! `portfw agent`: the long-running keeper of one network namespace's filter.
//!
//! One event loop waits on signals, the file watcher and a one-second tick; the keeper
//! (`keeper`) does the work, with the loader, and logs each event (`log`). The metrics
//! endpoint (`http`, `metrics`) runs on a thread of its own and reads the pinned maps at
//! scrape time. Stopping the agent never touches the filter: the pins keep it in force.
//!
//! Single-packet knocks (`spa`) are one more source in the loop's `select!`: tasks reading
//! the SPA doors' UDP sockets hand each datagram to the loop, which checks it and opens its
//! door in the pinned door table. They follow the doors of the policy in force, and share
//! [`Shared`] with the metrics for their counts.
mod http;
mod keeper;
pub mod log;
pub mod metrics;
mod spa;
mod watch;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::Instant,
};

use crate::loader::Mode;

/// How long the agent waits after the last change in a watched directory before it reads
/// the policy: an editor's save is often several events (truncate, write, rename).
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest a stream of changes can delay reading the policy.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// How often the agent looks at the interfaces, the policy's files, and a pending trial.
const TICK: Duration = Duration::from_secs(1);

/// What the agent was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    pub policy: Option<PathBuf>,
    pub ifaces: Vec<String>,
    pub mode: Mode,
    pub metrics_listen: Option<SocketAddr>,
}

/// What the event loop tells the metrics endpoint.
#[derive(Debug, Default)]
pub struct Shared {
    /// `--policy`, as given.
    policy_file: Option<String>,
    /// The interfaces the agent keeps filtered.
    wanted: Mutex<Vec<String>>,
    /// The SHA-256 of the policy file's content when it was last found valid.
    expected: Mutex<Option<String>>,
    /// The policy file's current content was refused.
    refused: AtomicBool,
    refusals: AtomicU64,
    applies: AtomicU64,
    /// Single-packet knocks, by outcome.
    spa: metrics::SpaCounters,
    /// What one scrape leaves for the next.
    scrape: Mutex<metrics::ScrapeCache>,
}

impl Shared {
    fn lock_wanted(&self) -> MutexGuard<'_, Vec<String>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_expected(&self) -> MutexGuard<'_, Option<String>> {
        self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_scrape(&self) -> MutexGuard<'_, metrics::ScrapeCache> {
        self.scrape.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which SPA doors the knock listener serves: the kept policy's once applied, or the
/// running filter's.
#[derive(Default)]
struct Doors {
    /// Policies applied when last synced: a new apply reads the key files again.
    applies: u64,
    running: spa::RunningDoors,
}

impl Doors {
    fn sync(&mut self, keeper: &keeper::Keeper, knocks: &mut spa::Listener, shared: &Shared) {
        let applies = shared.applies.load(std::sync::atomic::Ordering::Relaxed);
        let fresh = applies != self.applies;
        self.applies = applies;
        match keeper.doors() {
            Some(doors) => knocks.configure(spa::SpaDoor::of(doors), fresh),
            None => {
                if let Some(doors) = self.running.refresh() {
                    knocks.configure(doors, true);
                }
            }
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        policy_file: config.policy.as_ref().map(|p| p.display().to_string()),
        wanted: Mutex::new(config.ifaces.clone()),
        ..Shared::default()
    });
    log::info(
        "starting",
        &[
            ("version", &env!("CARGO_PKG_VERSION")),
            (
                "policy",
                &shared.policy_file.clone().unwrap_or_else(|| "-".into()),
            ),
            ("ifaces", &config.ifaces.join(",")),
            (
                "metrics",
                &config
                    .metrics_listen
                    .map_or_else(|| "-".to_string(), |a| a.to_string()),
            ),
        ],
    );
    if let Some(addr) = config.metrics_listen {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listening for metrics on {addr}"))?;
        http::spawn(listener, shared.clone())?;
        log::info(
            "serving metrics",
            &[
                ("url", &format!("http://{addr}/metrics")),
                ("ready", &format!("http://{addr}/ready")),
            ],
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(event_loop(config, shared))
}

async fn event_loop(config: Config, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let (wake_tx, mut wake) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match &config.policy {
        Some(_) => Some(watch::Watcher::new(wake_tx)?),
        None => None,
    };
    let mut keeper = keeper::Keeper::new(&config, shared.clone());
    keeper.start();
    let rewatch = |watcher: &mut Option<watch::Watcher>, keeper: &keeper::Keeper| {
        if let Some(w) = watcher {
            for problem in w.watch_files(&keeper.inputs()) {
                log::warn(&problem, &[]);
            }
        }
    };
    rewatch(&mut watcher, &keeper);
    let (mut knocks, mut datagrams) = spa::Listener::new(shared.clone());
    let mut doors = Doors::default();
    doors.sync(&keeper, &mut knocks, &shared);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first event of a burst, and when to read the files.
    let mut burst: Option<(Instant, Instant)> = None;
    let far = Instant::now() + Duration::from_secs(10 * 365 * 86400);
    let stop = loop {
        let read_at = burst.map_or(far, |(_, at)| at);
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                log::info("SIGHUP: reading the policy again", &[]);
                keeper.examine(true);
                rewatch(&mut watcher, &keeper);
                doors.sync(&keeper, &mut knocks, &shared);
            }
            Some(datagram) = datagrams.recv() => knocks.handle(datagram),
            Some(()) = wake.recv() => {
                let now = Instant::now();
                let first = burst.map_or(now, |(first, _)| first);
                burst = Some((first, (now + DEBOUNCE).min(first + DEBOUNCE_MAX)));
            }
            _ = tokio::time::sleep_until(read_at), if burst.is_some() => {
                burst = None;
                keeper.examine(false);
                rewatch(&mut watcher, &keeper);
                doors.sync(&keeper, &mut knocks, &shared);
            }
            _ = tick.tick() => {
                keeper.tick();
                rewatch(&mut watcher, &keeper);
                doors.sync(&keeper, &mut knocks, &shared);
                knocks.tick();
            }
        }
    };
    log::info(
        &format!("stopping on {stop}; the filter stays in force"),
        &[],
    );
    Ok(())
}
