//! What a channel of the live policy covers, in the names the detectors
//! use: its sides as endpoint-set names (or CIDRs) for events, and whether
//! a destination name lies within its destinations (for `collapse`'s "the
//! agent's own refusals" rule, judged per destination).

use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;

/// Whether `nets` matches every address (the policy's `any`: `0.0.0.0/0`
/// and `::/0`, or any /0).
pub fn is_any(nets: &[IpNet]) -> bool {
    nets.iter().any(|n| n.prefix_len() == 0)
}

/// One side of a channel as an event names it, kept as found and written
/// out only when an event names it: a side of 128 networks is shared with
/// the policy until then, not 128 strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Side {
    /// `any`: named by nothing.
    #[default]
    Any,
    /// The endpoint set whose networks are exactly the side's.
    Set(String),
    /// Networks that no set equals, sorted and distinct (the policy's own).
    Nets(Arc<[IpNet]>),
}

impl Side {
    /// The side whose networks are `nets`, among the endpoint `sets`.
    /// Shares `nets` when they are sorted and distinct, as a validated
    /// channel holds them.
    pub fn of(nets: &Arc<[IpNet]>, sets: &[(String, Vec<IpNet>)]) -> Self {
        if is_any(nets) {
            return Side::Any;
        }
        let nets = if nets.windows(2).all(|w| w[0] < w[1]) {
            nets.clone()
        } else {
            let mut v = nets.to_vec();
            v.sort();
            v.dedup();
            v.into()
        };
        for (name, set) in sets {
            let mut have = set.clone();
            have.sort();
            have.dedup();
            if *have == *nets {
                return Side::Set(name.clone());
            }
        }
        Side::Nets(nets)
    }

    /// The names an event gives the side: the set, else the networks as
    /// text; nothing for `any`.
    pub fn names(&self) -> Vec<String> {
        match self {
            Side::Any => Vec::new(),
            Side::Set(name) => vec![name.clone()],
            Side::Nets(nets) => nets.iter().map(IpNet::to_string).collect(),
        }
    }
}

/// The endpoint sets that lie entirely within `nets` (every set for
/// `any`): the destination names a channel's traffic can go to.
pub fn sets_within(nets: &[IpNet], sets: &[(String, Vec<IpNet>)]) -> Vec<String> {
    sets.iter()
        .filter(|(_, set)| {
            !set.is_empty() && set.iter().all(|s| nets.iter().any(|n| n.contains(s)))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether the destination named `to` (an endpoint set, an address, a
/// /64, or `other`) lies within a channel's destinations: `to_nets` its
/// networks, `to_sets` the sets within them ([`sets_within`]).
pub fn covers(to_nets: &[IpNet], to_sets: &[String], to: &str) -> bool {
    if is_any(to_nets) || to_sets.iter().any(|s| s == to) {
        return true;
    }
    if let Ok(a) = to.parse::<IpAddr>() {
        return to_nets.iter().any(|n| n.contains(&a));
    }
    if let Ok(x) = to.parse::<IpNet>() {
        return to_nets.iter().any(|n| n.contains(&x));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn names_and_coverage() {
        let sets = vec![
            ("web".to_string(), nets(&["198.18.0.0/24"])),
            ("db".to_string(), nets(&["198.18.1.0/24", "2001:db8::/64"])),
        ];
        let any = nets(&["0.0.0.0/0", "::/0"]);
        assert_eq!(Side::of(&any.clone().into(), &sets), Side::Any);
        assert!(Side::Any.names().is_empty());
        assert_eq!(
            Side::of(&nets(&["2001:db8::/64", "198.18.1.0/24"]).into(), &sets).names(),
            ["db"]
        );
        assert_eq!(
            Side::of(&nets(&["198.18.0.0/23"]).into(), &sets).names(),
            ["198.18.0.0/23"]
        );
        let wide = nets(&["198.18.0.0/23"]);
        assert_eq!(sets_within(&wide, &sets), ["web"]);
        assert_eq!(sets_within(&any, &sets), ["web", "db"]);
        let to_sets = sets_within(&wide, &sets);
        assert!(covers(&wide, &to_sets, "web"));
        assert!(!covers(&wide, &to_sets, "db"));
        assert!(covers(&wide, &to_sets, "198.18.1.7"));
        assert!(!covers(&wide, &to_sets, "198.18.2.7"));
        assert!(!covers(&wide, &to_sets, "other"));
        assert!(covers(&any, &[], "other"));
        assert!(covers(&nets(&["2001:db8::/32"]), &[], "2001:db8:0:1::/64"));
    }
}
