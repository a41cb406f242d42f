//! Single-packet knocks, the agent's side: a UDP socket on each SPA door's port (the XDP
//! program passes those datagrams to the stack), and for each datagram the checks, in
//! order (layout, door, HMAC, clock, replay), then the door opened for its source.
//!
//! Every outcome is counted (`portfw_spa_knocks_total{outcome}`) and logged; refusals are
//! logged at most [`REFUSALS_LOGGED_PER_TICK`] a second, so that a flood of junk at the port
//! cannot flood the journal (the rest are counted, and summed up in one line).
use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, Map, MapData};
use portfw_common::{DefenceMaps, DoorDef, MAX_DOORS, SPA_WINDOW_SECS, door_kind};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{Shared, log, metrics::SpaOutcome};
use crate::{
    compile::{self, DoorInfo},
    loader::{self, Paths},
    policy,
    spa::{Key, ReplayCache, SpaError, key::readable_by_others, packet, replay::Admission},
};

/// Refusals logged in one second at most.
pub const REFUSALS_LOGGED_PER_TICK: u32 = 20;
/// Datagrams waiting for the event loop: past it, the socket's own buffer fills and the
/// kernel drops the rest.
const QUEUE: usize = 256;
/// Bigger than any knock ([`packet::MAX_LEN`]), so a longer datagram shows as too long
/// rather than cut to a plausible size.
const RECV_BUFFER: usize = 1024;

/// One datagram at an SPA port.
#[derive(Debug)]
pub struct Datagram {
    /// The local port it arrived at.
    pub port: u16,
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// An SPA door of the policy in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaDoor {
    pub name: String,
    pub def: DoorDef,
    pub port: u16,
    pub key_file: PathBuf,
}

impl SpaDoor {
    /// The SPA doors among `doors`.
    pub fn of(doors: &[DoorInfo]) -> Vec<Self> {
        doors
            .iter()
            .filter(|d| d.def.kind == door_kind::SPA)
            .filter_map(|d| {
                let spa = d.spa.as_ref()?;
                Some(Self {
                    name: d.name.clone(),
                    def: d.def,
                    port: spa.port,
                    key_file: spa.key_file.clone(),
                })
            })
            .collect()
    }
}

/// The SPA doors of the filter running here, for an agent that keeps no policy file: those
/// of the policy file the running generation was applied from, as the kernel's door table
/// of that generation holds them (a door the file names but the kernel does not is left
/// out, so an edited file opens nothing the running policy does not have).
#[derive(Default)]
pub struct RunningDoors {
    stamp: Option<(u64, u64, i64, i64, u64)>,
    generation: Option<u32>,
}

impl RunningDoors {
    /// The running filter's SPA doors when the filter changed since the last call.
    pub fn refresh(&mut self) -> Option<Vec<SpaDoor>> {
        let paths = Paths::current().ok()?;
        let stamp = stamp(&paths.state);
        let running = loader::running_policy(&paths).ok();
        let generation = running.as_ref().map(|r| r.generation);
        if stamp == self.stamp && generation == self.generation {
            return None;
        }
        self.stamp = stamp;
        self.generation = generation;
        let Some(record) = running.as_ref().and_then(|r| r.policy.as_ref()) else {
            return Some(Vec::new());
        };
        let compiled = fs::read_to_string(&record.file)
            .ok()
            .and_then(|source| policy::parse(&source, &record.file).ok())
            .and_then(|parsed| compile::compile(&parsed.policy).ok());
        let Some(compiled) = compiled else {
            log::warn(
                "cannot read the running policy's file for its single-packet doors; they stay \
                 closed (give --policy)",
                &[("file", &record.file)],
            );
            return Some(Vec::new());
        };
        let kernel = kernel_doors(&paths, generation.unwrap_or(0));
        Some(
            SpaDoor::of(&compiled.doors)
                .into_iter()
                .filter_map(|mut door| {
                    let def = kernel
                        .iter()
                        .find(|k| k.id == door.def.id && k.kind == door_kind::SPA)?;
                    door.def = *def;
                    Some(door)
                })
                .collect(),
        )
    }
}

/// The door definitions of `generation` in the kernel (none from an older kernel object).
fn kernel_doors(paths: &Paths, generation: u32) -> Vec<DoorDef> {
    let Some(defs) = MapData::from_pin(paths.map(DefenceMaps::DOOR_DEFS))
        .ok()
        .and_then(|data| Array::<MapData, DoorDef>::try_from(Map::Array(data)).ok())
    else {
        return Vec::new();
    };
    (0..MAX_DOORS)
        .filter_map(|d| defs.get(&(generation * MAX_DOORS + d), 0).ok())
        .filter(|def| def.kind != 0)
        .collect()
}

