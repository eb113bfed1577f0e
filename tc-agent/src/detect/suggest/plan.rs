//! The plan per event kind: who to hold toward what, and their baseline.

use super::*;

impl Cx<'_> {
    /// The named sources of `names` (sets and addresses) as one side, and
    /// the names that could not be named (`other`, or gone).
    pub(super) fn sources<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> (Vec<IpNet>, Vec<String>, Vec<String>, Option<String>) {
        let (mut nets, mut named, mut unnamed, mut sets) = (vec![], vec![], vec![], vec![]);
        for name in names {
            match self.resolve(name) {
                Resolved::Set(s, n) => {
                    nets.extend(n);
                    sets.push(s);
                    named.push(name.to_string());
                }
                Resolved::Net(n) => {
                    nets.push(n);
                    named.push(name.to_string());
                }
                Resolved::Unnamed => unnamed.push(name.to_string()),
            }
        }
        nets.sort();
        nets.dedup();
        // A set of the live policy that is exactly the sources (named
        // alone, or holding just these addresses) is reused as it is.
        let reuse = match (&sets[..], named.len()) {
            ([s], 1) => Some(s.clone()),
            _ => self
                .policy
                .endpoints
                .iter()
                .find(|(_, n)| *n == nets)
                .map(|(s, _)| s.clone()),
        };
        (nets, named, unnamed, reuse)
    }

    /// A plan for `names` (the sources) toward the destination; when
    /// none can be named, a plan for everyone toward it.
    pub(super) fn plan_for(
        &self,
        names: &[String],
        fallback: impl Fn(&str) -> Option<(Rates, &'static str)>,
        everyone_reason: &str,
    ) -> Result<Plan, SuggestError> {
        let (to, dests) = self.destination()?;
        let lost: Vec<&str> = self
            .event
            .to
            .iter()
            .filter(|t| !dests.contains(t))
            .map(String::as_str)
            .collect();
        let lost = (!lost.is_empty()).then(|| {
            format!(
                "  not held toward {}: no address or set of the live policy names it",
                lost.join(", ")
            )
        });
        let (protocol, ports) = self.protocol();
        // New connections are what a squeezed upstream pays for; a flood
        // or a spike is held in bytes and packets.
        let tcp = protocol == Protocol::Tcp && self.event.kind == EventKind::UpstreamCollapse;
        let (from, named, unnamed, from_set) = self.sources(names.iter().map(String::as_str));
        let crowd = self.ev.get("crowd").and_then(Value::as_bool) == Some(true)
            && self.event.kind == EventKind::Dos;
        if crowd || named.is_empty() {
            let (baseline, mut why) = self.destination_total(&dests, tcp);
            why.insert(
                0,
                format!(
                    "Holds EVERYONE toward {} to the destination's baseline: {everyone_reason}.",
                    dests.join(", ")
                ),
            );
            if crowd && !named.is_empty() {
                let other = self.num("other_share").map_or(String::new(), |x| {
                    format!(", and `other` carries {:.0}%", x * 100.0)
                });
                why.push(format!(
                    "  the event names {} of the crowd ({}){other}: holding those alone would leave the rest of it unheld",
                    named.len(),
                    shorten(&named.join(", "))
                ));
            }
            why.extend(lost);
            return Ok(Plan {
                from: any(),
                from_set: None,
                sources: "every source".into(),
                to,
                protocol,
                ports,
                baseline,
                why,
            });
        }
        let (baseline, lines) = self.per_source(&named, &dests, tcp, fallback);
        let dest = dests.join(", ");
        let mut why = vec![match &named[..] {
            [one] => format!("Holds {one} toward {dest} to its baseline:"),
            _ => format!(
                "Holds the {} sources together toward {dest} to the sum of their baselines:",
                named.len()
            ),
        }];
        why.extend(lines);
        if named.len() > 1 {
            why.push(format!("  together: {baseline}"));
        }
        if !unnamed.is_empty() {
            why.push(format!(
                "  not held: {} (no address or set names them)",
                unnamed.join(", ")
            ));
        }
        why.extend(lost);
        Ok(Plan {
            from,
            from_set,
            sources: named.join(", "),
            to,
            protocol,
            ports,
            baseline,
            why,
        })
    }

    pub(super) fn dos(&self) -> Result<Plan, SuggestError> {
        let sources: Vec<&Map<String, Value>> = self
            .ev
            .get("sources")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_object).collect())
            .unwrap_or_default();
        let fallback = |s: &str| {
            let e = sources
                .iter()
                .find(|e| e.get("source").and_then(Value::as_str) == Some(s))?;
            let f = |k: &str| e.get(k).and_then(Value::as_f64);
            Some((
                Rates {
                    bps: Some(f("baseline_bps")?),
                    pps: f("baseline_pps").unwrap_or(0.0),
                    new_conns: None,
                },
                "the event's baseline for this source",
            ))
        };
        let reason = if self.ev.get("crowd").and_then(Value::as_bool) == Some(true) {
            "a crowd of sources, too many and too new to be named one by one"
        } else {
            "the sources cannot be named (they are `other`: addresses the agent does not track one by one)"
        };
        self.plan_for(&self.event.from, fallback, reason)
    }

    pub(super) fn spike(&self) -> Result<Plan, SuggestError> {
        if self.event.from.is_empty() {
            return Err(SuggestError::NothingToHold {
                id: self.id().into(),
            });
        }
        // The evidence holds the interaction's total, not per source: it
        // stands for the first source without history, and counts once.
        let bps = self.baseline_of("request_bps");
        let pps = self.baseline_of("request_pps").unwrap_or(0.0);
        let used = std::cell::Cell::new(false);
        let fallback = move |_: &str| {
            let first = !used.replace(true);
            Some(if first {
                (
                    Rates {
                        bps: Some(bps?),
                        pps,
                        new_conns: None,
                    },
                    "the event's baseline of the whole interaction",
                )
            } else {
                (
                    Rates::default(),
                    "counted in the interaction's baseline above",
                )
            })
        };
        self.plan_for(
            &self.event.from,
            fallback,
            "the spike's sources cannot be named (they are `other`: addresses the agent does not track one by one)",
        )
    }

    pub(super) fn collapse(&self) -> Result<Plan, SuggestError> {
        let clients: Vec<&Map<String, Value>> = self
            .ev
            .get("clients")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_object).collect())
            .unwrap_or_default();
        let names: Vec<String> = if clients.is_empty() {
            self.event.from.clone()
        } else {
            clients
                .iter()
                .filter_map(|c| c.get("from")?.as_str().map(String::from))
                .collect()
        };
        // Destination-wide: an upper bound for any part of it. TCP only.
        let conns = self
            .baseline_of("new_connections_per_s")
            .filter(|_| self.protocol().0 == Protocol::Tcp);
        let fallback = |s: &str| {
            let c = clients
                .iter()
                .find(|c| c.get("from").and_then(Value::as_str) == Some(s))?;
            let f = |k: &str| c.get(k).and_then(Value::as_f64);
            Some((
                Rates {
                    bps: Some(f("baseline_request_bps")?),
                    pps: f("baseline_request_pps").unwrap_or(0.0),
                    new_conns: conns,
                },
                "the event's baseline for this client, new connections the destination's",
            ))
        };
        self.plan_for(
            &names,
            fallback,
            "the clients driving the demand cannot be named (they are `other`)",
        )
    }
}
