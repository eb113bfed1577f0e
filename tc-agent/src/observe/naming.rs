//! Names an address the way the interaction map shows it: the most
//! specific endpoint set of the live policy that holds it (ties: the first
//! set in file order), else the address itself (IPv4) or its /64 (IPv6).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

/// What an address is called.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Name {
    /// An endpoint set of the policy.
    Set(String),
    /// An address in no set: itself (IPv4) or its /64 (IPv6), as text.
    Unnamed(String),
}

impl Name {
    /// The text `map` prints.
    pub fn as_str(&self) -> &str {
        match self {
            Name::Set(s) | Name::Unnamed(s) => s,
        }
    }
}

/// The untracked-clients entry's client, and addresses folded past the
/// cardinality bound.
pub const OTHER: &str = "other";

/// Address-to-set lookups for one policy.
#[derive(Debug, Default)]
pub struct Namer {
    /// Per family, per prefix length (longest first): network → set index
    /// (the first set in file order that lists that network).
    v4: Vec<(u8, HashMap<u32, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
    /// Set names in file order.
    sets: Vec<String>,
    /// Each set's networks, in the same order (for `--to`/`--from` filters,
    /// which take every address of a set, not only those it names).
    nets: Vec<Vec<IpNet>>,
}

impl Namer {
    /// Lookups for the endpoint sets of a policy, in file order.
    pub fn new(sets: &[(String, Vec<IpNet>)]) -> Self {
        let mut v4: HashMap<u8, HashMap<u32, usize>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, usize>> = HashMap::new();
        for (i, (_, nets)) in sets.iter().enumerate() {
            for net in nets {
                match net {
                    IpNet::V4(n) => {
                        v4.entry(n.prefix_len())
                            .or_default()
                            .entry(u32::from(n.network()))
                            .or_insert(i);
                    }
                    IpNet::V6(n) => {
                        v6.entry(n.prefix_len())
                            .or_default()
                            .entry(u128::from(n.network()))
                            .or_insert(i);
                    }
                }
            }
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        v4.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let mut v6: Vec<_> = v6.into_iter().collect();
        v6.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        Self {
            v4,
            v6,
            sets: sets.iter().map(|(n, _)| n.clone()).collect(),
            nets: sets.iter().map(|(_, nets)| nets.clone()).collect(),
        }
    }

    /// The set that holds `addr` most specifically, if any.
    pub fn set_of(&self, addr: IpAddr) -> Option<&str> {
        let i = match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, nets)| {
                    let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
                    nets.get(&(a & mask)).copied()
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, nets)| {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                    nets.get(&(a & mask)).copied()
                })
            }
        }?;
        self.sets.get(i).map(String::as_str)
    }

    /// The name of `addr`.
    pub fn name(&self, addr: IpAddr) -> Name {
        if let Some(s) = self.set_of(addr) {
            return Name::Set(s.to_string());
        }
        Name::Unnamed(unnamed(addr))
    }

    /// Whether a set of this name exists.
    pub fn has_set(&self, name: &str) -> bool {
        self.sets.iter().any(|s| s == name)
    }

    /// Whether set `name` holds `addr` (whether or not a more specific set
    /// names it).
    pub fn in_set(&self, addr: IpAddr, name: &str) -> bool {
        self.sets
            .iter()
            .zip(&self.nets)
            .any(|(s, nets)| s == name && nets.iter().any(|n| n.contains(&addr)))
    }
}

/// An address in no set: itself (IPv4), or its /64 (IPv6: one host's
/// privacy addresses are one name).
fn unnamed(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let net = Ipv6Addr::from(u128::from(a) & (u128::MAX << 64));
            format!("{net}/64")
        }
    }
}