/// Why a knock opened nothing.
#[derive(Debug)]
pub struct Refusal {
    pub outcome: SpaOutcome,
    pub door: Option<String>,
    pub why: String,
}

impl Refusal {
    fn new(outcome: SpaOutcome, door: Option<&SpaDoor>, why: impl Into<String>) -> Self {
        Self {
            outcome,
            door: door.map(|d| d.name.clone()),
            why: why.into(),
        }
    }
}

/// A key file as last read: its stat, and the key or why there is none.
type Cached = (Option<(u64, u64, i64, i64, u64)>, Result<Key, String>);

fn stamp(path: &Path) -> Option<(u64, u64, i64, i64, u64)> {
    fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// The checks, without sockets or kernel maps.
#[derive(Debug)]
pub struct Verifier {
    doors: Vec<SpaDoor>,
    keys: HashMap<PathBuf, Cached>,
    replay: ReplayCache,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            doors: Vec::new(),
            keys: HashMap::new(),
            replay: ReplayCache::new(2 * SPA_WINDOW_SECS),
        }
    }
}

impl Verifier {
    /// Takes the doors of a newly applied policy; its key files are read afresh.
    pub fn set_doors(&mut self, doors: Vec<SpaDoor>) {
        self.doors = doors;
        self.keys.clear();
    }

    /// The door's key, read again when the file changed.
    fn key(&mut self, door: &SpaDoor) -> Result<Key, String> {
        let now = stamp(&door.key_file);
        if let Some((at, key)) = self.keys.get(&door.key_file)
            && *at == now
            && now.is_some()
        {
            return key.clone();
        }
        let key = Key::read(&door.key_file).map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        if key.is_ok() && readable_by_others(&door.key_file) {
            log::warn(
                "the knock key file can be read by others than its owner; chmod 600 it",
                &[("door", &door.name), ("key_file", &door.key_file.display())],
            );
        }
        self.keys.insert(door.key_file.clone(), (now, key.clone()));
        key
    }

    /// Checks a datagram that arrived at `port` at `now` (UNIX seconds): the door it may
    /// open, or why not. An accepted knock's nonce is remembered.
    pub fn check(&mut self, port: u16, bytes: &[u8], now: u64) -> Result<SpaDoor, Refusal> {
        let parsed = packet::parse(bytes)
            .map_err(|e| Refusal::new(SpaOutcome::Malformed, None, e.to_string()))?;
        let name = String::from_utf8_lossy(&parsed.knock.door).into_owned();
        let Some(door) = self
            .doors
            .iter()
            .find(|d| d.port == port && d.name.as_bytes() == parsed.knock.door.as_slice())
            .cloned()
        else {
            return Err(Refusal {
                outcome: SpaOutcome::UnknownDoor,
                door: Some(name),
                why: format!("no single-packet door of that name on port {port}/udp"),
            });
        };
        let key = self
            .key(&door)
            .map_err(|why| Refusal::new(SpaOutcome::Failed, Some(&door), why))?;
        let refuse = |outcome, e: SpaError| Refusal::new(outcome, Some(&door), e.to_string());
        parsed
            .verify(&key)
            .map_err(|e| refuse(SpaOutcome::BadMac, e))?;
        packet::check_clock(parsed.knock.timestamp, now, SPA_WINDOW_SECS)
            .map_err(|e| refuse(SpaOutcome::Stale, e))?;
        match self
            .replay
            .admit(parsed.knock.nonce, parsed.knock.timestamp, now)
        {
            Admission::New => Ok(door),
            Admission::Replay => Err(refuse(SpaOutcome::Replay, SpaError::Replay)),
            Admission::Full => Err(Refusal::new(
                SpaOutcome::Failed,
                Some(&door),
                "the replay cache is full of recent knocks; refused to be safe",
            )),
        }
    }
}

