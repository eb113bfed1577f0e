//! The address tables a compile leaves for the next one: the agent keeps
//! the live policy's, and an apply whose channels name the same addresses
//! compiles without building them again.

use tc_common::ChannelSet;

use super::{AddrEntry, Compiled};
use crate::policy::{interner::Interner, Channel, Policy, Sides};

/// The address tables of a compiled policy and the channel sets they
/// name: what the channels' addresses alone decide. The agent takes the
/// live policy's out of its compile once they are written, and the next
/// compile reuses them when every channel names the same addresses at the
/// same place (a change of limits, ports, protocol, direction or mode):
/// building the four tables is most of a compile (`bench apply` with
/// `RUST_LOG=tc_agent=debug`, the 1,024-channel, 131,072-prefix policy:
/// 6-10 ms whole, 0.4-0.6 ms reusing them in its one-channel port
/// changes).
pub struct Addresses {
    /// Per channel, in order, the prefixes the tables were built from:
    /// what a policy must name, at the same places, for them to fit it.
    from_to: Sides,
    /// The IPv4 source table, as [`Compiled::src_v4`] holds it.
    src_v4: Vec<AddrEntry<4>>,
    /// The IPv4 destination table.
    dst_v4: Vec<AddrEntry<4>>,
    /// The IPv6 source table.
    src_v6: Vec<AddrEntry<16>>,
    /// The IPv6 destination table.
    dst_v6: Vec<AddrEntry<16>>,
    /// The channel sets they name, the first of [`Compiled::sets`] (the
    /// address tables' sets are interned before the L4 table's).
    sets: Vec<ChannelSet>,
}

impl Addresses {
    /// The address tables of `compiled`, the compile of `policy`, taken
    /// out of it (left empty): for when its tables are written.
    pub fn take(policy: &Policy, compiled: &mut Compiled) -> Self {
        let src_v4 = std::mem::take(&mut compiled.src_v4);
        let dst_v4 = std::mem::take(&mut compiled.dst_v4);
        let src_v6 = std::mem::take(&mut compiled.src_v6);
        let dst_v6 = std::mem::take(&mut compiled.dst_v6);
        // Interned first, so the address tables' sets come first.
        let named = src_v4
            .iter()
            .chain(&dst_v4)
            .map(|e| e.set)
            .chain(src_v6.iter().chain(&dst_v6).map(|e| e.set))
            .max()
            .map_or(0, |m| m as usize + 1);
        Self {
            from_to: Sides::of(&policy.channels),
            sets: compiled.sets[..named].to_vec(),
            src_v4,
            dst_v4,
            src_v6,
            dst_v6,
        }
    }

    /// Whether these tables are the ones `channels` compile to.
    pub(super) fn fit(&self, channels: &[Channel]) -> bool {
        self.from_to.named_by(channels)
    }

    /// The interner holding the tables' sets (the L4 table's come after
    /// them, as in a fresh compile), and the four tables.
    pub(super) fn into_parts(
        self,
    ) -> (
        Interner,
        Vec<AddrEntry<4>>,
        Vec<AddrEntry<4>>,
        Vec<AddrEntry<16>>,
        Vec<AddrEntry<16>>,
    ) {
        (
            Interner::from_sets(self.sets),
            self.src_v4,
            self.dst_v4,
            self.src_v6,
            self.dst_v6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{compile, compile_reusing};

    fn parse(text: &str) -> Policy {
        Policy::parse(text, "p.yaml").expect("valid policy")
    }

    #[test]
    fn a_compile_reusing_address_tables_equals_a_fresh_one() {
        let base = "endpoints:\n  web: [198.18.1.0/24, \"2001:db8:1::/64\"]\nchannels:\n  - name: a\n    from: [198.18.0.0/16, web]\n    protocol: tcp\n    ports: [80]\n    limit: {bandwidth: 1Mbit}\n  - name: b\n    to: [198.18.2.0/24, \"2001:db8:2::/48\"]\n    limit: {packets: 100}\n  - name: c\n    from: web\n    to: 198.18.2.7\n";
        let base_policy = parse(base);
        let mut first = compile(&base_policy).unwrap();
        let addresses = Addresses::take(&base_policy, &mut first);
        for (edit, reused) in [
            // Limits, ports, protocol, direction and mode: the addresses stay.
            (base.replace("ports: [80]", "ports: [80, 443-450]"), true),
            (base.replace("bandwidth: 1Mbit", "bandwidth: 2Mbit"), true),
            (
                base.replace(
                    "limit: {packets: 100}",
                    "protocol: udp\n    limit: {packets: 100}",
                ),
                true,
            ),
            (
                base.replace(
                    "  - name: c\n",
                    "  - name: c\n    mode: monitor\n    direction: egress\n",
                ),
                true,
            ),
            // Addresses, or their order: rebuilt.
            (base.replace("198.18.0.0/16", "198.18.0.0/15"), false),
            (base.replace("to: 198.18.2.7", "to: 198.18.2.8"), false),
            (
                base.replace("name: a", "name: x")
                    .replace("name: c", "name: a")
                    .replace("name: x", "name: c"),
                true,
            ),
            (
                base.replace("  - name: c\n    from: web\n    to: 198.18.2.7\n", ""),
                false,
            ),
            // Two channels' sources swapped: each index names other ones.
            (
                base.replace("from: [198.18.0.0/16, web]", "from: x")
                    .replace("from: web\n", "from: [198.18.0.0/16, web]\n")
                    .replace("from: x", "from: web"),
                false,
            ),
        ] {
            let policy = parse(&edit);
            assert_eq!(addresses.fit(&policy.channels), reused, "{edit}");
            let reusing = Addresses {
                from_to: addresses.from_to.clone(),
                src_v4: addresses.src_v4.clone(),
                dst_v4: addresses.dst_v4.clone(),
                src_v6: addresses.src_v6.clone(),
                dst_v6: addresses.dst_v6.clone(),
                sets: addresses.sets.clone(),
            };
            let (mut got, moved_in) = compile_reusing(&policy, Some(reusing)).unwrap();
            assert_eq!(moved_in, reused, "{edit}");
            assert_eq!(got, compile(&policy).unwrap(), "{edit}");
            // And a compile reusing that one's, for the base again.
            let again = Addresses::take(&policy, &mut got);
            assert_eq!(
                compile_reusing(&base_policy, Some(again)).unwrap().0,
                compile(&base_policy).unwrap(),
                "back from {edit}"
            );
        }
    }
}
