//! What a channel of the live policy covers, in the names the detectors
//! use: its sides as endpoint-set names (or CIDRs) for events, and whether
//! a destination name lies within its destinations (for `collapse`'s "the
//! agent's own refusals" rule, judged per destination).

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `nets` matches every address (the policy's `any`: `0.0.0.0/0`
/// and `::/0`, or any /0).
pub fn is_any(nets: &[IpNet]) -> bool {
    nets.iter().any(|n| n.prefix_len() == 0)
}

/// One side of a channel as an event names it: the endpoint set whose
/// networks are exactly `nets`, else the networks as text; nothing for
/// `any`.
pub fn side_names(nets: &[IpNet], sets: &[(String, Vec<IpNet>)]) -> Vec<String> {
    if is_any(nets) {
        return Vec::new();
    }
    let mut want = nets.to_vec();
    want.sort();
    want.dedup();
    for (name, set) in sets {
        let mut have = set.clone();
        have.sort();
        have.dedup();
        if have == want {
            return vec![name.clone()];
        }
    }
    want.iter().map(IpNet::to_string).collect()
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
        assert!(side_names(&any, &sets).is_empty());
        assert_eq!(
            side_names(&nets(&["2001:db8::/64", "198.18.1.0/24"]), &sets),
            ["db"]
        );
        assert_eq!(
            side_names(&nets(&["198.18.0.0/23"]), &sets),
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