/// The sockets of one port and the tasks reading them.
struct Bound {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The agent's single-packet knock listener.
pub struct Listener {
    verifier: Verifier,
    bound: HashMap<u16, Bound>,
    /// Ports that could not be bound, with why, logged once and tried again each tick.
    unbound: HashMap<u16, String>,
    tx: mpsc::Sender<Datagram>,
    shared: Arc<Shared>,
    paths: Option<Paths>,
    logged: u32,
    unlogged: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Binds `port` on every address: `[::]` (dual-stack, so IPv4 too), and `0.0.0.0` as well,
/// which fails harmlessly when the first already took IPv4 and covers IPv4 alone where
/// IPv6 is disabled or bound v6-only.
fn bind(port: u16) -> Result<Vec<tokio::net::UdpSocket>, String> {
    let mut sockets = Vec::new();
    let mut problems = Vec::new();
    for addr in [
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
    ] {
        let socket = std::net::UdpSocket::bind(addr).and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        });
        match socket {
            Ok(socket) => sockets.push(socket),
            Err(e) => problems.push(format!("{addr}: {e}")),
        }
    }
    if sockets.is_empty() {
        Err(problems.join("; "))
    } else {
        Ok(sockets)
    }
}

impl Listener {
    pub fn new(shared: Arc<Shared>) -> (Self, mpsc::Receiver<Datagram>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Self {
                verifier: Verifier::default(),
                bound: HashMap::new(),
                unbound: HashMap::new(),
                tx,
                shared,
                paths: None,
                logged: 0,
                unlogged: 0,
            },
            rx,
        )
    }

    /// Follows the policy in force: listens on its SPA doors' ports (and no others). `fresh`:
    /// a policy was applied (again), so the key files are read again.
    pub fn configure(&mut self, doors: Vec<SpaDoor>, fresh: bool) {
        if !fresh && doors == self.verifier.doors {
            return;
        }
        if doors != self.verifier.doors {
            let names: Vec<String> = doors
                .iter()
                .map(|d| format!("{}@{}/udp", d.name, d.port))
                .collect();
            if !names.is_empty() || !self.verifier.doors.is_empty() {
                log::info(
                    "single-packet knock doors",
                    &[(
                        "doors",
                        &if names.is_empty() {
                            "-".to_string()
                        } else {
                            names.join(",")
                        },
                    )],
                );
            }
        }
        self.verifier.set_doors(doors);
        let wanted: Vec<u16> = self.verifier.doors.iter().map(|d| d.port).collect();
        self.bound.retain(|port, _| wanted.contains(port));
        self.unbound.retain(|port, _| wanted.contains(port));
        self.bind_missing();
    }

    fn bind_missing(&mut self) {
        let mut ports: Vec<u16> = self.verifier.doors.iter().map(|d| d.port).collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            if self.bound.contains_key(&port) {
                continue;
            }
            match bind(port) {
                Ok(sockets) => {
                    let tasks = sockets
                        .into_iter()
                        .map(|socket| tokio::spawn(receive(socket, port, self.tx.clone())))
                        .collect();
                    self.bound.insert(port, Bound { tasks });
                    self.unbound.remove(&port);
                    log::info(
                        "listening for single-packet knocks",
                        &[("port", &format!("{port}/udp"))],
                    );
                }
                Err(why) => {
                    if self.unbound.get(&port) != Some(&why) {
                        log::error(
                            "cannot listen for single-packet knocks; its doors stay closed \
                             (trying again each second)",
                            &[("port", &format!("{port}/udp")), ("error", &why)],
                        );
                    }
                    self.unbound.insert(port, why);
                }
            }
        }
    }

    /// Once a second: ports to bind again, and the refusals not logged.
    pub fn tick(&mut self) {
        if !self.unbound.is_empty() {
            self.bind_missing();
        }
        if self.unlogged > 0 {
            log::warn(
                "more single-packet knocks were refused than are logged; see \
                 portfw_spa_knocks_total",
                &[("not_logged", &self.unlogged)],
            );
        }
        self.logged = 0;
        self.unlogged = 0;
    }

    fn count(&self, outcome: SpaOutcome) {
        self.shared.spa.add(outcome);
    }

    /// Checks one datagram and opens its door.
    pub fn handle(&mut self, datagram: Datagram) {
        let source = datagram.from.ip().to_canonical();
        let door = match self
            .verifier
            .check(datagram.port, &datagram.bytes, unix_now())
        {
            Ok(door) => door,
            Err(refusal) => {
                self.count(refusal.outcome);
                self.refused(&refusal, &source.to_string(), datagram.port);
                return;
            }
        };
        let paths = match self.paths.clone().map_or_else(Paths::current, Ok) {
            Ok(paths) => paths,
            Err(e) => {
                return self.failed(&door, &source.to_string(), anyhow::Error::from(e));
            }
        };
        match loader::open_door(&paths, &door.def, source, door.def.open_ns) {
            Ok(value) => {
                self.paths = Some(paths);
                self.count(SpaOutcome::Opened);
                log::info(
                    "single-packet knock: door opened",
                    &[
                        ("door", &door.name),
                        ("source", &source),
                        ("for", &format!("{}s", door.def.open_ns / 1_000_000_000)),
                        ("expires_ns", &value.expires_ns),
                    ],
                );
            }
            Err(e) => {
                // Asked afresh next time: the filter may have been re-created.
                self.paths = None;
                self.failed(&door, &source.to_string(), anyhow::Error::from(e));
            }
        }
    }

    fn failed(&mut self, door: &SpaDoor, source: &str, e: anyhow::Error) {
        self.count(SpaOutcome::Failed);
        self.refused(
            &Refusal::new(
                SpaOutcome::Failed,
                Some(door),
                format!("opening the door failed: {e:#}"),
            ),
            source,
            door.port,
        );
    }

    fn refused(&mut self, refusal: &Refusal, source: &str, port: u16) {
        if self.logged >= REFUSALS_LOGGED_PER_TICK {
            self.unlogged += 1;
            return;
        }
        self.logged += 1;
        let level = if refusal.outcome == SpaOutcome::Failed {
            log::Level::Error
        } else {
            log::Level::Warn
        };
        log::log(
            level,
            &format!("single-packet knock refused: {}", refusal.why),
            &[
                ("outcome", &refusal.outcome.name()),
                ("door", &refusal.door.as_deref().unwrap_or("-")),
                ("source", &source),
                ("port", &format!("{port}/udp")),
            ],
        );
    }
}