/// The address an interaction key stores (IPv4-mapped for IPv4).
pub fn addr_of(bytes: &[u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(*bytes);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// Whether a key's client is the untracked-clients marker (all zero).
pub fn is_untracked(bytes: &[u8; 16]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Whether `addr` matches a `--to`/`--from` filter: a set name, or a CIDR
/// or address.
#[derive(Debug, Clone)]
pub enum Filter {
    /// A set of the live policy.
    Set(String),
    /// A network.
    Net(IpNet),
}

impl Filter {
    /// Parses a filter against the live policy's sets: a set name, a CIDR,
    /// or an address; anything else is an error that lists the sets.
    pub fn parse(text: &str, namer: &Namer) -> Result<Self, String> {
        if namer.has_set(text) {
            return Ok(Filter::Set(text.to_string()));
        }
        if let Ok(n) = text.parse::<IpNet>() {
            return Ok(Filter::Net(n.trunc()));
        }
        if let Ok(a) = text.parse::<IpAddr>() {
            return Ok(Filter::Net(IpNet::from(a)));
        }
        Err(format!(
            "`{text}` is neither an endpoint set of the live policy nor a CIDR or address; the sets are: {}",
            if namer.sets.is_empty() {
                "(none)".to_string()
            } else {
                namer.sets.join(", ")
            }
        ))
    }

    /// Whether `addr` is in the filter.
    pub fn matches(&self, addr: IpAddr, namer: &Namer) -> bool {
        match self {
            Filter::Set(s) => namer.in_set(addr, s),
            Filter::Net(n) => n.contains(&addr),
        }
    }
}

/// For tests and docs: an IPv4 address as the datapath stores it.
pub fn mapped(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> Vec<(String, Vec<IpNet>)> {
        vec![
            (
                "clients".into(),
                vec![
                    "198.18.0.0/16".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
            ),
            ("web".into(), vec!["198.18.1.0/24".parse().unwrap()]),
            ("web2".into(), vec!["198.18.1.0/24".parse().unwrap()]),
        ]
    }

    #[test]
    fn the_most_specific_set_wins_and_ties_go_to_the_first() {
        let n = Namer::new(&sets());
        assert_eq!(
            n.name("198.18.1.7".parse().unwrap()),
            Name::Set("web".into())
        );
        assert_eq!(
            n.name("198.18.2.7".parse().unwrap()),
            Name::Set("clients".into())
        );
        assert_eq!(
            n.name("198.19.0.1".parse().unwrap()),
            Name::Unnamed("198.19.0.1".into())
        );
        assert_eq!(
            n.name("2001:db9::1:2".parse().unwrap()),
            Name::Unnamed("2001:db9::/64".into())
        );
        assert_eq!(
            n.name("2001:db8::5".parse().unwrap()),
            Name::Set("clients".into())
        );
    }

    #[test]
    fn keys_hold_ipv4_mapped_addresses() {
        let a: Ipv4Addr = "198.18.0.9".parse().unwrap();
        assert_eq!(addr_of(&mapped(a)), IpAddr::V4(a));
        assert!(is_untracked(&[0; 16]));
    }

    #[test]
    fn filters_take_sets_cidrs_and_addresses_and_name_the_sets_on_error() {
        let n = Namer::new(&sets());
        let f = Filter::parse("web", &n).unwrap();
        assert!(f.matches("198.18.1.1".parse().unwrap(), &n));
        assert!(!f.matches("198.18.2.1".parse().unwrap(), &n));
        // A set holds its addresses that a more specific set names too.
        let f = Filter::parse("clients", &n).unwrap();
        assert!(f.matches("198.18.1.1".parse().unwrap(), &n));
        assert!(f.matches("198.18.2.1".parse().unwrap(), &n));
        assert!(!f.matches("198.19.0.1".parse().unwrap(), &n));
        let f = Filter::parse("web2", &n).unwrap();
        assert!(f.matches("198.18.1.1".parse().unwrap(), &n));
        let f = Filter::parse("198.18.2.0/24", &n).unwrap();
        assert!(f.matches("198.18.2.1".parse().unwrap(), &n));
        let f = Filter::parse("198.18.2.1", &n).unwrap();
        assert!(f.matches("198.18.2.1".parse().unwrap(), &n));
        let e = Filter::parse("nope", &n).unwrap_err();
        assert!(e.contains("clients, web, web2"), "{e}");
    }
}
