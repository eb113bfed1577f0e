//! The hold: the set and channel(s) ahead of the live policy, their hook,
//! and their capping by every live limit they could otherwise undo.

use super::*;

impl Cx<'_> {
    /// The live policy with the set and channel(s) of `plan` ahead of it.
    pub(super) fn hold(&self, plan: Plan, mode: Mode) -> Result<String, SuggestError> {
        let id = sanitize(self.id());
        let directions = self.directions(&plan);
        let have = self.policy.channels.len();
        let max = tc_common::MAX_CHANNELS as usize;
        if have + directions.len() > max {
            return Err(SuggestError::PolicyFull {
                have,
                add: directions.len(),
                max,
            });
        }
        let mut endpoints = self.policy.endpoints.clone();
        let mut notes = Notes::default();
        let set = if is_any(&plan.from) || plan.from_set.is_some() {
            None
        } else {
            let name = fresh(&format!("{id}-sources"), |n| {
                endpoints.iter().any(|(s, _)| s == n)
            });
            notes.sets.insert(
                name.clone(),
                vec![format!(
                    "The sources of {} ({}): {}.",
                    self.id(),
                    self.event.kind.as_str(),
                    shorten(&plan.sources)
                )],
            );
            endpoints.insert(0, (name.clone(), plan.from.clone()));
            Some(name)
        };
        // Connection limits count TCP connections: only with `protocol: tcp`.
        // Two hooks: the sources may sit on both sides of this node, so
        // each hook holds half, and together they hold the baseline's limit.
        let share = 1.0 / directions.len() as f64;
        let (limit, summary) =
            limit_for(plan.baseline.scaled(share), plan.protocol == Protocol::Tcp);
        let mut channels = Vec::new();
        let mut caps = Vec::new();
        let base = format!("hold-{id}");
        for d in &directions {
            let wanted = match (directions.len(), d) {
                (2, Direction::Egress) => format!("{base}-egress"),
                _ => base.clone(),
            };
            let name = fresh(&wanted, |n| {
                self.policy.channels.iter().any(|c| c.name == n)
                    || channels.iter().any(|c: &Channel| c.name == n)
            });
            let mut channel = Channel {
                name,
                from: plan.from.clone().into(),
                to: plan.to.clone().into(),
                protocol: plan.protocol,
                ports: plan.ports.clone(),
                direction: *d,
                limit,
                action: Action::Drop,
                connection_action: ConnAction::Drop,
                horizon_ns: None,
                mode,
            };
            if mode == Mode::Monitor {
                let relaxed = self.relaxed_by_monitor(&channel);
                if !relaxed.is_empty() {
                    let names: Vec<String> = relaxed.iter().map(|n| format!("`{n}`")).collect();
                    return Err(SuggestError::MonitorWouldBypass {
                        channels: names.join(", "),
                    });
                }
            }
            caps.push(self.cap(&mut channel)?);
            channels.push(channel);
        }
        let mut why = self.event_lines();
        why.extend(plan.why.iter().cloned());
        why.extend(derivation(&summary));
        if set.is_some() || plan.from_set.is_some() {
            why.push("The other sources do not match this channel: they go on to the channels below, unchanged.".into());
        }
        why.push(match &directions[..] {
            [d] => format!(
                "Direction {}: as `{}`, the first live channel that carries all of this traffic.",
                dir(*d),
                self.policy
                    .channels
                    .iter()
                    .find(|c| carries(c, &plan))
                    .map_or("", |c| c.name.as_str())
            ),
            _ => "Ingress and egress: no live channel tells which hook sees this traffic on this node; the requests arrive (ingress) at a server and leave (egress) at a client, and a packet is charged once, so the two hold the sources together. Each holds HALF of the limit above (never below the minimums), so that sources on both sides of the node together stay within it.".into(),
        });
        if mode == Mode::Monitor {
            why.push("mode: monitor: counts what this would drop and drops nothing (`tc-agent channels`: would-drop); once the counts look right, suggest again without `--mode monitor` and apply that.".into());
        }
        for (c, cap) in channels.iter().zip(caps) {
            let mut why = why.clone();
            why.extend(cap);
            notes.channels.insert(c.name.clone(), why);
        }
        let added: Vec<String> = channels.iter().map(|c| format!("`{}`", c.name)).collect();
        let added = match &added[..] {
            [one] => format!("the channel {one}"),
            more => format!("the channels {}", more.join(" and ")),
        };
        notes.header = vec![
            format!(
                "Suggested by `tc-agent suggest {}`: the live policy unchanged, plus",
                self.id()
            ),
            format!(
                "{}{added} ahead of its channels (the first match wins).",
                set.as_ref()
                    .map_or(String::new(), |s| format!("the set `{s}` and "))
            ),
            "Apply it as it is: `tc-agent apply FILE`.".into(),
            KEPT.into(),
        ];
        let added_n = channels.len();
        channels.extend(self.policy.channels.iter().cloned());
        let policy = Policy {
            channels,
            endpoints,
            warnings: Vec::new(),
        };
        self.finish(&policy, &mut notes, added_n)
    }

    /// The hooks of the live channels that carry the plan's traffic: the
    /// hold goes on the same one, or on both when that is not one hook.
    pub(super) fn directions(&self, plan: &Plan) -> Vec<Direction> {
        let mut dirs: Vec<Direction> = self
            .policy
            .channels
            .iter()
            .filter(|c| carries(c, plan))
            .map(|c| c.direction)
            .collect();
        dirs.sort_by_key(|d| *d == Direction::Egress);
        dirs.dedup();
        match dirs[..] {
            [d] => vec![d],
            _ => vec![Direction::Ingress, Direction::Egress],
        }
    }

    /// Caps `hold` by EVERY enforcing live channel on its hook that could
    /// hold a packet the hold matches (see [`overlaps`]): the hold comes
    /// first and takes those packets, so each limit that would have
    /// applied to one of them applies to the hold too, the smallest of
    /// each kind. Returns what was capped, for the comment; refuses when a
    /// live channel's connection limits cannot be carried over (the hold
    /// is not `protocol: tcp`).
    pub(super) fn cap(&self, hold: &mut Channel) -> Result<Vec<String>, SuggestError> {
        let mut capped: Vec<String> = Vec::new();
        let mut from: Vec<String> = Vec::new();
        let mut conn_action: Option<ConnAction> = None;
        for live in self
            .policy
            .channels
            .iter()
            .filter(|c| c.direction == hold.direction && enforces(c))
        {
            let (rates, conns) = overlaps(live, hold);
            if !rates {
                continue;
            }
            let (l, h) = (live.limit, &mut hold.limit);
            let mut took = false;
            if let Some(b) = l
                .bandwidth_bps
                .filter(|b| h.bandwidth_bps.is_none_or(|x| *b < x))
            {
                h.bandwidth_bps = Some(b);
                h.burst_bytes = render::default_burst(b, false);
                took = true;
            }
            if let Some(p) = l.packets.filter(|p| h.packets.is_none_or(|x| *p < x)) {
                h.packets = Some(p);
                h.packet_burst = render::default_packet_burst(p);
                took = true;
            }
            if conns && l.limits_connections() {
                // Connection limits need `protocol: tcp`: a hold that
                // also takes other protocols cannot carry them.
                if hold.protocol != Protocol::Tcp {
                    return Err(SuggestError::CannotCap {
                        channel: live.name.clone(),
                        why: format!(
                            "`{}` limits TCP connections ({}) and the hold would take some of its TCP packets, but the hold matches protocol {} and connection limits need `protocol: tcp`; the hold cannot be narrowed to TCP without leaving the event's other traffic unheld",
                            live.name,
                            conn_text(&l),
                            protocol_name(hold.protocol)
                        ),
                    });
                }
                if let Some(n) = l
                    .connections
                    .filter(|n| h.connections.is_none_or(|x| *n < x))
                {
                    h.connections = Some(n);
                    took = true;
                }
                if let Some(n) = l
                    .new_connections
                    .filter(|n| h.new_connections.is_none_or(|x| *n < x))
                {
                    h.new_connections = Some(n);
                    h.new_connection_burst = render::default_new_connection_burst(n);
                    took = true;
                }
                // Both refuse the SYN; the first channel's way is kept.
                conn_action.get_or_insert(live.connection_action);
            }
            if took {
                from.push(if conns {
                    format!("`{}`", live.name)
                } else {
                    format!(
                        "`{}` (its protocol differs: only packets whose protocol the datapath cannot read reach it from here)",
                        live.name
                    )
                });
            }
        }
        if let Some(a) = conn_action.filter(|_| hold.limit.limits_connections()) {
            hold.connection_action = a;
        }
        let h = &hold.limit;
        if let Some(b) = h.bandwidth_bps {
            capped.push(format!("bandwidth {}", render::rate(b)));
        }
        if let Some(p) = h.packets {
            capped.push(format!("packets {p}/s"));
        }
        if h.limits_connections() {
            capped.push(conn_text(h));
        }
        if from.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![
            format!(
                "Never looser than {}: live channel(s) that enforce limits on packets this channel takes first; each limit is the smallest of theirs and the baseline's: {}.",
                from.join(", "),
                capped.join(", ")
            ),
            "  This channel has its own buckets: the destination's other traffic still gets the live channels' full limits, so together they may pass up to their limit plus this one.".into(),
        ])
    }

    /// The enforcing live channels on `hook` that a monitor-mode hold
    /// would take packets from (and so stop enforcing for them).
    pub(super) fn relaxed_by_monitor(&self, hold: &Channel) -> Vec<&str> {
        self.policy
            .channels
            .iter()
            .filter(|c| c.direction == hold.direction && enforces(c))
            .filter(|c| overlaps(c, hold).1)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// Whether live channel `c` matches all of the plan's traffic (on some
/// hook): its addresses, protocol and ports hold the plan's.
fn carries(c: &Channel, plan: &Plan) -> bool {
    let protocol = c.protocol == Protocol::Any
        || (c.protocol == plan.protocol && plan.protocol != Protocol::Any);
    let ports = c.ports.is_empty()
        || (!plan.ports.is_empty()
            && plan
                .ports
                .iter()
                .all(|(a, b)| c.ports.iter().any(|(x, y)| x <= a && b <= y)));
    protocol && ports && covers(&c.from, &plan.from) && covers(&c.to, &plan.to)
}

/// Whether every prefix of `inner` lies in one of `outer`.
fn covers(outer: &[IpNet], inner: &[IpNet]) -> bool {
    inner.iter().all(|i| outer.iter().any(|o| o.contains(i)))
}

/// Whether live channel `c` enforces something: the only channels whose
/// limits a hold ahead of them could take away.
pub(super) fn enforces(c: &Channel) -> bool {
    c.mode == Mode::Enforce && (!c.limit.is_unlimited() || c.limit.limits_connections())
}

/// Whether a packet `hold` matches could otherwise be held by `c` (on the
/// same hook), as `(any packet, a packet whose protocol the datapath
/// reads)`. Both sides' addresses must meet. A packet whose protocol the
/// datapath cannot read (an IPv6 header chain past its parse limit) goes
/// to the first enforcing channel of its addresses whatever their
/// protocols, so for rate limits only the addresses count. For a packet
/// whose protocol is read, the protocols must meet; ports narrow nothing
/// for an enforcing hold, which also takes its protocol's fragments
/// (ports unread) whatever their port, and a monitor hold is refused on
/// any such overlap, so ports are not compared at all.
fn overlaps(c: &Channel, hold: &Channel) -> (bool, bool) {
    let addrs = meet(&c.from, &hold.from) && meet(&c.to, &hold.to);
    let proto = |x: &Channel| match x.protocol.numbers() {
        // `protocol: any` with ports matches TCP and UDP only.
        None if !x.ports.is_empty() => Some(&[6u8, 17][..]),
        n => n,
    };
    let protocols = match (proto(c), proto(hold)) {
        (Some(a), Some(b)) => a.iter().any(|p| b.contains(p)),
        _ => true,
    };
    (addrs, addrs && protocols)
}

/// Whether some address is in both `a` and `b`.
fn meet(a: &[IpNet], b: &[IpNet]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.contains(y) || y.contains(x)))
}

/// A channel's connection limits, as text.
fn conn_text(l: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(n) = l.connections {
        parts.push(format!("connections {n}"));
    }
    if let Some(n) = l.new_connections {
        parts.push(format!("new connections {n}/s"));
    }
    parts.join(", ")
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "any",
    }
}
