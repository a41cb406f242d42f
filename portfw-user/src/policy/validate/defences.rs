//! `scan:`, `log-limit:`, the `limit:` of rules and `knock:`: the active defences' keys.

use std::{collections::HashMap, time::Duration};

use portfw_common::{MAX_DOORS, MAX_KNOCK_STEPS, MAX_LIMITS, SPA_DEFAULT_PORT, door_id};

use super::{MAX_RULE_NAME, Validator};
use crate::policy::{
    Action, Door, DoorKind, Limit, Policy, Protocol, Rate, ScanGuard,
    defences::{
        DOOR_FOR_DEFAULT, KNOCK_WITHIN_DEFAULT, LONG_BLOCK, SCAN_BLOCK_DEFAULT, SCAN_WITHIN_DEFAULT,
    },
    diag::Location,
    duration::parse_rate,
    format_duration,
    ports::{self, SpecForm},
    yaml::{Entry, Node, ScalarKind, Value},
};

const SCAN_KEYS: &[&str] = &["ports", "within", "block", "except"];
const DOOR_KEYS: &[&str] = &["name", "sequence", "within", "spa", "opens", "for"];
const SPA_KEYS: &[&str] = &["port", "key-file"];

/// Knocks (protocol, port) with where each is written.
type Knocks = Vec<((Protocol, u16), Location)>;

/// A door as read, with where its knocks are written, for the checks across keys.
pub(super) struct DoorRead {
    pub door: Door,
    /// Each knock of a sequence (or the SPA port) and where it is written.
    pub knocks: Knocks,
}

