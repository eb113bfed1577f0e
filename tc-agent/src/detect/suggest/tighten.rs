//! A spike on a channel: that channel's limit set or lowered in place.

use super::*;

impl Cx<'_> {
    /// A channel spike: that channel's limit set or lowered in place.
    pub(super) fn tighten(&self, channel: &str, mode: Mode) -> Result<String, SuggestError> {
        let Some(at) = self.policy.channels.iter().position(|c| c.name == channel) else {
            return Err(SuggestError::ChannelGone {
                id: self.id().into(),
                channel: channel.into(),
            });
        };
        let live = &self.policy.channels[at];
        let tcp = live.protocol == Protocol::Tcp;
        // What was offered to the channel: passed and dropped.
        let offered = |unit: &'static str| {
            move |p: &Map<String, Value>| {
                let get = |k: String| p.get(&k)?.as_f64();
                Some(get(format!("passed_{unit}"))? + get(format!("dropped_{unit}"))?)
            }
        };
        let (baseline, how) = match (
            self.p95_of(channel, offered("bps")),
            self.p95_of(channel, offered("pps")),
        ) {
            (Some((bps, n)), Some((pps, _))) => (
                Rates {
                    bps: Some(bps),
                    pps,
                    new_conns: None,
                },
                format!(
                    "p95 of {n} s of the channel's history (passed + dropped) before the onset"
                ),
            ),
            _ => match self
                .evidence_pairs("offered_bps", "offered_pps")
                .or_else(|| self.evidence_rates())
            {
                Some((r, how)) => (
                    r,
                    format!(
                        "{how} (the history has no {MIN_POINTS} s of the channel before the onset)"
                    ),
                ),
                None => (
                    Rates::default(),
                    "no history of the channel and no rate in the evidence: held to the floor"
                        .into(),
                ),
            },
        };
        let (wanted, summary) = limit_for(baseline, tcp);
        let pacing = live.action == Action::Delay;
        let mut limit = live.limit;
        if let Some(bps) = wanted.bandwidth_bps {
            if limit.bandwidth_bps.is_none_or(|b| bps < b) {
                limit.bandwidth_bps = Some(bps);
                limit.burst_bytes = render::default_burst(bps, pacing);
            }
        }
        if let Some(p) = wanted.packets {
            if limit.packets.is_none_or(|b| p < b) {
                limit.packets = Some(p);
                limit.packet_burst = render::default_packet_burst(p);
            }
        }
        let enforces = live.mode == Mode::Enforce
            && (!live.limit.is_unlimited() || live.limit.limits_connections());
        if limit == live.limit && live.mode == mode {
            return Err(SuggestError::AlreadyHeld {
                channel: channel.into(),
                limit: summary,
            });
        }
        if mode == Mode::Monitor && enforces {
            return Err(SuggestError::MonitorWouldRelax {
                channel: channel.into(),
            });
        }
        let mut why = self.event_lines();
        why.push(format!(
            "Holds channel `{channel}` to its baseline, set in place: a copy ahead with the same match would leave `{channel}` matching nothing, move its counters and history to a new name, and bypass its other limits."
        ));
        why.push(format!("  baseline: {baseline} ({how})"));
        why.extend(derivation(&summary));
        why.push("  a limit the channel already had that is tighter is kept.".into());
        if live.mode == Mode::Monitor && mode == Mode::Enforce {
            why.push(
                "The channel was in monitor mode: with this it enforces all of its limits.".into(),
            );
        }
        if mode == Mode::Monitor {
            why.push("mode: monitor: counts what this would drop and drops nothing (`tc-agent channels`: would-drop); once the counts look right, suggest again without `--mode monitor` and apply that.".into());
        }
        let mut policy = self.policy.clone();
        policy.warnings.clear();
        policy.channels[at].limit = limit;
        policy.channels[at].mode = mode;
        let mut notes = Notes::default();
        notes.channels.insert(channel.into(), why);
        notes.header = vec![
            format!(
                "Suggested by `tc-agent suggest {}`: the live policy with the limit of",
                self.id()
            ),
            format!("channel `{channel}` set to its baseline; nothing else changes."),
            "Apply it as it is: `tc-agent apply FILE`.".into(),
            KEPT.into(),
        ];
        self.finish(&policy, &mut notes, 0)
    }
}