async fn receive(socket: tokio::net::UdpSocket, port: u16, tx: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let datagram = Datagram {
                    port,
                    from,
                    bytes: buf[..len].to_vec(),
                };
                if tx.send(datagram).await.is_err() {
                    return;
                }
            }
            // Nothing to do but read on, after a pause, so that an error that keeps coming
            // back cannot spin the loop.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spa::Knock;

    const NOW: u64 = 1_700_000_000;

    struct Fixture {
        dir: PathBuf,
        verifier: Verifier,
        key: Key,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("portfw-spa-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let key = Key::generate().expect("key");
        key.write_new(&dir.join("knock.key"), false).expect("write");
        let mut verifier = Verifier::default();
        verifier.set_doors(vec![SpaDoor {
            name: "spa".into(),
            def: DoorDef {
                id: portfw_common::door_id(b"spa"),
                kind: door_kind::SPA,
                open_ns: 30_000_000_000,
                ..DoorDef::default()
            },
            port: 62201,
            key_file: dir.join("knock.key"),
        }]);
        Fixture { dir, verifier, key }
    }

    fn knock(door: &str, key: &Key, at: u64) -> Vec<u8> {
        Knock::new(door, at)
            .and_then(|k| k.encode(key))
            .expect("knock")
    }

    fn outcome(result: Result<SpaDoor, Refusal>) -> Option<SpaOutcome> {
        result.err().map(|r| r.outcome)
    }

    #[test]
    fn a_good_knock_opens_once() {
        let mut f = fixture("good");
        let datagram = knock("spa", &f.key, NOW - 5);
        let door = f.verifier.check(62201, &datagram, NOW).expect("opens");
        assert_eq!(door.name, "spa");
        assert_eq!(
            outcome(f.verifier.check(62201, &datagram, NOW + 1)),
            Some(SpaOutcome::Replay)
        );
        // Another knock from the same key is new.
        let again = knock("spa", &f.key, NOW);
        assert!(f.verifier.check(62201, &again, NOW).is_ok());
    }

    #[test]
    fn wrong_keys_stale_clocks_and_strangers_open_nothing() {
        let mut f = fixture("refused");
        let other = Key::generate().expect("key");
        assert_eq!(
            outcome(f.verifier.check(62201, &knock("spa", &other, NOW), NOW)),
            Some(SpaOutcome::BadMac)
        );
        assert_eq!(
            outcome(
                f.verifier
                    .check(62201, &knock("spa", &f.key, NOW - 31), NOW)
            ),
            Some(SpaOutcome::Stale)
        );
        assert_eq!(
            outcome(
                f.verifier
                    .check(62201, &knock("spa", &f.key, NOW + 600), NOW)
            ),
            Some(SpaOutcome::Stale)
        );
        assert_eq!(
            outcome(f.verifier.check(62201, &knock("ssh", &f.key, NOW), NOW)),
            Some(SpaOutcome::UnknownDoor)
        );
        // The right door at another port is not that door.
        assert_eq!(
            outcome(f.verifier.check(9, &knock("spa", &f.key, NOW), NOW)),
            Some(SpaOutcome::UnknownDoor)
        );
        assert_eq!(
            outcome(f.verifier.check(62201, b"hello", NOW)),
            Some(SpaOutcome::Malformed)
        );
        // A refused knock's nonce is not remembered: nothing was admitted.
        assert!(f.verifier.replay.is_empty());
    }

    #[test]
    fn a_replayed_capture_is_refused_within_the_window_and_stale_after() {
        let mut f = fixture("replay");
        let capture = knock("spa", &f.key, NOW);
        assert!(f.verifier.check(62201, &capture, NOW).is_ok());
        for later in [0, 10, 30] {
            assert_eq!(
                outcome(f.verifier.check(62201, &capture, NOW + later)),
                Some(SpaOutcome::Replay),
                "{later}"
            );
        }
        for later in [31, 61, 3600] {
            assert_eq!(
                outcome(f.verifier.check(62201, &capture, NOW + later)),
                Some(SpaOutcome::Stale),
                "{later}"
            );
        }
    }

    #[test]
    fn a_changed_key_file_is_read_again() {
        let mut f = fixture("rekey");
        assert!(
            f.verifier
                .check(62201, &knock("spa", &f.key, NOW), NOW)
                .is_ok()
        );
        let new = Key::generate().expect("key");
        new.write_new(&f.dir.join("knock.key"), true)
            .expect("rekey");
        assert_eq!(
            outcome(f.verifier.check(62201, &knock("spa", &f.key, NOW), NOW)),
            Some(SpaOutcome::BadMac)
        );
        assert!(
            f.verifier
                .check(62201, &knock("spa", &new, NOW), NOW)
                .is_ok()
        );
        fs::remove_file(f.dir.join("knock.key")).expect("rm");
        assert_eq!(
            outcome(f.verifier.check(62201, &knock("spa", &new, NOW), NOW)),
            Some(SpaOutcome::Failed)
        );
    }

    /// A free UDP port on both families (bound and let go).
    fn free_port() -> u16 {
        std::net::UdpSocket::bind("[::]:0")
            .and_then(|s| s.local_addr())
            .map_or(0, |a| a.port())
    }

    #[tokio::test]
    async fn the_listener_hears_knocks_over_ipv4_and_ipv6_and_counts_them() {
        let f = fixture("listen");
        let port = free_port();
        let mut door = f.verifier.doors[0].clone();
        door.port = port;
        let shared = Arc::new(Shared::default());
        let (mut listener, mut datagrams) = Listener::new(shared.clone());
        // Pins of no namespace: never a real filter's door table, even when run as root.
        listener.paths = Some(Paths::for_netns(0, 0));
        listener.configure(vec![door.clone()], true);
        assert!(listener.bound.contains_key(&port), "{:?}", listener.unbound);
        let wrong = Key::generate().expect("key");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        let now = unix_now();
        client
            .send_to(&knock("spa", &wrong, now), ("127.0.0.1", port))
            .expect("send");
        client.send_to(b"junk", ("127.0.0.1", port)).expect("send");
        // Verified, but no filter here has a door table to open it in.
        client
            .send_to(&knock("spa", &f.key, now), ("127.0.0.1", port))
            .expect("send");
        let six = std::net::UdpSocket::bind("[::1]:0");
        if let Ok(six) = &six {
            six.send_to(&knock("spa", &wrong, now), ("::1", port))
                .expect("send v6");
        }
        let expected = if six.is_ok() { 4 } else { 3 };
        for _ in 0..expected {
            let datagram =
                tokio::time::timeout(std::time::Duration::from_secs(5), datagrams.recv())
                    .await
                    .expect("a datagram in time")
                    .expect("the channel is open");
            assert_eq!(datagram.port, port);
            assert!(
                datagram.from.ip().is_loopback() || datagram.from.ip().to_canonical().is_loopback()
            );
            listener.handle(datagram);
        }
        assert_eq!(shared.spa.get(SpaOutcome::BadMac), expected - 2);
        assert_eq!(shared.spa.get(SpaOutcome::Failed), 1);
        assert_eq!(shared.spa.get(SpaOutcome::Malformed), 1);
        assert_eq!(shared.spa.get(SpaOutcome::Opened), 0);
        // A policy without the door closes the port.
        listener.configure(Vec::new(), true);
        assert!(listener.bound.is_empty());
    }
}