impl Validator<'_, '_, '_> {
    /// `scan: {ports, within, block, except}`.
    pub(super) fn scan(&mut self, entry: &Entry) -> Option<ScanGuard> {
        let Value::Mapping(entries) = &entry.value.value else {
            self.invalid(
                &entry.value,
                format!("`scan` must be a mapping of {}", SCAN_KEYS.join(", ")),
            );
            return None;
        };
        let mut guard = ScanGuard {
            ports: 0,
            within: SCAN_WITHIN_DEFAULT,
            block: SCAN_BLOCK_DEFAULT,
            except: Vec::new(),
            except_text: None,
            protected: Vec::new(),
            location: entry.key_location,
        };
        let mut ok = true;
        let mut block_at = None;
        for inner in entries {
            let place = " in `scan`";
            match inner.key.as_str() {
                "ports" => match self.whole_number(&inner.value, 1, 65_535) {
                    Some(n) => guard.ports = n,
                    None => {
                        self.invalid(
                            &inner.value,
                            "`ports` in `scan` must be a whole number of distinct ports from 1 \
                             to 65535",
                        );
                        ok = false;
                    }
                },
                "within" => match self.duration(inner, place) {
                    Some(d) => guard.within = d,
                    None => ok = false,
                },
                "block" => match self.duration(inner, place) {
                    Some(d) => {
                        guard.block = d;
                        block_at = Some(inner.value.location);
                    }
                    None => ok = false,
                },
                "except" => match self.except(inner) {
                    Some(sources) => {
                        guard.except = sources.cidrs;
                        guard.except_text = Some(sources.text);
                        self.short_v6_excepts(inner, &guard.except);
                    }
                    None => ok = false,
                },
                _ => {
                    self.unknown_key(inner, place, SCAN_KEYS);
                    ok = false;
                }
            }
        }
        if guard.ports == 0 {
            if ok {
                self.reporter.error(
                    entry.key_location,
                    "`scan` needs `ports`: how many distinct dropped ports from one source \
                     within `within` block it",
                );
            }
            return None;
        }
        if let Some(at) = block_at
            && guard.block > LONG_BLOCK
            && guard.except.is_empty()
        {
            self.reporter.warning(
                at,
                format!(
                    "`scan` blocks for {} with an empty `except`: spoofed scans could shut out \
                     any source for that long; list the networks you must never lose (your \
                     admins, monitoring) under `except`",
                    format_duration(guard.block)
                ),
            );
        }
        ok.then_some(guard)
    }

    /// Warns about IPv6 excepts narrower than the /64 the guard blocks by.
    fn short_v6_excepts(&mut self, entry: &Entry, except: &[crate::policy::Cidr]) {
        if let Some(narrow) = except.iter().find(|c| !c.is_ipv4() && c.len > 64) {
            self.reporter.warning(
                entry.value.location,
                format!(
                    "`except` holds {narrow}, but the scan guard blocks IPv6 sources by /64: \
                     another address of its /64 scanning would block it anyway; except the \
                     whole /64"
                ),
            );
        }
    }

    /// A whole number from `min` to `max`, or `None` (not reported).
    fn whole_number(&self, node: &Node, min: u32, max: u32) -> Option<u32> {
        let text = Self::text(node)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<u32>().ok().filter(|n| (min..=max).contains(n))
    }

    /// `log-limit: N/D` or `none`. `Some(None)` is `none`.
    pub(super) fn log_limit(&mut self, entry: &Entry) -> Option<Option<Rate>> {
        let text = Self::text(&entry.value);
        if text == Some("none") {
            return Some(None);
        }
        self.rate(
            entry,
            "`log-limit` must be a rate such as `1000/s`, or `none`",
        )
        .map(Some)
    }

    /// A rate value (`100/s`, `5/10s`); `expected` says what the key takes.
    fn rate(&mut self, entry: &Entry, expected: &str) -> Option<Rate> {
        let Some(text) = Self::text(&entry.value) else {
            self.invalid(&entry.value, expected);
            return None;
        };
        match parse_rate(text) {
            Ok(rate) => Some(rate),
            Err(error) => {
                self.reporter.error(entry.value.location, error.to_string());
                None
            }
        }
    }

    /// A rule's `limit:`; its id is given once every rule is read ([`assign_limit_ids`]).
    pub(super) fn rule_limit(&mut self, number: usize, entry: &Entry) -> Option<Rate> {
        self.rate(
            entry,
            &format!("`limit` in rule {number} must be a rate such as `5/10s`, `10/m` or `50/h`"),
        )
    }

    /// `knock:`, a list of doors.
    pub(super) fn knock(&mut self, entry: &Entry) -> Vec<DoorRead> {
        if Self::is_null(&entry.value) {
            return Vec::new();
        }
        let Value::Sequence(items) = &entry.value.value else {
            self.invalid(&entry.value, "`knock` must be a list of doors");
            return Vec::new();
        };
        if items.len() > MAX_DOORS as usize {
            self.reporter.error(
                entry.key_location,
                format!(
                    "the policy has {} knock doors; at most {MAX_DOORS} are supported",
                    items.len()
                ),
            );
        }
        let mut doors: Vec<DoorRead> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(door) = self.door(index + 1, item, &mut names) {
                doors.push(door);
            }
        }
        // The kernel follows one door per knock port (`PortEntry::knocks`).
        let mut knock_ports: HashMap<(Protocol, u16), &str> = HashMap::new();
        for read in &doors {
            if !matches!(read.door.kind, DoorKind::Sequence { .. }) {
                continue;
            }
            let mut own: Vec<(Protocol, u16)> = Vec::new();
            for &(knock, at) in &read.knocks {
                if own.contains(&knock) {
                    continue;
                }
                own.push(knock);
                if let Some(other) = knock_ports.insert(knock, &read.door.name) {
                    self.reporter.error(
                        at,
                        format!(
                            "knock {}/{} of door `{}` is also a knock of door `{other}`; a port \
                             can be a knock of one door only",
                            knock.1, knock.0, read.door.name
                        ),
                    );
                }
            }
        }
        // A single-packet port goes to `portfw agent`: it can be nothing else.
        let mut spa_ports: HashMap<u16, &str> = HashMap::new();
        for read in &doors {
            let DoorKind::Spa { port, .. } = read.door.kind else {
                continue;
            };
            let at = read.knocks.first().map_or(read.door.location, |k| k.1);
            if let Some(other) = spa_ports.insert(port, &read.door.name) {
                self.reporter.error(
                    at,
                    format!(
                        "SPA port {port}/udp of door `{}` is also the SPA port of door `{other}`; \
                         give each single-packet door its own port",
                        read.door.name
                    ),
                );
            }
            for other in &doors {
                let knocks = other.door.knocks_at(Protocol::Udp, port);
                let opens = other.door.opens == (Protocol::Udp, port);
                if knocks || opens {
                    let what = if knocks {
                        "a knock"
                    } else {
                        "the `opens` port"
                    };
                    self.reporter.error(
                        at,
                        format!(
                            "SPA port {port}/udp of door `{}` is also {what} of door `{}`; a \
                             single-packet port is passed to `portfw agent` and can be nothing \
                             else",
                            read.door.name, other.door.name
                        ),
                    );
                }
            }
        }
        doors
    }

    fn door(
        &mut self,
        number: usize,
        node: &Node,
        names: &mut HashMap<String, usize>,
    ) -> Option<DoorRead> {
        let Value::Mapping(entries) = &node.value else {
            self.invalid(
                node,
                format!(
                    "knock door {number} must be a mapping with `name`, `opens` and \
                     `sequence` or `spa`"
                ),
            );
            return None;
        };
        let mut ok = true;
        let mut name = None;
        let mut sequence: Option<(Knocks, Location)> = None;
        let mut spa: Option<(u16, String, Location)> = None;
        let mut within: Option<(Duration, Location)> = None;
        let mut opens = None;
        let mut open_for = DOOR_FOR_DEFAULT;
        let mut kind_key: Option<&str> = None;
        for entry in entries {
            let place = format!(" in knock door {number}");
            match entry.key.as_str() {
                "name" => match self.door_name(number, entry, names) {
                    Some(n) => name = Some(n),
                    None => ok = false,
                },
                key @ ("sequence" | "spa") => {
                    if let Some(first) = kind_key {
                        self.reporter.error(
                            entry.key_location,
                            format!(
                                "knock door {number} has both `{first}` and `{key}`; a door \
                                 is either a knock sequence or a single-packet knock"
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    kind_key = Some(if key == "sequence" { "sequence" } else { "spa" });
                    if key == "sequence" {
                        match self.sequence(number, entry) {
                            Some(steps) => sequence = Some((steps, entry.key_location)),
                            None => ok = false,
                        }
                    } else {
                        match self.spa(number, entry) {
                            Some(s) => spa = Some(s),
                            None => ok = false,
                        }
                    }
                }
                "within" => match self.duration(entry, &place) {
                    Some(d) => within = Some((d, entry.key_location)),
                    None => ok = false,
                },
                "opens" => match self.single_port(entry, &format!("`opens`{place}"), None) {
                    Some(port) => opens = Some((port, entry.value.location)),
                    None => ok = false,
                },
                "for" => match self.duration(entry, &place) {
                    Some(d) => open_for = d,
                    None => ok = false,
                },
                _ => {
                    self.unknown_key(entry, &place, DOOR_KEYS);
                    ok = false;
                }
            }
        }
        let label = match &name {
            Some(n) => format!("knock door `{n}`"),
            None => format!("knock door {number}"),
        };
        if name.is_none() && ok {
            self.reporter
                .error(node.location, format!("{label} needs a `name`"));
            ok = false;
        }
        if kind_key.is_none() && ok {
            self.reporter.error(
                node.location,
                format!(
                    "{label} needs `sequence:` (a list of knocks, as in [7001/udp, 7002/tcp]) \
                     or `spa:` (a single-packet knock, as in {{port: 62201/udp, key-file: \
                     PATH}})"
                ),
            );
            ok = false;
        }
        if opens.is_none() && ok {
            self.reporter.error(
                node.location,
                format!("{label} needs `opens`: the port it opens, as in `22/tcp`"),
            );
            ok = false;
        }
        if let (Some((_, at)), Some(_)) = (&within, &spa) {
            self.reporter.error(
                *at,
                format!(
                    "`within` applies to knock sequences; {label} is a single-packet knock, \
                     whose timestamp the agent checks instead"
                ),
            );
            ok = false;
        }
        let ((opens, opens_at), name) = (opens?, name?);
        if !ok {
            return None;
        }
        let (kind, knocks) = match (sequence, spa) {
            (Some((steps, _)), None) => {
                if let Some(&(_, at)) = steps.iter().find(|(k, _)| *k == opens) {
                    self.reporter.error(
                        at,
                        format!(
                            "{label} opens {}/{}, which is also one of its knocks",
                            opens.1, opens.0
                        ),
                    );
                    return None;
                }
                let kind = DoorKind::Sequence {
                    steps: steps.iter().map(|&(k, _)| k).collect(),
                    within: within.map_or(KNOCK_WITHIN_DEFAULT, |(d, _)| d),
                };
                (kind, steps)
            }
            (None, Some((port, key_file, at))) => {
                if opens == (Protocol::Udp, port) {
                    self.reporter.error(
                        opens_at,
                        format!("{label} opens its own single-packet port {port}/udp"),
                    );
                    return None;
                }
                let kind = DoorKind::Spa {
                    port,
                    key_file: self.dir.join(key_file),
                };
                (kind, vec![((Protocol::Udp, port), at)])
            }
            _ => return None,
        };
        Some(DoorRead {
            door: Door {
                name,
                kind,
                opens,
                open_for,
                location: node.location,
            },
            knocks,
        })
    }

    fn door_name(
        &mut self,
        number: usize,
        entry: &Entry,
        names: &mut HashMap<String, usize>,
    ) -> Option<String> {
        let Some(name) = Self::text(&entry.value) else {
            self.invalid(
                &entry.value,
                format!("the `name` of knock door {number} must be a string"),
            );
            return None;
        };
        let valid = !name.is_empty()
            && name.len() <= MAX_RULE_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            self.reporter.error(
                entry.value.location,
                format!(
                    "invalid door name `{name}`: use 1 to {MAX_RULE_NAME} letters, digits, \
                     `_`, `.` or `-`"
                ),
            );
            return None;
        }
        if let Some(line) = names.get(name) {
            self.reporter.error(
                entry.value.location,
                format!("door name `{name}` is already used (line {line})"),
            );
            return None;
        }
        names.insert(name.to_owned(), entry.value.location.line);
        Some(name.to_owned())
    }

    /// `sequence: [PORT/tcp|udp, ...]`, 2 to [`MAX_KNOCK_STEPS`] knocks.
    fn sequence(&mut self, number: usize, entry: &Entry) -> Option<Knocks> {
        let Value::Sequence(items) = &entry.value.value else {
            self.invalid(
                &entry.value,
                format!(
                    "`sequence` in knock door {number} must be a list of knocks, as in \
                     [7001/udp, 7002/tcp]"
                ),
            );
            return None;
        };
        if !(2..=MAX_KNOCK_STEPS).contains(&items.len()) {
            self.reporter.error(
                entry.value.location,
                format!(
                    "the `sequence` of knock door {number} has {} knocks; it takes 2 to \
                     {MAX_KNOCK_STEPS}",
                    items.len()
                ),
            );
            return None;
        }
        let mut steps: Knocks = Vec::new();
        let mut ok = true;
        let what = format!("a knock in knock door {number}");
        for item in items {
            let allowed = [Protocol::Tcp, Protocol::Udp];
            let Some(knock) = self.single_port_node(item, &what, Some(&allowed)) else {
                ok = false;
                continue;
            };
            if steps.last().is_some_and(|(last, _)| *last == knock) {
                self.reporter.error(
                    item.location,
                    format!(
                        "knock {}/{} repeats the one before it; a repeated knock is taken for \
                         a retransmission and ignored, so the sequence could never complete",
                        knock.1, knock.0
                    ),
                );
                ok = false;
                continue;
            }
            steps.push((knock, item.location));
        }
        ok.then_some(steps)
    }

    /// `spa: {port: PORT/udp, key-file: PATH}`: the port (default
    /// [`SPA_DEFAULT_PORT`]), the key file as written, and where the port is.
    fn spa(&mut self, number: usize, entry: &Entry) -> Option<(u16, String, Location)> {
        let Value::Mapping(entries) = &entry.value.value else {
            self.invalid(
                &entry.value,
                format!(
                    "`spa` in knock door {number} must be a mapping such as {{port: 62201/udp, \
                     key-file: /etc/portfw/knock.key}}"
                ),
            );
            return None;
        };
        let mut port = (SPA_DEFAULT_PORT, entry.key_location);
        let mut key_file = None;
        let mut ok = true;
        for inner in entries {
            match inner.key.as_str() {
                "port" => {
                    let what = format!("`port` of `spa` in knock door {number}");
                    let allowed = [Protocol::Udp];
                    match self.single_port_node(&inner.value, &what, Some(&allowed)) {
                        Some((_, p)) => port = (p, inner.value.location),
                        None => ok = false,
                    }
                }
                "key-file" => match Self::text(&inner.value) {
                    Some(text) if !text.is_empty() => key_file = Some(text.to_owned()),
                    _ => {
                        self.invalid(
                            &inner.value,
                            format!(
                                "the `key-file` of `spa` in knock door {number} must be a path"
                            ),
                        );
                        ok = false;
                    }
                },
                _ => {
                    self.unknown_key(
                        inner,
                        &format!(" in `spa` of knock door {number}"),
                        SPA_KEYS,
                    );
                    ok = false;
                }
            }
        }
        if key_file.is_none() && ok {
            self.reporter.error(
                entry.key_location,
                format!(
                    "`spa` in knock door {number} needs `key-file`: the key `portfw knock-key` \
                     wrote"
                ),
            );
            ok = false;
        }
        let key_file = key_file?;
        ok.then_some((port.0, key_file, port.1))
    }

    fn single_port(
        &mut self,
        entry: &Entry,
        what: &str,
        allowed: Option<&[Protocol]>,
    ) -> Option<(Protocol, u16)> {
        self.single_port_node(&entry.value, what, allowed)
    }

    /// One port of one protocol, as in `22/tcp` (or a service of one protocol, `ssh`); with
    /// `allowed`, only those protocols, and a bare port takes the only one allowed.
    fn single_port_node(
        &mut self,
        node: &Node,
        what: &str,
        allowed: Option<&[Protocol]>,
    ) -> Option<(Protocol, u16)> {
        let text = match &node.value {
            Value::Scalar(s) if matches!(s.kind(), ScalarKind::Int | ScalarKind::String) => {
                s.text.as_str()
            }
            _ => {
                self.invalid(
                    node,
                    format!("{what} must be a port and protocol, as in `22/tcp`"),
                );
                return None;
            }
        };
        let spec = match ports::parse_spec(text) {
            Ok(spec) => spec,
            Err(error) => {
                self.reporter.error(node.location, error.to_string());
                return None;
            }
        };
        if !matches!(spec.form, SpecForm::Port | SpecForm::Service(_)) || spec.low != spec.high {
            self.reporter.error(
                node.location,
                format!("{what} must be one port, as in `22/tcp`, not `{text}`"),
            );
            return None;
        }
        let protocols: Vec<Protocol> = match allowed {
            Some([only]) if !text.contains('/') => vec![*only],
            _ => spec.protocols.clone(),
        };
        let names = |list: &[Protocol]| {
            list.iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let [protocol] = protocols.as_slice() else {
            let choices: Vec<String> = allowed
                .unwrap_or(&[Protocol::Tcp])
                .iter()
                .map(|p| format!("`{}/{p}`", spec.low))
                .collect();
            self.reporter.error(
                node.location,
                format!(
                    "{what} must name one protocol: write {}",
                    choices.join(" or ")
                ),
            );
            return None;
        };
        if let Some(allowed) = allowed
            && !allowed.contains(protocol)
        {
            self.reporter.error(
                node.location,
                format!("{what} must be {}, not `{text}`", names(allowed)),
            );
            return None;
        }
        Some((*protocol, spec.low))
    }
}

/// Gives each limited rule its bucket id, and reports more than [`MAX_LIMITS`] of them.
pub(super) fn assign_limit_ids(
    rules: &mut [crate::policy::Rule],
    limit_at: &[Option<Location>],
    validator: &mut Validator<'_, '_, '_>,
) {
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let mut count = 0usize;
    for (rule, at) in rules.iter_mut().zip(limit_at) {
        let Some(limit) = rule.limit.as_mut() else {
            continue;
        };
        count += 1;
        if count == MAX_LIMITS as usize + 1 {
            validator.reporter.error(
                at.unwrap_or(rule.location),
                format!(
                    "more than {MAX_LIMITS} rules have a `limit`; at most {MAX_LIMITS} are \
                     supported"
                ),
            );
        }
        // Two rules written alike would share buckets; the second gets its own.
        let mut id = door_id(rule.summary.as_bytes());
        let mut n = 1;
        while seen.contains_key(&id) {
            n += 1;
            id = door_id(format!("{}#{n}", rule.summary).as_bytes());
        }
        seen.insert(id, 1);
        limit.id = id;
    }
}

/// Warnings across keys, once rules and doors are read: a knock port that a rule allows
/// answers the knocker and shows the port open to anyone watching.
pub(super) fn knock_warnings(
    policy: &Policy,
    doors: &[DoorRead],
    validator: &mut Validator<'_, '_, '_>,
) {
    for read in doors {
        if !matches!(read.door.kind, DoorKind::Sequence { .. }) {
            continue;
        }
        for &((protocol, port), at) in &read.knocks {
            let allowing = policy.rules.iter().position(|rule| {
                rule.action == Action::Allow
                    && rule.ports.iter().any(|r| r.contains(protocol, port))
            });
            if let Some(index) = allowing {
                let rule = &policy.rules[index];
                validator.reporter.warning(
                    at,
                    format!(
                        "knock {port}/{protocol} of door `{}` is also allowed by rule {} (line \
                         {}): the knock reaches a service there, and a scan shows the port \
                         open; pick a port no rule allows",
                        read.door.name,
                        index + 1,
                        rule.location.line
                    ),
                );
            }
        }
    }
}

/// A placeholder until [`assign_limit_ids`] runs.
pub(super) fn limit(rate: Rate) -> Limit {
    Limit { rate, id: 0 }
}
